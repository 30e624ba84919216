//! Unit tests of `pki.rs`.

use super::*;
use crate::identity::Identity;
use std::os::unix::fs::PermissionsExt;

#[test]
fn issued_client_certificates_carry_name_and_role() {
    let ca = ClusterCa::generate("test").unwrap();
    let bundle = ca
        .issue_client("alice", Role::Developer, Duration::from_secs(3600))
        .unwrap();
    let der = rustls_pem_der(&bundle.cert_pem);
    let id = Identity::from_der(&der).unwrap();
    assert_eq!(id.name, "alice");
    assert_eq!(id.role, Role::Developer);
    assert!(!id.serial.is_empty());
}

#[test]
fn bundles_are_written_with_private_keys_0600_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("test").unwrap();
    let b = ca
        .issue_server(&default_server_sans(&[]), Duration::from_secs(3600))
        .unwrap();
    b.write(&dir.path().join("server")).unwrap();
    let key_mode = fs::metadata(dir.path().join("server/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let loaded = Bundle::load(&dir.path().join("server")).unwrap();
    assert_eq!(loaded.cert_pem, b.cert_pem);

    fs::set_permissions(
        dir.path().join("server/key.pem"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = Bundle::load(&dir.path().join("server")).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn a_bundle_is_replaced_whole_and_a_bad_directory_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("test").unwrap();
    let one = ca
        .issue_client("n1", Role::Agent, Duration::from_secs(60))
        .unwrap();
    let two = ca
        .issue_client("n1", Role::Agent, Duration::from_secs(60))
        .unwrap();
    let tls = dir.path().join("tls");
    one.replace(&tls).unwrap();
    assert_eq!(Bundle::load(&tls).unwrap().cert_pem, one.cert_pem);
    two.replace(&tls).unwrap();
    let back = Bundle::load(&tls).unwrap();
    assert_eq!(
        (back.cert_pem, back.key_pem),
        (two.cert_pem.clone(), two.key_pem.clone())
    );
    assert!(!dir.path().join("tls.new").exists());
    assert_eq!(two.serial().unwrap().len(), 32);
    assert!(two.replace(&dir.path().join("..")).is_err());
}

fn rustls_pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}
