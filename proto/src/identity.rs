//! Who is calling: the identity carried in a client certificate issued by
//! the cluster CA.
//!
//! The certificate's subject holds the identity's name in the common name
//! (CN) and its role in the organizational unit (OU), e.g.
//! `CN=alice, OU=developer, O=devctl`.

use std::{fmt, str::FromStr};

use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What an identity may do. Enforcement of each role's rights lives in the
/// scheduler's API layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// Creates and operates their own containers.
    Developer,
    /// Reads everything, changes nothing.
    Viewer,
    /// A node's agent: the bus only, no API.
    Agent,
}

impl Role {
    /// Every role, in the order the CLI lists them.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Developer, Role::Viewer, Role::Agent];

    /// The role's name as written in certificates and on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(s.to_string()))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The identity's name (certificate CN).
    pub name: String,
    /// Its role (certificate OU).
    pub role: Role,
    /// The certificate's serial number, in hex; for an API token,
    /// `token:<id>`.
    pub serial: String,
    /// When the credential was issued (seconds since the Unix epoch): a
    /// revocation by name covers what was issued before it.
    pub issued_at: i64,
    /// When the credential runs out (seconds since the Unix epoch; 0: not
    /// known): streams opened with it end then.
    pub expires_at: i64,
    /// The credential reads only the containers of `name` (a viewer API
    /// token made by a non-admin: it carries no more than its creator).
    pub own_only: bool,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

/// Why a certificate does not carry a usable identity.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The DER could not be parsed.
    #[error("client certificate cannot be parsed: {0}")]
    Parse(String),
    /// No CN, or more than one.
    #[error("client certificate has no single common name (CN)")]
    NoName,
    /// No OU naming a role.
    #[error("client certificate names no role (OU)")]
    NoRole,
    /// The OU is not a known role.
    #[error("unknown role {0:?}; expected one of admin, developer, viewer, agent")]
    UnknownRole(String),
}

impl Identity {
    /// Reads the identity from a PEM-encoded certificate (the first one in
    /// `pem`), e.g. a bundle's `cert.pem`.
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        Self::from_der(&der)
    }

    /// Reads the identity from a DER-encoded client certificate. The caller
    /// must already have verified the certificate's chain (TLS does).
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let subject = cert.subject();
        let mut cns = subject.iter_common_name();
        let name = match (cns.next(), cns.next()) {
            (Some(cn), None) => cn.as_str().map_err(|_| IdentityError::NoName)?.to_string(),
            _ => return Err(IdentityError::NoName),
        };
        let role = subject
            .iter_organizational_unit()
            .next()
            .ok_or(IdentityError::NoRole)?
            .as_str()
            .map_err(|_| IdentityError::NoRole)?
            .parse()?;
        Ok(Identity {
            name,
            role,
            serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
            // Certificates are backdated by CLOCK_SKEW (see pki).
            issued_at: cert.validity().not_before.timestamp()
                + crate::pki::CLOCK_SKEW.as_secs() as i64,
            expires_at: cert.validity().not_after.timestamp(),
            own_only: false,
        })
    }
}
