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
        return Err(InvalidField::new(
            field,
            format!("{:?} is {} characters long; {fix}", value, value.len()),
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

/// Checks a user label key: non-empty, at most 253 characters, no control
/// characters or whitespace, and not under the reserved `io.devctl.` prefix.
pub fn label_key(field: &str, key: &str) -> Result<(), InvalidField> {
    if key.is_empty() || key.len() > 253 {
        return Err(InvalidField::new(
            field,
            "label keys must be 1 to 253 characters (e.g. \"team=platform\")",
        ));
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidField::new(
            field,
            format!("label key {key:?} contains whitespace or control characters"),
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

/// Checks an environment variable name: non-empty, no `=`, no NUL, no
/// whitespace.
pub fn env_key(field: &str, key: &str) -> Result<(), InvalidField> {
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
    fn label_keys_reserve_the_devctl_prefix() {
        assert!(label_key("labels", "team").is_ok());
        assert!(label_key("labels", "io.devctl.id").is_err());
        assert!(label_key("labels", "a b").is_err());
        assert!(label_key("labels", "").is_err());
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
