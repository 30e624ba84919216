//! Input rules shared by the CLI, the scheduler and the agent. Each error
//! names the field and says how to fix the value.

use thiserror::Error;

/// A value that breaks one of devctl's input rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    /// The field at fault, as the API names it (e.g. `container.name`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl InvalidField {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Longest DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// Checks that `value` is a DNS label (RFC 1123, lowercase): 1 to 63
/// characters of `a-z`, `0-9` and `-`, starting with a letter and not ending
/// with `-`. Container and node names follow this rule, so they are safe in
/// hostnames, NATS subjects and engine container names.
pub fn dns_label(field: &str, value: &str) -> Result<(), InvalidField> {
    let fix = "use 1-63 lowercase letters, digits or '-', starting with a letter and not ending with '-' (e.g. \"web-1\")";
    if value.is_empty() {
        return Err(InvalidField::new(field, format!("is required; {fix}")));
    }
    if value.len() > MAX_NAME_LEN {
        let shown: String = value.chars().take(MAX_NAME_LEN).collect();
        return Err(InvalidField::new(
            field,
            format!("{shown:?}... is {} bytes long; {fix}", value.len()),
        ));
    }
    let bytes = value.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !ok_chars || !bytes[0].is_ascii_lowercase() || bytes[bytes.len() - 1] == b'-' {
        return Err(InvalidField::new(
            field,
            format!("{value:?} is not a valid name; {fix}"),
        ));
    }
    Ok(())
}

/// The limits on what a request may carry, checked at the API edge (and by
/// the CLI before it sends). Kubernetes' and Docker's limits are the
/// reference; docs/architecture.md lists them for users.
pub mod limits {
    /// Largest gRPC message the scheduler accepts (the transport's limit:
    /// beyond it a call fails with OUT_OF_RANGE before any field is read).
    pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
    /// A container's command, environment, labels, constraints and health
    /// check command together, in bytes (keys and values). Keeps every bus
    /// message about the container far below the bus's 1 MiB payload limit.
    pub const MAX_SPEC_BYTES: usize = 256 * 1024;
    /// An image reference (Docker: 255 for the name, 128 for the tag, plus
    /// a digest).
    pub const MAX_IMAGE_LEN: usize = 512;
    /// Arguments of a command (container, health check or exec).
    pub const MAX_ARGS: usize = 4096;
    /// Environment variables of a container or an exec.
    pub const MAX_ENV: usize = 1024;
    /// An environment variable's name.
    pub const MAX_ENV_KEY_LEN: usize = 256;
    /// Labels of a container.
    pub const MAX_LABELS: usize = 64;
    /// Placement constraints of a container.
    pub const MAX_CONSTRAINTS: usize = 32;
    /// A label key's name part (after the optional `prefix/`).
    pub const MAX_LABEL_NAME_LEN: usize = 63;
    /// A label key's optional DNS-subdomain prefix.
    pub const MAX_LABEL_PREFIX_LEN: usize = 253;
    /// A label value.
    pub const MAX_LABEL_VALUE_LEN: usize = 63;
    /// CPU limit, in thousandths of a CPU (1024 CPUs).
    pub const MAX_MILLI_CPUS: i64 = 1_024_000;
    /// Memory limit, in bytes (1 PiB).
    pub const MAX_MEMORY_BYTES: i64 = 1 << 50;
    /// Seconds of a health check's interval, timeout and start period.
    pub const MAX_HEALTH_SECONDS: i32 = 86_400;
    /// Failures in a row before a container is unhealthy.
    pub const MAX_HEALTH_RETRIES: i32 = 100;
    /// A path inside a container (an exec's working directory).
    pub const MAX_PATH_LEN: usize = 4096;
    /// Container names in one stats request.
    pub const MAX_NAMES: usize = 1000;
    /// A create's `request_id`.
    pub const MAX_REQUEST_ID_LEN: usize = 128;
    /// A join token or API token as presented.
    pub const MAX_TOKEN_LEN: usize = 1024;
    /// A certificate signing request (PEM).
    pub const MAX_CSR_BYTES: usize = 16 * 1024;
    /// Rows or columns of a terminal.
    pub const MAX_TERMINAL_SIZE: u32 = 10_000;
    /// A page token.
    pub const MAX_PAGE_TOKEN_LEN: usize = 256;
}

/// Refuses more than `max` items in `field`.
pub fn max_count(field: &str, count: usize, max: usize) -> Result<(), InvalidField> {
    if count > max {
        return Err(InvalidField::new(
            field,
            format!("has {count} entries; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// Refuses a value of `field` longer than `max` bytes.
pub fn max_len(field: &str, value: &str, max: usize) -> Result<(), InvalidField> {
    if value.len() > max {
        return Err(InvalidField::new(
            field,
            format!("is {} bytes long; at most {max} are allowed", value.len()),
        ));
    }
    Ok(())
}

/// Refuses control characters in `value` of `field` (C0, DEL and C1:
/// NUL, and ESC, CR or BEL that would drive a terminal that prints it);
/// tab and newline are allowed.
pub fn no_control(field: &str, value: &str) -> Result<(), InvalidField> {
    match value
        .char_indices()
        .find(|&(_, c)| c.is_control() && c != '\t' && c != '\n')
    {
        Some((at, c)) => Err(InvalidField::new(
            field,
            format!(
                "holds the control character U+{:04X} at byte {at}; only tab and newline are allowed (no ESC, CR, BEL or NUL)",
                c as u32
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses a number of `field` outside `0..=max`.
pub fn in_range<T: PartialOrd + Default + std::fmt::Display>(
    field: &str,
    value: T,
    max: T,
    hint: &str,
) -> Result<(), InvalidField> {
    if value < T::default() || value > max {
        return Err(InvalidField::new(
            field,
            format!("{value} is out of range; use 0 to {max}{hint}"),
        ));
    }
    Ok(())
}

/// Whether `s` is a label name (Kubernetes): 1 to 63 characters of
/// `A-Z a-z 0-9 - _ .`, beginning and ending with a letter or digit.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= limits::MAX_LABEL_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Whether `s` is a DNS subdomain: dot-separated DNS labels (lowercase,
/// digits and '-'), at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= limits::MAX_LABEL_PREFIX_LEN
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= MAX_NAME_LEN
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Checks a user label key, as Kubernetes does: an optional DNS-subdomain
/// prefix (at most 253 characters) and `/`, then a name of 1 to 63
/// characters (letters, digits, `-`, `_`, `.`, beginning and ending with a
/// letter or digit); not under the reserved `io.devctl.` prefix.
pub fn label_key(field: &str, key: &str) -> Result<(), InvalidField> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if !is_label_name(name) || prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        let shown: String = key.chars().take(80).collect();
        return Err(InvalidField::new(
            field,
            format!(
                "label key {shown:?} is not valid; use an optional DNS prefix of at most 253 characters and '/', then 1 to 63 letters, digits, '-', '_' or '.' beginning and ending with a letter or digit (e.g. \"team\" or \"example.com/team\")"
            ),
        ));
    }
    if key.starts_with(crate::labels::PREFIX) {
        return Err(InvalidField::new(
            field,
            format!(
                "label key {key:?} is under the reserved prefix \"{}\"; choose another key",
                crate::labels::PREFIX
            ),
        ));
    }
    Ok(())
}

/// Checks a label value, as Kubernetes does: empty, or 1 to 63 letters,
/// digits, `-`, `_` or `.` beginning and ending with a letter or digit.
pub fn label_value(field: &str, key: &str, value: &str) -> Result<(), InvalidField> {
    if !value.is_empty() && !is_label_name(value) {
        let shown: String = value.chars().take(80).collect();
        return Err(InvalidField::new(
            format!("{field}[{key:?}]"),
            format!(
                "value {shown:?} is not valid; use at most 63 letters, digits, '-', '_' or '.' beginning and ending with a letter or digit (e.g. \"platform\")"
            ),
        ));
    }
    Ok(())
}

/// Checks an environment variable name: non-empty, no `=`, no NUL, no
/// whitespace.
pub fn env_key(field: &str, key: &str) -> Result<(), InvalidField> {
    max_len(field, key, limits::MAX_ENV_KEY_LEN)?;
    if key.is_empty() || key.contains('=') || key.chars().any(|c| c == '\0' || c.is_whitespace()) {
        return Err(InvalidField::new(
            field,
            format!(
                "{key:?} is not a valid environment variable name; use e.g. \"EDITOR\" (no '=', spaces or NUL)"
            ),
        ));
    }
    Ok(())
}

/// Splits `KEY=VALUE` as given on a command line (`--env`, `--label`).
pub fn key_value(field: &str, arg: &str) -> Result<(String, String), InvalidField> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(InvalidField::new(
            field,
            format!("{arg:?} is not KEY=VALUE (e.g. \"TEAM=platform\")"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "web-1", "a1b2", &"a".repeat(63)] {
            assert_eq!(dns_label("name", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "1web",
            "web-",
            "we_b",
            "we.b",
            "wéb",
            &"a".repeat(64),
        ] {
            let err = dns_label("container.name", bad).unwrap_err();
            assert_eq!(err.field, "container.name");
            assert!(err.to_string().contains("lowercase"), "{err}");
        }
    }

    #[test]
    fn label_keys_follow_kubernetes_and_reserve_the_devctl_prefix() {
        for ok in [
            "team",
            "app.kubernetes.io/name",
            "example.com/Team_1",
            &"a".repeat(63),
            &format!("{}/x", vec!["a".repeat(49); 5].join(".")),
        ] {
            assert_eq!(label_key("labels", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "-team",
            "team-",
            "Example.com/team",
            "/team",
            "example.com/",
            &"a".repeat(64),
            &format!("{}/x", vec!["a".repeat(63); 4].join(".")),
        ] {
            assert!(label_key("labels", bad).is_err(), "{bad}");
        }
        assert!(label_key("labels", "io.devctl.id").is_err());
        for ok in ["", "platform", "v1.2_3-x"] {
            assert!(label_value("labels", "k", ok).is_ok(), "{ok}");
        }
        for bad in ["a b", "-x", &"a".repeat(64), "x/y"] {
            let e = label_value("container.labels", "k", bad).unwrap_err();
            assert_eq!(e.field, "container.labels[\"k\"]");
        }
    }

    #[test]
    fn control_characters_but_tab_and_newline_are_refused() {
        assert!(no_control("f", "a\tb\nc").is_ok());
        for bad in ["\x1b]0;pwned\x07", "a\rb", "\0", "\u{9b}2J", "\x7f"] {
            let e = no_control("f", bad).unwrap_err();
            assert_eq!(e.field, "f");
        }
    }

    #[test]
    fn env_keys_and_pairs() {
        assert!(env_key("env", "PATH").is_ok());
        assert!(env_key("env", "A=B").is_err());
        assert!(env_key("env", "").is_err());
        assert_eq!(
            key_value("env", "A=b=c").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert!(key_value("env", "=x").is_err());
        assert!(key_value("env", "novalue").is_err());
    }
}
