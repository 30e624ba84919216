//! Image registries: which registry host an image reference names, what a
//! host given to `devctl registries add` may look like, and the Debug of
//! the messages that carry a password (it never prints one).

use crate::pb;

/// The host Docker Hub images (references without a registry host) come
/// from, as credentials for it are stored.
pub const DOCKER_HUB: &str = "docker.io";

/// The registry host of image reference `image`, lowercased: the part
/// before the first `/` when it looks like a host (has a `.` or a `:`, or
/// is `localhost`), else Docker Hub (`busybox`, `team/app:1`), as the
/// Docker engine reads references.
pub fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => DOCKER_HUB.to_string(),
    }
}

/// Checks a registry host as `AddRegistryRequest.host` takes it (a host
/// name or address with an optional port; no scheme, path or user) and
/// returns it lowercased. The error names the field and says what to give.
pub fn normalize_host(field: &str, host: &str) -> Result<String, String> {
    let fix =
        "give the host as image references name it, e.g. registry.example.com or 127.0.0.1:5000";
    if host.is_empty() {
        return Err(format!("{field}: required; {fix}"));
    }
    if host.contains("://") {
        return Err(format!("{field}: {host:?} has a scheme; {fix}"));
    }
    if host.len() > 260 {
        return Err(format!("{field}: longer than 260 characters; {fix}"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
    {
        return Err(format!("{field}: {host:?} contains {c:?}; {fix}"));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !host.ends_with(']') && !n.contains(':') => (n, Some(p)),
        _ => (host, None),
    };
    if name.is_empty() || name.starts_with(['.', '-']) || name.ends_with(['.', '-']) {
        return Err(format!("{field}: {host:?} is not a host name; {fix}"));
    }
    if let Some(p) = port
        && p.parse::<u16>().ok().filter(|p| *p > 0).is_none()
    {
        return Err(format!("{field}: port {p:?} is not 1-65535; {fix}"));
    }
    Ok(host.to_ascii_lowercase())
}

impl std::fmt::Debug for pb::RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for pb::AddRegistryRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddRegistryRequest")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_host_of_a_reference() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("team/app:1"), "docker.io");
        assert_eq!(
            registry_host("127.0.0.1:5000/dev/busybox:1"),
            "127.0.0.1:5000"
        );
        assert_eq!(
            registry_host("Registry.Example.com/a"),
            "registry.example.com"
        );
        assert_eq!(registry_host("localhost/a"), "localhost");
        assert_eq!(registry_host("devctl/busybox:latest"), "docker.io");
    }

    #[test]
    fn hosts_are_checked() {
        assert_eq!(
            normalize_host("host", "Reg.Example.com").unwrap(),
            "reg.example.com"
        );
        assert_eq!(
            normalize_host("host", "127.0.0.1:5000").unwrap(),
            "127.0.0.1:5000"
        );
        for bad in [
            "",
            "https://x.io",
            "x.io/path",
            "u@x.io",
            "x.io:0",
            "x.io:99999",
            ".x",
            "x:",
        ] {
            let e = normalize_host("host", bad).unwrap_err();
            assert!(e.starts_with("host: "), "{bad}: {e}");
        }
    }

    #[test]
    fn debug_prints_no_password() {
        let a = pb::RegistryAuth {
            host: "h".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        let cmd = pb::AgentCommand {
            command: Some(pb::agent_command::Command::Pull(pb::PullCommand {
                auth: Some(a),
                ..Default::default()
            })),
        };
        assert!(!format!("{cmd:?}").contains("hunter2"));
    }
}
