//! Joining a cluster without moving a private key: join tokens and the
//! joining side's first contact.
//!
//! A join token is `DVJ1.<ca-fingerprint>.<claims>.<mac>`:
//! - `ca-fingerprint`: SHA-256 of the cluster CA certificate (hex), so the
//!   joining machine can authenticate the scheduler before it sends the token
//!   (as Docker Swarm's `SWMTKN-1-<digest>-<secret>` does);
//! - `claims`: base64url of `id:role:name:expires` (name may be empty);
//! - `mac`: base64url HMAC-SHA256 of everything before it, keyed with the
//!   scheduler's join key (`DIR/ca/join-key`, never leaves the scheduler).
//!
//! The scheduler checks the MAC and the expiry and records the token's id
//! when it is used, so it works once. Nothing in a token is secret but the
//! whole: it is a credential until used or expired.

use std::{
    io::Write,
    net::TcpStream,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use thiserror::Error;

use crate::{identity::Role, pki, validate};

const PREFIX: &str = "DVJ1";

/// Why a join token or the first contact failed.
#[derive(Debug, Error)]
pub enum JoinError {
    /// The token is not of the form devctl prints.
    #[error(
        "the join token is malformed; copy the whole token printed by `devctl-scheduler token create` (it starts with DVJ1.)"
    )]
    Malformed,
    /// The MAC does not verify: not made by this scheduler, or altered.
    #[error("the join token is not valid for this cluster (altered, or made by another scheduler)")]
    BadMac,
    /// The token's CA is not this cluster's.
    #[error(
        "the join token is for another cluster (CA fingerprint {token}, this cluster's is {ours})"
    )]
    OtherCluster {
        /// The token's fingerprint.
        token: String,
        /// This cluster's.
        ours: String,
    },
    /// Expired.
    #[error(
        "the join token expired {ago} ago; create a new one with `devctl-scheduler token create`"
    )]
    Expired {
        /// How long ago, human-readable.
        ago: String,
    },
    /// The server presented a CA other than the pinned one.
    #[error(
        "the server at {server} presents CA fingerprint {found}, but the token pins {pinned}: refusing to send the token (wrong --server, or someone in between)"
    )]
    Pinning {
        /// The server.
        server: String,
        /// What it presented (or "none").
        found: String,
        /// What the token pins.
        pinned: String,
    },
    /// The scheduler refused.
    #[error("the scheduler refused: {} ({:?})", .0.message(), .0.code())]
    Refused(tonic::Status),
    /// Making the key or request failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Could not reach the server.
    #[error("cannot reach {server}: {reason}")]
    Connect {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
}

/// What a join token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinClaims {
    /// SHA-256 of the cluster CA certificate, hex.
    pub ca_fingerprint: String,
    /// Unique id (recorded when used).
    pub id: String,
    /// The role of the certificate it buys.
    pub role: Role,
    /// The name the certificate will carry; `None`: the joiner says.
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
}

fn hmac(key: &[u8], data: &str) -> ring::hmac::Tag {
    ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        data.as_bytes(),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl JoinClaims {
    /// New claims with a random id, valid for `ttl` from now.
    pub fn new(ca_fingerprint: String, role: Role, name: Option<String>, ttl: Duration) -> Self {
        Self {
            ca_fingerprint,
            id: uuid::Uuid::new_v4().simple().to_string(),
            role,
            name,
            expires: unix_now() + ttl.as_secs(),
        }
    }

    /// The token, signed with `key`.
    pub fn sign(&self, key: &[u8]) -> String {
        let claims = format!(
            "{}:{}:{}:{}",
            self.id,
            self.role,
            self.name.as_deref().unwrap_or(""),
            self.expires
        );
        let unsigned = format!("{PREFIX}.{}.{}", self.ca_fingerprint, B64.encode(claims));
        let mac = B64.encode(hmac(key, &unsigned).as_ref());
        format!("{unsigned}.{mac}")
    }

    /// Reads a token's claims without checking its MAC (the joining side
    /// cannot, and only needs the fingerprint).
    pub fn peek(token: &str) -> Result<Self, JoinError> {
        let mut parts = token.trim().split('.');
        let (Some(PREFIX), Some(fp), Some(claims), Some(_mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(JoinError::Malformed);
        };
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JoinError::Malformed);
        }
        let claims = B64
            .decode(claims)
            .ok()
            .and_then(|c| String::from_utf8(c).ok())
            .ok_or(JoinError::Malformed)?;
        let mut f = claims.split(':');
        let (Some(id), Some(role), Some(name), Some(expires), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(JoinError::Malformed);
        };
        let name = (!name.is_empty()).then(|| name.to_string());
        if name
            .as_deref()
            .is_some_and(|n| validate::dns_label("name", n).is_err())
        {
            return Err(JoinError::Malformed);
        }
        Ok(Self {
            ca_fingerprint: fp.to_ascii_lowercase(),
            id: id.to_string(),
            role: role.parse().map_err(|_| JoinError::Malformed)?,
            name,
            expires: expires.parse().map_err(|_| JoinError::Malformed)?,
        })
    }

    /// Checks a token made for the cluster whose CA has `ca_fingerprint`
    /// with `key`: form, cluster, MAC (constant time), expiry. The caller
    /// still has to make sure it is used once.
    pub fn verify(token: &str, key: &[u8], ca_fingerprint: &str) -> Result<Self, JoinError> {
        let claims = Self::peek(token)?;
        if claims.ca_fingerprint != ca_fingerprint {
            return Err(JoinError::OtherCluster {
                token: claims.ca_fingerprint,
                ours: ca_fingerprint.to_string(),
            });
        }
        let token = token.trim();
        let (unsigned, mac) = token.rsplit_once('.').ok_or(JoinError::Malformed)?;
        let mac = B64.decode(mac).map_err(|_| JoinError::BadMac)?;
        ring::hmac::verify(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            unsigned.as_bytes(),
            &mac,
        )
        .map_err(|_| JoinError::BadMac)?;
        let now = unix_now();
        if claims.expires <= now {
            return Err(JoinError::Expired {
                ago: humantime::format_duration(Duration::from_secs(now - claims.expires))
                    .to_string(),
            });
        }
        Ok(claims)
    }
}

/// A random 32-byte key (join tokens' MAC key, API token secrets).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut key = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .expect("the system random number generator works");
    key
}

/// Records the chain a server presents and accepts it: used only to learn
/// the CA certificate before anything is sent. Nothing but the handshake
/// goes over that connection.
#[derive(Debug)]
struct Capture(Mutex<Vec<CertificateDer<'static>>>);

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.0.lock().expect("capture lock");
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Host and port of an `https://HOST:PORT` URL (port 443 when absent).
fn host_port(server: &str) -> Result<(String, u16), JoinError> {
    let bad = || JoinError::Connect {
        server: server.to_string(),
        reason: "use an https://HOST:PORT URL".into(),
    };
    let uri: tonic::codegen::http::Uri = server.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    // An IPv6 literal keeps its brackets in a URI, not in an address.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), uri.port_u16().unwrap_or(443)))
}

/// Learns the CA certificate of the scheduler at `server` and checks it
/// against the fingerprint `pinned` (from a join token). Returns the CA as
/// PEM; from then on TLS verifies the scheduler against it as usual.
/// Blocking (one TLS handshake, at most `timeout`).
pub fn fetch_pinned_ca(server: &str, pinned: &str, timeout: Duration) -> Result<String, JoinError> {
    let (host, port) = host_port(server)?;
    let connect_err = |reason: String| JoinError::Connect {
        server: server.to_string(),
        reason,
    };
    let capture = Arc::new(Capture(Mutex::new(Vec::new())));
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| connect_err(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(capture.clone())
            .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(|e| connect_err(e.to_string()))?;
    let mut conn =
        ClientConnection::new(Arc::new(config), name).map_err(|e| connect_err(e.to_string()))?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| connect_err(e.to_string()))?
        .next()
        .ok_or_else(|| connect_err("the name resolves to no address".into()))?;
    let mut tcp =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| connect_err(e.to_string()))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| connect_err(e.to_string()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| connect_err(format!("TLS handshake: {e}")))?;
    }
    // Say goodbye politely; nothing else is sent.
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    let _ = tcp.flush();
    let chain = capture.0.lock().expect("capture lock").clone();
    let found = chain
        .iter()
        .find(|c| pki::fingerprint_der(c) == pinned)
        .ok_or_else(|| JoinError::Pinning {
            server: server.to_string(),
            found: chain
                .last()
                .map(|c| pki::fingerprint_der(c))
                .unwrap_or_else(|| "none".into()),
            pinned: pinned.to_string(),
        })?;
    Ok(pem_of(found))
}

fn pem_of(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// What joining produced: the three files and what the certificate says.
#[derive(Debug)]
pub struct Joined {
    /// CA, certificate and the key made here.
    pub bundle: pki::Bundle,
    /// The scheduler's answer (name, role, serial, expiry).
    pub issued: crate::pb::IssuedCertificate,
}

async fn anonymous_channel(
    server: &str,
    ca_pem: &str,
) -> Result<tonic::transport::Channel, JoinError> {
    let connect_err = |e: &dyn std::fmt::Display| JoinError::Connect {
        server: server.to_string(),
        reason: e.to_string(),
    };
    tonic::transport::Endpoint::from_shared(server.to_string())
        .map_err(|e| connect_err(&e))?
        .tls_config(pki::Bundle::anonymous_client_tls(ca_pem))
        .map_err(|e| connect_err(&e))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| connect_err(&e))
}

/// Joins the cluster at `server` with a join token: checks the server's CA
/// against the token's pin, makes a key pair here, sends only a certificate
/// signing request (and the token), and returns the signed certificate with
/// the key. `name` is the identity to join as (required when the token
/// names none).
pub async fn join(server: &str, token: &str, name: &str) -> Result<Joined, JoinError> {
    let claims = JoinClaims::peek(token)?;
    let ca_pem = {
        let (url, pin) = (server.to_string(), claims.ca_fingerprint.clone());
        tokio::task::spawn_blocking(move || fetch_pinned_ca(&url, &pin, Duration::from_secs(10)))
            .await
            .map_err(|e| JoinError::Connect {
                server: server.to_string(),
                reason: e.to_string(),
            })??
    };
    let csr_name = claims.name.as_deref().unwrap_or(name);
    let (key_pem, csr_pem) = pki::key_and_csr(if csr_name.is_empty() {
        "devctl"
    } else {
        csr_name
    })?;
    let channel = anonymous_channel(server, &ca_pem).await?;
    let issued = crate::pb::enroll_service_client::EnrollServiceClient::new(channel)
        .join(crate::pb::JoinRequest {
            token: token.trim().to_string(),
            csr_pem,
            name: name.to_string(),
        })
        .await
        .map_err(JoinError::Refused)?
        .into_inner();
    Ok(Joined {
        bundle: pki::Bundle {
            ca_pem,
            cert_pem: issued.cert_pem.clone(),
            key_pem,
        },
        issued,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> JoinClaims {
        JoinClaims::new(
            "ab".repeat(32),
            Role::Agent,
            Some("node-a".into()),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn a_signed_token_verifies_and_carries_its_claims() {
        let c = claims();
        let token = c.sign(b"key");
        assert!(token.starts_with("DVJ1."));
        assert_eq!(
            JoinClaims::verify(&token, b"key", &"ab".repeat(32)).unwrap(),
            c
        );
        assert_eq!(JoinClaims::peek(&token).unwrap(), c);
    }

    #[test]
    fn altered_foreign_and_expired_tokens_are_refused() {
        let c = claims();
        let token = c.sign(b"key");
        assert!(matches!(
            JoinClaims::verify(&token, b"other key", &"ab".repeat(32)),
            Err(JoinError::BadMac)
        ));
        assert!(matches!(
            JoinClaims::verify(&token, b"key", &"cd".repeat(32)),
            Err(JoinError::OtherCluster { .. })
        ));
        // Claim the admin role instead: the MAC no longer matches.
        let mut forged = c.clone();
        forged.role = Role::Admin;
        let forged_token = {
            let real = forged.sign(b"attacker");
            let (unsigned, _) = real.rsplit_once('.').unwrap();
            let (_, mac) = token.rsplit_once('.').unwrap();
            format!("{unsigned}.{mac}")
        };
        assert!(matches!(
            JoinClaims::verify(&forged_token, b"key", &"ab".repeat(32)),
            Err(JoinError::BadMac)
        ));
        let mut old = c;
        old.expires = unix_now() - 10;
        let err = JoinClaims::verify(&old.sign(b"key"), b"key", &"ab".repeat(32)).unwrap_err();
        assert!(err.to_string().contains("expired 10s ago"), "{err}");
        assert!(matches!(
            JoinClaims::peek("DVJ1.zz.yy"),
            Err(JoinError::Malformed)
        ));
    }

    #[test]
    fn server_urls_split_into_host_and_port() {
        assert_eq!(
            host_port("https://127.0.0.1:7443").unwrap(),
            ("127.0.0.1".into(), 7443)
        );
        assert_eq!(
            host_port("https://sched.example.com").unwrap(),
            ("sched.example.com".into(), 443)
        );
        assert_eq!(host_port("https://[::1]:9/").unwrap(), ("::1".into(), 9));
        assert!(host_port("http://x:1").is_err());
    }
}
