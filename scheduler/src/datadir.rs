//! The scheduler's data directory and what `init` and `issue-cert` write
//! into it.
//!
//! ```text
//! DIR/ca/ca.pem, ca-key.pem          the cluster CA (key 0600, dir 0700)
//! DIR/server/{ca,cert,key}.pem       the scheduler's server certificate
//! DIR/clients/admin/{ca,cert,key}.pem  the first admin's client bundle
//! DIR/ca/join-key                    the MAC key of join tokens (0600)
//! DIR/revoked                        revoked certificates (see revocation)
//! DIR/state.redb                     the store
//! DIR/scheduler.addr                 the address `serve` listens on
//! ```

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use devctl_proto::{
    identity::Role,
    pki::{self, Bundle, ClusterCa, PkiError},
    validate::{self, InvalidField},
};
use thiserror::Error;

/// Validity of the server certificate.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A failure of `init` or `issue-cert`.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// The directory already holds a cluster.
    #[error(
        "{0} already holds a cluster CA; pass --force to replace it (every certificate issued so far stops working)"
    )]
    AlreadyInitialized(PathBuf),
    /// The directory holds no cluster.
    #[error("{0} holds no cluster CA; run `devctl-scheduler init --data-dir {0}` first")]
    NotInitialized(PathBuf),
    /// A flag is wrong.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Certificates or files.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The CA's directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// The server bundle's directory.
    pub fn server_dir(&self) -> PathBuf {
        self.root.join("server")
    }

    /// A client bundle's directory.
    pub fn client_dir(&self, name: &str) -> PathBuf {
        self.root.join("clients").join(name)
    }

    /// The store file.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.redb")
    }

    /// The revocation list.
    pub fn revoked_file(&self) -> PathBuf {
        self.root.join("revoked")
    }

    /// The key join tokens are signed with, made on first use (0600).
    pub fn join_key(&self) -> Result<Vec<u8>, DataDirError> {
        let path = self.ca_dir().join("join-key");
        match pki::read_secret(&path) {
            Ok(key) => Ok(key),
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                if !self.ca_dir().join(pki::CA_FILE).exists() {
                    return Err(DataDirError::NotInitialized(self.root.clone()));
                }
                let key = devctl_proto::enroll::random_bytes::<32>();
                // Two first uses at once: the rename makes one of them win;
                // read back whichever did.
                pki::write_file(&path, &key, 0o600)?;
                Ok(pki::read_secret(&path)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A join token for `role` (and `name`, if given) valid for `ttl`.
    pub fn create_join_token(
        &self,
        role: Role,
        name: Option<&str>,
        ttl: Duration,
    ) -> Result<String, DataDirError> {
        if let Some(n) = name {
            validate::dns_label("--name", n)?;
        }
        if ttl.is_zero() {
            return Err(InvalidField::new("--ttl", "must be more than zero (e.g. 1h)").into());
        }
        let ca = ClusterCa::load(&self.ca_dir()).map_err(|e| match e {
            PkiError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                DataDirError::NotInitialized(self.root.clone())
            }
            e => e.into(),
        })?;
        let key = self.join_key()?;
        let claims = devctl_proto::enroll::JoinClaims::new(
            pki::fingerprint(ca.cert_pem())?,
            role,
            name.map(str::to_string),
            ttl,
        );
        Ok(claims.sign(&key))
    }

    /// Where `serve` writes the address it listens on.
    pub fn addr_file(&self) -> PathBuf {
        self.root.join("scheduler.addr")
    }

    /// Creates the cluster CA, the server certificate (for
    /// [`pki::default_server_sans`] plus `extra_sans`) and the admin bundle.
    pub fn init(&self, extra_sans: &[String], force: bool) -> Result<(), DataDirError> {
        if self.ca_dir().join(pki::CA_FILE).exists() && !force {
            return Err(DataDirError::AlreadyInitialized(self.root.clone()));
        }
        pki::create_private_dir(&self.root)?;
        // Also when the directory existed before: it holds the CA key and
        // every container's environment.
        pki::restrict_dir(&self.root)?;
        let ca = ClusterCa::generate(
            &self
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "devctl".into()),
        )?;
        let server =
            ca.issue_server(&pki::default_server_sans(extra_sans), SERVER_CERT_VALIDITY)?;
        let admin = ca.issue_client("admin", Role::Admin, SERVER_CERT_VALIDITY)?;
        ca.write(&self.ca_dir())?;
        // A new CA: tokens of the old one must not verify.
        let _ = std::fs::remove_file(self.ca_dir().join("join-key"));
        server.write(&self.server_dir())?;
        pki::create_private_dir(&self.root.join("clients"))?;
        admin.write(&self.client_dir("admin"))?;
        Ok(())
    }

    /// Issues a client bundle for `name` with `role` into `out`.
    pub fn issue_cert(
        &self,
        name: &str,
        role: Role,
        out: &Path,
        valid_for: Duration,
    ) -> Result<(), DataDirError> {
        validate::dns_label("--name", name)?;
        if !self.ca_dir().join(pki::CA_FILE).exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        let ca = ClusterCa::load(&self.ca_dir())?;
        ca.issue_client(name, role, valid_for)?.write(out)?;
        Ok(())
    }

    /// The server bundle.
    pub fn server_bundle(&self) -> Result<Bundle, DataDirError> {
        if !self.server_dir().join(pki::CERT_FILE).exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        Ok(Bundle::load(&self.server_dir())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_private_keys_0600_and_refuses_to_run_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        dir.init(&["devctl.example".into()], false).unwrap();
        for key in [
            dir.ca_dir().join("ca-key.pem"),
            dir.server_dir().join("key.pem"),
            dir.client_dir("admin").join("key.pem"),
        ] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let err = dir.init(&[], false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let before = std::fs::read(dir.ca_dir().join("ca.pem")).unwrap();
        dir.init(&[], true).unwrap();
        assert_ne!(before, std::fs::read(dir.ca_dir().join("ca.pem")).unwrap());

        let out = tmp.path().join("bob");
        dir.issue_cert("bob", Role::Developer, &out, Duration::from_secs(60))
            .unwrap();
        assert!(out.join("cert.pem").exists());
        assert!(
            dir.issue_cert("Bob!", Role::Developer, &out, Duration::from_secs(60))
                .is_err()
        );
    }
}
