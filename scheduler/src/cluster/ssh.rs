//! The cluster's SSH certificates: users' keys signed for SignUserKey, and
//! the host certificate an agent's SSH server presents on one tunnel. The
//! CA's key never leaves the scheduler; what a certificate admits is
//! checked by `devctl_proto::ssh` (the agent's side).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use devctl_proto::{
    pb,
    ssh::{
        self,
        ssh_key::{HashAlg, PublicKey},
    },
    validate::{self, InvalidField},
};

use super::{Cluster, Error, HOST_CERT_TTL, MAX_PUBLIC_KEY_LEN};

/// How to make the key SignUserKey asks for.
const MAKE_A_KEY: &str = "make one with `ssh-keygen -t ed25519`";

impl Cluster {
    /// The SSH CA's public key, one OpenSSH line: clients trust the host
    /// certificates it signs (`@cert-authority *.devctl …`).
    pub fn ssh_ca_public_key(&self) -> String {
        self.shared.ssh_ca.public_key_line()
    }

    /// Signs `public_key` (one OpenSSH line, ed25519) for `identity`: a user
    /// certificate whose only principal is `identity`, valid for
    /// `ttl_seconds` (0: the cluster's `--ssh-cert-ttl`, which is also the
    /// most). Every signing is logged (identity, serial, key fingerprint,
    /// expiry; never the key).
    pub fn sign_user_key(
        &self,
        public_key: &str,
        ttl_seconds: i64,
        identity: &str,
    ) -> Result<pb::SshCertificate, Error> {
        let max = self.shared.settings.ssh_cert_ttl;
        let ttl = user_cert_ttl(ttl_seconds, max)?;
        let key = parse_user_key(public_key)?;
        let serial: u64 = rand::random();
        let now = SystemTime::now();
        let cert = self
            .shared
            .ssh_ca
            .sign_user(&key, identity, serial, now, ttl)
            .map_err(|e| Error::internal(format!("signing an SSH user certificate: {e}")))?;
        let line = cert
            .to_openssh()
            .map_err(|e| Error::internal(format!("encoding an SSH user certificate: {e}")))?;
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        let valid_before = at(cert.valid_before());
        tracing::info!(
            identity,
            serial,
            fingerprint = %key.fingerprint(HashAlg::Sha256),
            valid_before = %humantime::format_rfc3339_seconds(valid_before),
            "SSH user certificate signed"
        );
        Ok(pb::SshCertificate {
            certificate: line,
            principal: identity.to_string(),
            valid_after: Some(at(cert.valid_after()).into()),
            valid_before: Some(valid_before.into()),
            serial,
            ca_public_key: self.ssh_ca_public_key(),
        })
    }

    /// A host certificate (one OpenSSH line) for an agent's host `key`,
    /// naming `host`, valid for [`HOST_CERT_TTL`]: it is checked only at the
    /// handshake of the tunnel `session` it is made for.
    pub(super) fn sign_host_key(
        &self,
        key: &PublicKey,
        host: &str,
        session: &str,
    ) -> Result<String, Error> {
        let serial: u64 = rand::random();
        let cert = self
            .shared
            .ssh_ca
            .sign_host(key, host, serial, SystemTime::now(), HOST_CERT_TTL)
            .and_then(|c| Ok(c.to_openssh()?))
            .map_err(|e| Error::internal(format!("signing an SSH host certificate: {e}")))?;
        tracing::debug!(session, host, serial, "SSH host certificate signed");
        Ok(cert)
    }
}

/// The lifetime `ttl_seconds` asks for: 0 is `max`, the cluster's limit.
fn user_cert_ttl(ttl_seconds: i64, max: Duration) -> Result<Duration, Error> {
    let limit = || {
        format!(
            "{} ({} s, the scheduler's --ssh-cert-ttl)",
            humantime::format_duration(max),
            max.as_secs()
        )
    };
    match ttl_seconds {
        0 => Ok(max),
        n if n < 0 => Err(InvalidField::new(
            "ttl_seconds",
            format!(
                "must not be negative; 0 asks for the cluster's default, {}",
                limit()
            ),
        )
        .into()),
        n if n as u64 > max.as_secs() => Err(InvalidField::new(
            "ttl_seconds",
            format!(
                "{n} s is longer than this cluster allows: at most {}; ask for less, or 0 for that",
                limit()
            ),
        )
        .into()),
        n => Ok(Duration::from_secs(n as u64)),
    }
}

/// The user's public key from its OpenSSH line; the errors say how to get a
/// good one and never repeat what was sent (it may be a private key).
fn parse_user_key(line: &str) -> Result<PublicKey, Error> {
    let field = "public_key";
    if line.trim().is_empty() {
        return Err(InvalidField::new(
            field,
            format!(
                "is required: one OpenSSH public key line, such as the contents of ~/.ssh/id_ed25519.pub ({MAKE_A_KEY})"
            ),
        )
        .into());
    }
    validate::max_len(field, line, MAX_PUBLIC_KEY_LEN)?;
    ssh::parse_public_key(line).map_err(|e| {
        let problem = match e {
            ssh::SshError::NotEd25519(_) => e.to_string(),
            other => format!(
                "not an OpenSSH public key line ({other}); send the contents of a .pub file such as ~/.ssh/id_ed25519.pub, ed25519 only ({MAKE_A_KEY})"
            ),
        };
        InvalidField::new(field, problem).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ErrorKind, fake_link};

    fn field(e: &Error) -> &str {
        match e.kind() {
            ErrorKind::InvalidSpec { field } => field,
            other => panic!("not an invalid field: {other:?}"),
        }
    }

    #[test]
    fn a_signed_key_admits_its_identity_only_for_the_time_asked() {
        let f = fake_link::cluster();
        let key = ssh::new_key("alice@laptop").unwrap();
        let line = key.public_key().to_openssh().unwrap();
        let signed = f.cluster.sign_user_key(&line, 600, "alice").unwrap();
        assert_eq!(signed.principal, "alice");
        assert_eq!(signed.ca_public_key, f.cluster.ssh_ca_public_key());
        let cert = ssh::ssh_key::Certificate::from_openssh(&signed.certificate).unwrap();
        let ca = ssh::parse_public_key(&signed.ca_public_key).unwrap();
        ssh::check_user_certificate(&cert, &ca, "alice").unwrap();
        assert!(ssh::check_user_certificate(&cert, &ca, "bob").is_err());
        assert_eq!(cert.serial(), signed.serial);
        assert_eq!(cert.public_key(), key.public_key().key_data());
        let secs = |t: Option<prost_types::Timestamp>| t.unwrap().seconds;
        let lifetime = secs(signed.valid_before) - secs(signed.valid_after);
        assert_eq!(lifetime, 600 + ssh::CLOCK_SKEW.as_secs() as i64);
        // 0: the cluster's default, which is also the most.
        let default = f.cluster.sign_user_key(&line, 0, "alice").unwrap();
        let lifetime = secs(default.valid_before) - secs(default.valid_after);
        let max = crate::cluster::DEFAULT_SSH_CERT_TTL.as_secs() as i64;
        assert_eq!(lifetime, max + ssh::CLOCK_SKEW.as_secs() as i64);
        assert_ne!(default.serial, signed.serial);
    }

    #[test]
    fn lifetimes_beyond_the_limit_and_bad_keys_are_refused_by_field() {
        let f = fake_link::cluster();
        let line = ssh::new_key("k")
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap();
        let max = crate::cluster::DEFAULT_SSH_CERT_TTL.as_secs() as i64;
        for ttl in [-1, max + 1, i64::MAX] {
            let e = f.cluster.sign_user_key(&line, ttl, "alice").unwrap_err();
            assert_eq!(field(&e), "ttl_seconds", "{ttl}");
        }
        assert!(f.cluster.sign_user_key(&line, max, "alice").is_ok());
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n";
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x";
        let long = format!("ssh-ed25519 {}", "A".repeat(MAX_PUBLIC_KEY_LEN));
        for bad in ["", "  ", private, rsa, "ssh-ed25519 AAAA", &long] {
            let e = f.cluster.sign_user_key(bad, 0, "alice").unwrap_err();
            assert_eq!(field(&e), "public_key", "{bad}");
            let text = e.to_string();
            assert!(
                text.contains("ssh-keygen -t ed25519") || bad == long,
                "{text}"
            );
            assert!(
                !text.contains("b3BlbnNzaC1"),
                "the key is not echoed: {text}"
            );
        }
    }
}
