//! The API requires a client certificate from the cluster CA.

use std::{fs, path::Path};

use devctl_proto::{
    pb::{ListContainersRequest, container_service_client::ContainerServiceClient},
    pki::Bundle,
};
use devctl_tests::{TestCluster, bin};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn copy(from: &Path, to: &Path, file: &str) {
    fs::copy(from.join(file), to.join(file)).unwrap();
}

fn issue(c: &TestCluster, name: &str, role: &str) -> std::path::PathBuf {
    c.issue_cert(name, role)
}

#[test]
fn only_certificates_of_the_cluster_ca_are_accepted() {
    let c = TestCluster::start(&[]);

    // The admin bundle works.
    c.devctl(&["ls"]).ok();

    // A certificate from another CA, presented by a client that trusts our
    // server: refused by the server.
    let other = c.scratch().join("other");
    let status = std::process::Command::new(bin("devctl-scheduler"))
        .args(["init", "--data-dir"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let mixed = c.scratch().join("mixed");
    fs::create_dir(&mixed).unwrap();
    copy(&c.admin_tls(), &mixed, "ca.pem");
    copy(&other.join("clients/admin"), &mixed, "cert.pem");
    copy(&other.join("clients/admin"), &mixed, "key.pem");
    let err = c.devctl_as(&mixed, &["ls"]).err();
    // The connection was made, then the server refused the certificate.
    assert!(!err.contains("cannot reach"), "{err}");
    assert!(
        err.contains("transport error") && err.contains("issued by this cluster's CA"),
        "{err}"
    );

    // The other cluster's bundle as is: our server is not trusted either.
    let err = c.devctl_as(&other.join("clients/admin"), &["ls"]).err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // Agents' certificates may not use the API.
    let agent = issue(&c, "node-x", "agent");
    let err = c.devctl_as(&agent, &["ls"]).err();
    assert!(err.contains("PermissionDenied"), "{err}");

    // A developer certificate works.
    let dev = issue(&c, "alice", "developer");
    c.devctl_as(&dev, &["ls"]).ok();

    // A viewer reads but may not change anything.
    let viewer = issue(&c, "victor", "viewer");
    c.devctl_as(&viewer, &["ls"]).ok();
    let err = c
        .devctl_as(&viewer, &["create", "v", "--image", devctl_tests::IMAGE])
        .err();
    assert!(
        err.contains("PermissionDenied") && err.contains("read-only"),
        "{err}"
    );

    // No client certificate at all: the first call fails (under TLS 1.3 the
    // handshake itself may appear to succeed).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = Bundle::load(&c.admin_tls()).unwrap().ca_pem;
    let server = c.server.clone();
    let result = rt.block_on(async move {
        devctl_proto::pki::install_crypto_provider();
        let channel = Endpoint::from_shared(server)
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .unwrap()
            .connect()
            .await;
        match channel {
            Err(e) => Err(e.to_string()),
            Ok(ch) => ContainerServiceClient::new(ch)
                .list_containers(ListContainersRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
        }
    });
    let err = result.expect_err("a client without a certificate was served");
    assert!(
        !err.contains("refused"),
        "the server must be reachable for this to mean anything: {err}"
    );
    // The same server, a moment later, serves a client with a certificate.
    c.devctl(&["ls"]).ok();
}
