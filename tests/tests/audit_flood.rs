//! Calls without credentials cannot flood the audit log: they are
//! rate-limited per source address (RESOURCE_EXHAUSTED with
//! `retry-after-ms`, not recorded), what is recorded is bounded field by
//! field, and the log still answers.

use std::time::Duration;

use devctl_proto::pb;
use devctl_tests::{TestCluster, bus_options};

/// (messages, bytes) of the audit stream, read with a JetStream client.
async fn audit_stream(c: &TestCluster) -> (u64, u64) {
    let client = bus_options(&c.scheduler_bus_tls())
        .custom_inbox_prefix(devctl_proto::bus::SCHEDULER_INBOX_PREFIX)
        .connect(c.nats_url())
        .await
        .expect("bus");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("DEVCTL_AUDIT")
        .await
        .expect("audit stream");
    let info = stream.info().await.expect("stream info");
    (info.state.messages, info.state.bytes)
}

/// A channel to the API presenting no client certificate.
async fn anonymous_channel(c: &TestCluster) -> tonic::transport::Channel {
    let ca = std::fs::read(c.ca_file()).unwrap();
    tonic::transport::Endpoint::from_shared(c.server.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

#[test]
fn bogus_joins_without_credentials_are_rate_limited_and_the_log_stays_bounded() {
    devctl_proto::pki::install_crypto_provider();
    let c = TestCluster::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = rt.block_on(audit_stream(&c));
    let (mut limited, mut other) = (0, 0);
    rt.block_on(async {
        let channel = anonymous_channel(&c).await;
        let mut enroll = pb::enroll_service_client::EnrollServiceClient::new(channel.clone());
        let mut nodes = pb::node_service_client::NodeServiceClient::new(channel);
        for i in 0..200 {
            let err = if i % 2 == 0 {
                enroll
                    .join(pb::JoinRequest {
                        token: "x".repeat(1000),
                        name: format!("{i}{}", "n".repeat(4000)),
                        csr_pem: "y".repeat(8000),
                    })
                    .await
                    .unwrap_err()
            } else {
                nodes.list_nodes(pb::ListNodesRequest {}).await.unwrap_err()
            };
            if err.code() == tonic::Code::ResourceExhausted {
                let retry: u64 = err
                    .metadata()
                    .get("retry-after-ms")
                    .expect("retry-after-ms")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry > 0 && retry <= 1000, "{retry}");
                assert!(err.message().contains("without credentials"), "{err:?}");
                limited += 1;
            } else {
                other += 1;
            }
        }
    });
    // A burst of 20 and 10 a second: however slow the machine, most of the
    // 200 are refused.
    assert!(limited >= 100, "{limited} rate-limited, {other} not");
    // What was recorded is bounded: only the calls let through, each small.
    let after = devctl_tests::wait_until(
        "the audit stream to settle",
        Duration::from_secs(10),
        || {
            let now = rt.block_on(audit_stream(&c));
            (now.0 >= before.0 + other as u64).then_some(now)
        },
    );
    let (entries, bytes) = (after.0 - before.0, after.1 - before.1);
    assert!(
        entries <= other as u64,
        "{entries} entries for {other} calls let through"
    );
    assert!(
        bytes <= entries * 1500,
        "{bytes} bytes for {entries} entries"
    );
    // The log answers, with the big name cut to a name's length.
    let out = c.devctl(&["audit", "-o", "json"]).ok().stdout;
    let joins: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["method"].as_str().is_some_and(|m| m.ends_with("/Join")))
        .collect();
    assert!(!joins.is_empty(), "{out}");
    // --last reads from the end of the log: the newest entries only.
    let all: Vec<&str> = out.lines().collect();
    let last = c
        .devctl(&["audit", "-o", "json", "--last", "3"])
        .ok()
        .stdout;
    let last: Vec<&str> = last.lines().collect();
    assert_eq!(last.len(), 3, "{last:?}");
    // (Successful reads are not recorded: the log has not moved.)
    assert_eq!(last, all[all.len() - 3..], "{last:?}");
    for j in &joins {
        assert!(j["target"].as_str().unwrap().len() <= 253, "{j}");
        assert!(j["message"].as_str().unwrap().len() <= 512, "{j}");
    }
}
