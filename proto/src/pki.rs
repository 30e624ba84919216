//! The cluster's certificate authority and the three-file bundles
//! (`ca.pem`, `cert.pem`, `key.pem`) every participant holds.
//!
//! One file on purpose: the CA, CSRs and certificate checks share one set
//! of key and name rules.
//!
//! Keys are ECDSA P-256. Private keys are written with mode 0600 and never
//! logged.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

use crate::identity::Role;

/// File name of the CA certificate in a bundle.
pub const CA_FILE: &str = "ca.pem";
/// File name of the certificate in a bundle.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key in a bundle.
pub const KEY_FILE: &str = "key.pem";

/// The organization (O) of every certificate the cluster CA issues.
pub const ORGANIZATION: &str = "devctl";
/// Common name of the scheduler's bus certificate.
pub const SCHEDULER_BUS_NAME: &str = "devctl-scheduler";
/// Organizational unit of the scheduler's bus certificate (not a role).
pub const SCHEDULER_BUS_OU: &str = "scheduler";

/// The bus (NATS) user of a client certificate issued for `name` with
/// organizational unit `ou`: its subject, RFC 2253 style, as nats-server's
/// `verify_and_map` compares it (2.15 matches the attributes in any order;
/// a bare CN does not match).
pub fn bus_user(name: &str, ou: &str) -> String {
    format!("CN={name},OU={ou},O={ORGANIZATION}")
}

/// The bus user of one agent certificate: its subject carries the
/// certificate's own serial (`SERIALNUMBER`), so each certificate is a user
/// of its own and the bus admits exactly the certificates listed (a
/// replaced, revoked or stolen older one of the same node does not log in).
pub fn agent_bus_user(node: &str, serial: &str) -> String {
    format!(
        "CN={node},OU={},O={ORGANIZATION},SERIALNUMBER={serial}",
        Role::Agent.as_str()
    )
}

/// Errors of the PKI helpers.
#[derive(Debug, Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Key or certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A certificate signing request is malformed or its signature wrong.
    #[error("certificate signing request: {0}")]
    BadCsr(String),
    /// A certificate cannot be read.
    #[error("certificate: {0}")]
    BadCert(String),
    /// A private key file is readable by others.
    #[error(
        "{path}: private key is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes ring the process's rustls crypto provider. Call once at start-up,
/// before any TLS configuration is built; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Sets `dir`'s mode to 0700.
pub fn restrict_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Writes `contents` to `path` atomically (temporary file, then rename) with
/// the given mode.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Reads a secret file, refusing one readable by group or others.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, PkiError> {
    check_private(path)?;
    fs::read(path).map_err(io_err(path))
}

fn check_private(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyPermissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

fn read_key(path: &Path) -> Result<String, PkiError> {
    check_private(path)?;
    read(path)
}

/// Bytes as lowercase hex (serials, fingerprints, ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A serial as lowercase hex, as [`crate::identity::Identity::serial`]
/// reads it back.
fn serial_hex(s: &SerialNumber) -> String {
    hex(&s.to_bytes())
}

/// The first certificate of `pem`, DER.
fn cert_der(pem: &str) -> Result<rustls::pki_types::CertificateDer<'static>, PkiError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadCert(format!("not a PEM certificate: {e}")))
}

fn random_serial() -> SerialNumber {
    let mut bytes = uuid::Uuid::new_v4().into_bytes();
    // A positive INTEGER whose first byte is never 0: DER would drop a
    // leading zero and the serial read back would differ from the one
    // reported at issue (and not match a revocation by that serial).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// How far certificates are backdated, to tolerate small clock differences
/// between machines.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + valid_for;
}

/// The cluster CA: signs the scheduler's server certificate and every client
/// certificate.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_pem", &"<pem>")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl ClusterCa {
    /// Generates a new CA valid for ten years.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("devctl CA {cluster_name}"));
        dn.push(DnType::OrganizationName, "devctl");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, Duration::from_secs(10 * 365 * 24 * 3600));
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads a CA written by [`ClusterCa::write`].
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        Ok(Self {
            cert_pem: read(&dir.join(CA_FILE))?,
            key_pem: read_key(&dir.join("ca-key.pem"))?,
        })
    }

    /// Writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir` (0700).
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        create_private_dir(dir)?;
        write_file(&dir.join(CA_FILE), self.cert_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("ca-key.pem"), self.key_pem.as_bytes(), 0o600)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn sign(&self, params: &CertificateParams) -> Result<Bundle, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Bundle {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the scheduler's server certificate for the given DNS names and
    /// IP addresses.
    pub fn issue_server(&self, sans: &[String], valid_for: Duration) -> Result<Bundle, PkiError> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "devctl-scheduler");
        dn.push(DnType::OrganizationName, "devctl");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, valid_for);
        self.sign(&params)
    }

    /// Signs the public key of a certificate signing request as a client
    /// certificate for `name` with `role`: the request's own subject and
    /// extensions are ignored. Returns the certificate and what it says.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        name: &str,
        role: Role,
        valid_for: Duration,
    ) -> Result<SignedCert, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let params = client_params(name, role.as_str(), valid_for);
        let not_after = params.not_after;
        let serial = params
            .serial_number
            .as_ref()
            .map(serial_hex)
            .unwrap_or_default();
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let cert = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&issuer)?;
        Ok(SignedCert {
            cert_pem: cert.pem(),
            serial,
            not_after: std::time::SystemTime::UNIX_EPOCH
                + Duration::from_secs(not_after.unix_timestamp().max(0) as u64),
        })
    }

    /// Issues a client certificate for `name` with `role`.
    pub fn issue_client(
        &self,
        name: &str,
        role: Role,
        valid_for: Duration,
    ) -> Result<Bundle, PkiError> {
        self.issue_client_ou(name, role.as_str(), valid_for)
    }

    /// Issues the scheduler's own client certificate for the bus
    /// ([`SCHEDULER_BUS_NAME`], OU [`SCHEDULER_BUS_OU`]). Its OU is no
    /// role, so the API refuses it.
    pub fn issue_scheduler_bus(&self, valid_for: Duration) -> Result<Bundle, PkiError> {
        self.issue_client_ou(SCHEDULER_BUS_NAME, SCHEDULER_BUS_OU, valid_for)
    }

    fn issue_client_ou(
        &self,
        name: &str,
        ou: &str,
        valid_for: Duration,
    ) -> Result<Bundle, PkiError> {
        self.sign(&client_params(name, ou, valid_for))
    }
}

fn client_params(name: &str, ou: &str, valid_for: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let serial = random_serial();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    if ou == Role::Agent.as_str() {
        // serialNumber (2.5.4.5): the bus user is this certificate alone
        // (see agent_bus_user).
        dn.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            rcgen::DnValue::PrintableString(
                serial_hex(&serial)
                    .try_into()
                    .expect("hex digits are printable"),
            ),
        );
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, valid_for);
    params
}

/// A certificate signed from a request ([`ClusterCa::sign_csr`]).
#[derive(Debug, Clone)]
pub struct SignedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number, hex.
    pub serial: String,
    /// When it expires.
    pub not_after: std::time::SystemTime,
}

/// The SHA-256 fingerprint (lowercase hex) of the first certificate in
/// `pem`: what a join token pins.
pub fn fingerprint(pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint_der(&cert_der(pem)?))
}

/// The SHA-256 fingerprint (lowercase hex) of a DER certificate.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// A new private key (PEM, never leaves this machine) and a certificate
/// signing request for it naming `name`.
pub fn key_and_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// A certificate, its private key and the CA that signed it: the three files
/// `ca.pem`, `cert.pem` and `key.pem` of a directory.
#[derive(Clone)]
pub struct Bundle {
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM. Never log it.
    pub key_pem: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_pem", &"<pem>")
            .field("cert_pem", &"<pem>")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Bundle {
    /// Writes the three files into `dir` (created 0700); the key is 0600.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        create_private_dir(dir)?;
        write_file(&dir.join(CA_FILE), self.ca_pem.as_bytes(), 0o644)?;
        write_file(&dir.join(CERT_FILE), self.cert_pem.as_bytes(), 0o644)?;
        write_file(&dir.join(KEY_FILE), self.key_pem.as_bytes(), 0o600)
    }

    /// Replaces the bundle in `dir` as a whole: written to a new directory,
    /// then exchanged with the old one in one atomic step (`renameat2`
    /// RENAME_EXCHANGE), so a crash leaves either the old bundle or the new
    /// one, never a key beside another key's certificate, never none.
    pub fn replace(&self, dir: &Path) -> Result<(), PkiError> {
        let name = dir
            .file_name()
            .filter(|n| *n != ".." && *n != ".")
            .ok_or_else(|| PkiError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a bundle directory needs a name of its own",
                ),
            })?
            .to_string_lossy()
            .into_owned();
        let fresh = dir.with_file_name(format!("{name}.new"));
        let _ = fs::remove_dir_all(&fresh);
        self.write(&fresh)?;
        if dir.exists() {
            use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
            renameat2(
                AT_FDCWD,
                &fresh,
                AT_FDCWD,
                dir,
                RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| io_err(dir)(e.into()))?;
            // `fresh` now holds the old bundle.
            let _ = fs::remove_dir_all(&fresh);
        } else {
            fs::rename(&fresh, dir).map_err(io_err(dir))?;
        }
        Ok(())
    }

    /// Who the certificate names: name, role, serial, validity (as the
    /// scheduler reads a caller). Bundles of the scheduler's own bus
    /// certificate name no role and are refused.
    pub fn identity(&self) -> Result<crate::identity::Identity, PkiError> {
        crate::identity::Identity::from_pem(&self.cert_pem)
            .map_err(|e| PkiError::BadCert(e.to_string()))
    }

    /// The certificate's serial, hex.
    pub fn serial(&self) -> Result<String, PkiError> {
        Ok(self.identity()?.serial)
    }

    /// When this bundle's certificate was issued and when it runs out.
    pub fn validity(&self) -> Result<(std::time::SystemTime, std::time::SystemTime), PkiError> {
        let id = self.identity()?;
        let at = |secs: i64| std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        Ok((at(id.issued_at), at(id.expires_at)))
    }

    /// Reads the three files from `dir`. Refuses a key readable by group or
    /// others.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        Ok(Self {
            ca_pem: read(&dir.join(CA_FILE))?,
            cert_pem: read(&dir.join(CERT_FILE))?,
            key_pem: read_key(&dir.join(KEY_FILE))?,
        })
    }

    /// TLS for a client of the scheduler: trusts only the cluster CA and
    /// presents this bundle's certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// TLS for the scheduler: presents this bundle's certificate followed
    /// by the CA's (so a joining machine can check the CA against the
    /// fingerprint its token pins) and verifies client certificates against
    /// the cluster CA. A client certificate is optional at the TLS layer:
    /// enrollment and API tokens come without one, and every other call is
    /// refused by authentication unless it carries one or a valid token.
    pub fn server_tls(&self) -> ServerTlsConfig {
        let chain = format!("{}\n{}", self.cert_pem.trim_end(), self.ca_pem);
        ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(chain, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// TLS for a client that trusts the cluster CA but presents no
    /// certificate (enrollment, API tokens).
    pub fn anonymous_client_tls(ca_pem: &str) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem))
    }
}

/// The names a server certificate should carry by default: `localhost`,
/// `127.0.0.1`, `::1` and this machine's hostname, followed by `extra`.
pub fn default_server_sans(extra: &[String]) -> Vec<String> {
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = hostname::get()
        && let Some(host) = host.to_str()
        && !host.is_empty()
    {
        sans.push(host.to_string());
    }
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
