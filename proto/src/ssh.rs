//! The cluster's SSH certificates: the CA the scheduler keeps, the user and
//! host certificates it signs, and the checks both ends apply to them.
//!
//! One policy in one place: the scheduler signs with [`SshCa`], the agent's
//! SSH server admits a user with [`check_user_certificate`], and the CLI
//! reads its certificate's expiry with [`certificate_valid_before`]. The
//! `ssh-key` crate is the exact version russh pins (see the workspace
//! manifest), re-exported as [`ssh_key`] so the agent passes its types to
//! russh unchanged.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub use ssh_key;
use ssh_key::{
    Algorithm, Certificate, HashAlg, LineEnding, PrivateKey, PublicKey,
    certificate::{Builder, CertType},
};

/// The host name suffix of dev containers when the user configured none:
/// `web.devctl`.
pub const DEFAULT_SUFFIX: &str = "devctl";

/// The extensions of a user certificate: a terminal, and port forwarding.
pub const USER_EXTENSIONS: [&str; 2] = ["permit-pty", "permit-port-forwarding"];

/// How far back a certificate's validity starts, for clocks that differ.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why an SSH key or certificate was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A key or certificate could not be read or made.
    #[error("{0}")]
    Key(#[from] ssh_key::Error),
    /// The CA's key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A key of another algorithm than ed25519.
    #[error(
        "only ed25519 keys are accepted (this one is {0}); make one with `ssh-keygen -t ed25519`"
    )]
    NotEd25519(String),
    /// A certificate that does not admit what it was checked for.
    #[error("{0}")]
    Refused(String),
}

/// Reads one OpenSSH public key line; ed25519 only.
pub fn parse_public_key(line: &str) -> Result<PublicKey, SshError> {
    let key = PublicKey::from_openssh(line.trim())?;
    match key.algorithm() {
        Algorithm::Ed25519 => Ok(key),
        other => Err(SshError::NotEd25519(other.to_string())),
    }
}

/// A new ed25519 key pair.
pub fn new_key(comment: &str) -> Result<PrivateKey, SshError> {
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
    key.set_comment(comment);
    Ok(key)
}

/// Reads an unencrypted OpenSSH private key file, or makes one (mode 0600)
/// when there is none.
pub fn load_or_create_key(path: &Path, comment: &str) -> Result<PrivateKey, SshError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SshError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(PrivateKey::from_openssh(text)?),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        Err(_) => {}
    }
    let key = new_key(comment)?;
    let text = key.to_openssh(LineEnding::LF)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Written to a private temporary file, then renamed: a crash never
    // leaves half a key, and the key is never readable by others.
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(key)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The cluster's SSH certificate authority.
#[derive(Clone)]
pub struct SshCa {
    key: PrivateKey,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCa")
            .field("fingerprint", &self.fingerprint().to_string())
            .finish()
    }
}

impl SshCa {
    /// Loads the CA key at `path`, or makes it (0600) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, SshError> {
        let key = load_or_create_key(path, "devctl-ssh-ca")?;
        match key.algorithm() {
            Algorithm::Ed25519 => Ok(Self { key }),
            other => Err(SshError::NotEd25519(other.to_string())),
        }
    }

    /// The CA over an existing key (tests).
    pub fn from_key(key: PrivateKey) -> Self {
        Self { key }
    }

    /// The CA's public key, one OpenSSH line (`ssh-ed25519 AAAA…
    /// devctl-ssh-ca`).
    pub fn public_key_line(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .expect("an ed25519 public key encodes")
    }

    /// Its SHA-256 fingerprint (what certificates are checked against).
    pub fn fingerprint(&self) -> ssh_key::Fingerprint {
        self.key.public_key().fingerprint(HashAlg::Sha256)
    }

    /// A user certificate for `key`: principal `identity`, the
    /// [`USER_EXTENSIONS`], valid from [`CLOCK_SKEW`] before `now` for
    /// `ttl`.
    pub fn sign_user(
        &self,
        key: &PublicKey,
        identity: &str,
        serial: u64,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Certificate, SshError> {
        self.sign(key, CertType::User, identity, serial, (now, ttl), |b| {
            for ext in USER_EXTENSIONS {
                b.extension(ext, "")?;
            }
            b.comment(format!("{identity}@devctl"))?;
            Ok(())
        })
    }

    /// A host certificate for an agent's `key`, naming `host`.
    pub fn sign_host(
        &self,
        key: &PublicKey,
        host: &str,
        serial: u64,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Certificate, SshError> {
        self.sign(key, CertType::Host, host, serial, (now, ttl), |_| Ok(()))
    }

    /// A certificate of `cert_type` for `key` naming `principal`, valid
    /// from [`CLOCK_SKEW`] before `now` for `ttl`, its key id
    /// `devctl:PRINCIPAL:SERIAL` (`devctl-host:…` for a host); `more` adds
    /// what the type needs.
    fn sign(
        &self,
        key: &PublicKey,
        cert_type: CertType,
        principal: &str,
        serial: u64,
        (now, ttl): (SystemTime, Duration),
        more: impl FnOnce(&mut Builder) -> Result<(), ssh_key::Error>,
    ) -> Result<Certificate, SshError> {
        let mut b = Builder::new_with_random_nonce(
            &mut rand::rng(),
            key.key_data().clone(),
            unix(now - CLOCK_SKEW),
            unix(now + ttl),
        )?;
        let kind = if cert_type == CertType::Host {
            "devctl-host"
        } else {
            "devctl"
        };
        b.serial(serial)?
            .cert_type(cert_type)?
            .key_id(format!("{kind}:{principal}:{serial}"))?
            .valid_principal(principal)?;
        more(&mut b)?;
        Ok(b.sign(&self.key)?)
    }
}

/// Checks that `cert` admits user `principal` now: signed by the CA whose
/// public key is `ca`, a user certificate, `principal` among its principals,
/// within its validity, with no critical option devctl does not enforce.
pub fn check_user_certificate(
    cert: &Certificate,
    ca: &PublicKey,
    principal: &str,
) -> Result<(), SshError> {
    let refused = |why: String| Err(SshError::Refused(why));
    if let Err(e) = cert.validate([&ca.fingerprint(HashAlg::Sha256)]) {
        return refused(format!(
            "the certificate is not valid for this cluster's SSH CA ({e}); renew it with `devctl ssh` or `devctl config-ssh`"
        ));
    }
    if cert.cert_type() != CertType::User {
        return refused("not a user certificate".into());
    }
    if !cert.valid_principals().iter().any(|p| p == principal) {
        return refused(format!(
            "the certificate is for {:?}, not for {principal:?}",
            cert.valid_principals()
        ));
    }
    if let Some((name, _)) = cert.critical_options().iter().next() {
        return refused(format!("critical option {name:?} is not supported"));
    }
    Ok(())
}

/// When `cert` (one OpenSSH certificate line) stops being valid.
pub fn certificate_valid_before(line: &str) -> Result<SystemTime, SshError> {
    let cert = Certificate::from_openssh(line.trim())?;
    Ok(UNIX_EPOCH + Duration::from_secs(cert.valid_before()))
}

/// Whether `host` is a name the SSH client may dial container `name` by:
/// the name itself, or the name, a dot and a DNS suffix.
pub fn host_name_matches(name: &str, host: &str) -> bool {
    if host == name {
        return true;
    }
    let Some(suffix) = host
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    !suffix.is_empty()
        && suffix.len() <= 253
        && suffix.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> SshCa {
        SshCa::from_key(new_key("test-ca").unwrap())
    }

    #[test]
    fn a_user_certificate_admits_its_identity_only() {
        let ca = ca();
        let user = new_key("alice").unwrap();
        let now = SystemTime::now();
        let cert = ca
            .sign_user(
                user.public_key(),
                "alice",
                7,
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let ca_pub = parse_public_key(&ca.public_key_line()).unwrap();
        check_user_certificate(&cert, &ca_pub, "alice").unwrap();
        let e = check_user_certificate(&cert, &ca_pub, "bob").unwrap_err();
        assert!(e.to_string().contains("not for \"bob\""), "{e}");
        for ext in USER_EXTENSIONS {
            assert!(cert.extensions().contains_key(ext), "{ext}");
        }
        assert_eq!(cert.serial(), 7);
        // Another CA's certificate is refused.
        let other = ca_pub_of(&super::tests::ca());
        assert!(check_user_certificate(&cert, &other, "alice").is_err());
        // A host certificate is not a user certificate.
        let host = ca
            .sign_host(
                user.public_key(),
                "alice",
                8,
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        assert!(check_user_certificate(&host, &ca_pub, "alice").is_err());
    }

    fn ca_pub_of(ca: &SshCa) -> PublicKey {
        parse_public_key(&ca.public_key_line()).unwrap()
    }

    #[test]
    fn an_expired_certificate_is_refused_and_its_expiry_is_readable() {
        let ca = ca();
        let user = new_key("alice").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(10 * 3600);
        let cert = ca
            .sign_user(
                user.public_key(),
                "alice",
                1,
                long_ago,
                Duration::from_secs(3600),
            )
            .unwrap();
        assert!(check_user_certificate(&cert, &ca_pub_of(&ca), "alice").is_err());
        let line = cert.to_openssh().unwrap();
        let before = certificate_valid_before(&line).unwrap();
        assert!(before < SystemTime::now());
        assert_eq!(
            unix(before),
            unix(long_ago + Duration::from_secs(3600)),
            "valid_before round-trips"
        );
    }

    #[test]
    fn only_ed25519_public_keys_are_accepted() {
        let key = new_key("k").unwrap();
        let line = key.public_key().to_openssh().unwrap();
        assert!(parse_public_key(&line).is_ok());
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x";
        assert!(parse_public_key(rsa).is_err());
        assert!(parse_public_key("nonsense").is_err());
    }

    #[test]
    fn the_ca_key_is_kept_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/ca_ed25519");
        let a = SshCa::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SshCa::load_or_create(&path).unwrap();
        assert_eq!(a.public_key_line(), b.public_key_line());
    }

    #[test]
    fn host_names_are_the_container_name_with_a_dns_suffix() {
        assert!(host_name_matches("web", "web"));
        assert!(host_name_matches("web", "web.devctl"));
        assert!(host_name_matches("web", "web.dev.example.com"));
        assert!(!host_name_matches("web", "web."));
        assert!(!host_name_matches("web", "webx.devctl"));
        assert!(!host_name_matches("web", "api.devctl"));
        assert!(!host_name_matches("web", "web.dev ctl"));
        assert!(!host_name_matches("web", "web.-x"));
    }
}
