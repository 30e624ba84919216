//! The user's side of SSH access: a key pair made on this machine, a
//! short-lived certificate for it from the cluster's SSH CA, a known_hosts
//! file that trusts the CA for dev containers' host certificates, and the
//! managed block of `~/.ssh/config` (`devctl config-ssh`).
//!
//! Files, per profile (the context's name, else one named after the
//! server), in `~/.config/devctl/ssh/PROFILE/` (0700):
//! `id_ed25519` (0600), `id_ed25519-cert.pub`, `known_hosts`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use devctl_proto::{pb, ssh};

use crate::client::{Client, Credentials, Target};

/// A certificate with less than this left is renewed before use.
pub const RENEW_BEFORE: Duration = Duration::from_secs(3600);

/// One profile's SSH files.
#[derive(Debug, Clone)]
pub struct SshFiles {
    /// The profile: which cluster and identity the files are for.
    pub profile: String,
    /// The directory holding them.
    pub dir: PathBuf,
}

/// The profile of `target`: its context's name, else [`server_profile`].
pub fn profile(target: &Target) -> String {
    match &target.context {
        Some(c) => c.clone(),
        None => server_profile(&target.server),
    }
}

/// The profile of a server reached without a context: `server-HOST-PORT`.
pub fn server_profile(server: &str) -> String {
    let host: String = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("server-{host}")
}

/// The host name suffix of `target`'s containers: `--suffix`, else the
/// context's `ssh-suffix`, else `devctl`.
pub fn suffix(target: &Target, flag: Option<&str>) -> Result<String> {
    let s = match flag {
        Some(s) => s.trim_start_matches('.').to_string(),
        None => {
            let file = crate::config::ConfigFile::load(&crate::config::config_path()?)?;
            file.context(target.context.as_deref())?
                .and_then(|(_, c)| c.ssh_suffix.clone())
                .unwrap_or_else(|| ssh::DEFAULT_SUFFIX.to_string())
        }
    };
    if !ssh::host_name_matches("x", &format!("x.{s}")) {
        bail!("--suffix {s:?}: use a DNS name such as devctl or dev.example.com");
    }
    Ok(s)
}

/// The container a dialled host name means: `web.devctl` → `web` (the
/// suffix, when it is `suffix`, dropped).
pub fn container_of<'a>(host: &'a str, suffix: &str) -> &'a str {
    host.strip_suffix(suffix)
        .and_then(|h| h.strip_suffix('.'))
        .filter(|h| !h.is_empty())
        .unwrap_or(host)
}

impl SshFiles {
    /// The files of `target`'s profile.
    pub fn of(target: &Target) -> Result<Self> {
        let profile = profile(target);
        let dir = crate::config::config_dir()?.join("ssh").join(&profile);
        Ok(Self { profile, dir })
    }

    /// The private key.
    pub fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// The certificate beside it (the name OpenSSH looks for).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("id_ed25519-cert.pub")
    }

    /// The known_hosts file trusting the CA.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The certificate's principal (the SSH user), if there is one.
    pub fn principal(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.cert()).ok()?;
        let cert = ssh::ssh_key::Certificate::from_openssh(text.trim()).ok()?;
        cert.valid_principals().first().cloned()
    }

    /// Makes sure there is a key pair and a certificate for it with at
    /// least [`RENEW_BEFORE`] left, issued to `identity` when known, and a
    /// known_hosts file for `suffix`; asks the scheduler only when
    /// something is missing or old. Returns whether it asked.
    pub async fn ensure(
        &self,
        client: &mut Client,
        identity: Option<&str>,
        suffix: &str,
    ) -> Result<bool> {
        devctl_proto::pki::create_private_dir(&self.dir)?;
        let key = ssh::load_or_create_key(&self.key(), &format!("devctl-{}", self.profile))
            .with_context(|| format!("the SSH key {}", self.key().display()))?;
        let fresh = std::fs::read_to_string(self.cert())
            .ok()
            .and_then(|c| ssh::certificate_valid_before(&c).ok())
            .is_some_and(|until| until > SystemTime::now() + RENEW_BEFORE);
        let same_identity = identity.is_none_or(|i| self.principal().as_deref() == Some(i));
        let hosts_ok = std::fs::read_to_string(self.known_hosts())
            .is_ok_and(|t| t.contains(&format!("@cert-authority *.{suffix} ")));
        if fresh && same_identity && hosts_ok {
            return Ok(false);
        }
        let public = key.public_key().to_openssh()?;
        let signed = client
            .ssh
            .sign_user_key(pb::SignUserKeyRequest {
                public_key: public,
                ttl_seconds: 0,
            })
            .await?
            .into_inner();
        devctl_proto::pki::write_file(
            &self.dir.join("id_ed25519.pub"),
            format!("{}\n", key.public_key().to_openssh()?).as_bytes(),
            0o644,
        )?;
        devctl_proto::pki::write_file(
            &self.cert(),
            format!("{}\n", signed.certificate.trim()).as_bytes(),
            0o644,
        )?;
        devctl_proto::pki::write_file(
            &self.known_hosts(),
            known_hosts(suffix, &signed.ca_public_key).as_bytes(),
            0o644,
        )?;
        Ok(true)
    }
}

/// The identity of `target`'s certificate, when it authenticates with one.
pub fn identity_of(target: &Target) -> Option<String> {
    match &target.credentials {
        Credentials::Certificate(dir) => devctl_proto::pki::Bundle::load(dir)
            .ok()?
            .identity()
            .ok()
            .map(|i| i.name),
        Credentials::Token { .. } => None,
    }
}

/// A known_hosts file trusting `ca` for `*.suffix`.
pub fn known_hosts(suffix: &str, ca: &str) -> String {
    format!(
        "# devctl: the cluster's SSH CA signs the dev containers' host certificates\n@cert-authority *.{suffix} {}\n",
        ca.trim()
    )
}

/// Quotes `s` for a POSIX shell (ssh runs ProxyCommand and Match exec
/// through one).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The command that reaches `target` again from ssh: this executable with
/// the flags that chose the target (never a secret).
pub fn self_command(target: &Target) -> Result<String> {
    let exe = std::env::current_exe().context("locating the devctl executable")?;
    let mut words = vec![shell_quote(&exe.to_string_lossy())];
    match (&target.context, &target.credentials) {
        (Some(ctx), _) => words.extend(["--context".into(), shell_quote(ctx)]),
        (None, Credentials::Certificate(dir)) => words.extend([
            "--server".into(),
            shell_quote(&target.server),
            "--tls-dir".into(),
            shell_quote(&dir.to_string_lossy()),
        ]),
        (None, Credentials::Token { .. }) => bail!(
            "SSH access needs a certificate identity (`devctl login`): an API token is not written into an ssh configuration"
        ),
    }
    Ok(words.join(" "))
}

/// The markers around a profile's managed block.
fn markers(profile: &str) -> (String, String) {
    (
        format!(
            "# >>> devctl ssh: {profile} (managed by `devctl config-ssh`; `devctl config-ssh --remove` deletes it)"
        ),
        format!("# <<< devctl ssh: {profile}"),
    )
}

/// The managed block of `files`' profile for hosts `*.suffix`, reached by
/// `command` (see [`self_command`]) as `user`.
pub fn config_block(files: &SshFiles, command: &str, suffix: &str, user: &str) -> String {
    let (begin, end) = markers(&files.profile);
    // ssh expands %-tokens in these options: a literal % is %%.
    let q = |p: PathBuf| format!("\"{}\"", p.to_string_lossy().replace('%', "%%"));
    let command = command.replace('%', "%%");
    // `Match … exec` runs before ssh loads the certificate, so an expired
    // one is renewed in time (it always succeeds: a failure only warns).
    // The block comes first in the file because the first value of an
    // option wins; `Match all` ends it, so what follows in the file applies
    // as before.
    format!(
        "{begin}\nMatch host *.{suffix} exec \"{command} ssh --renew-cert --suffix {suffix}\"\n    ProxyCommand {command} ssh --stdio --suffix {suffix} %n\n    User {user}\n    IdentityFile {key}\n    CertificateFile {cert}\n    IdentitiesOnly yes\n    UserKnownHostsFile {hosts}\n    StrictHostKeyChecking yes\nMatch all\n{end}\n",
        key = q(files.key()),
        cert = q(files.cert()),
        hosts = q(files.known_hosts()),
    )
}

/// `text` (an ssh config) without `profile`'s managed block (and the blank
/// line [`put_block`] puts after it).
pub fn remove_block(text: &str, profile: &str) -> String {
    let (begin, end) = markers(profile);
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    let mut just_ended = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if !inside && trimmed == begin {
            inside = true;
            continue;
        }
        if inside {
            if trimmed == end {
                inside = false;
                just_ended = true;
            }
            continue;
        }
        if std::mem::take(&mut just_ended) && trimmed.is_empty() {
            continue;
        }
        out.push_str(line);
    }
    out
}

/// `text` with `profile`'s managed block replaced by `block`, at the top.
pub fn put_block(text: &str, profile: &str, block: &str) -> String {
    let rest = remove_block(text, profile);
    format!("{block}{}{rest}", if rest.is_empty() { "" } else { "\n" })
}

/// `~/.ssh/config`.
pub fn user_ssh_config() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".ssh/config"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> SshFiles {
        SshFiles {
            profile: "prod".into(),
            dir: PathBuf::from("/home/a/.config/devctl/ssh/prod"),
        }
    }

    #[test]
    fn the_block_is_replaced_in_place_and_removed_whole() {
        let user = "Host github.com\n    User git\n";
        let block = config_block(&files(), "'/bin/devctl' --context prod", "devctl", "alice");
        let once = put_block(user, "prod", &block);
        assert!(once.starts_with("# >>> devctl ssh: prod"), "{once}");
        assert!(once.ends_with(user), "{once}");
        assert!(
            once.contains(
                "ProxyCommand '/bin/devctl' --context prod ssh --stdio --suffix devctl %n"
            )
        );
        assert!(once.contains("Match host *.devctl exec"));
        assert!(once.contains("\nMatch all\n"));
        // Running it again replaces the block rather than adding one.
        let twice = put_block(&once, "prod", &block);
        assert_eq!(twice, once);
        // Another profile's block is left alone.
        let other = config_block(
            &SshFiles {
                profile: "staging".into(),
                dir: "/x".into(),
            },
            "devctl",
            "staging",
            "alice",
        );
        let both = put_block(&once, "staging", &other);
        assert_eq!(remove_block(&both, "staging"), once);
        assert_eq!(remove_block(&remove_block(&both, "staging"), "prod"), user);
    }

    #[test]
    fn dialled_names_map_to_containers() {
        assert_eq!(container_of("web.devctl", "devctl"), "web");
        assert_eq!(
            container_of("web.dev.example.com", "dev.example.com"),
            "web"
        );
        assert_eq!(container_of("web", "devctl"), "web");
        assert_eq!(container_of(".devctl", "devctl"), ".devctl");
    }

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(
            shell_quote("/opt/my tools/devctl"),
            "'/opt/my tools/devctl'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
