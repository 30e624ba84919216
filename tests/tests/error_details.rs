//! Machine-readable error details end to end: the Python example in
//! docs/examples/python/error_details.py, run against a real cluster with a
//! client generated from proto/, tells a quota refusal (QUOTA_EXCEEDED,
//! QuotaFailure) from a capacity shortage (NO_CAPACITY, one
//! PreconditionFailure violation per node) from a rate limit
//! (RATE_LIMITED, RetryInfo) by `ErrorInfo.reason` alone; the same details
//! read with tonic-types on the Rust side.

use std::{path::Path, process::Command};

use devctl_proto::pb;
use devctl_tests::{IMAGE, TestCluster, generate_python_stubs, python, repo_root};
use serde_json::Value;
use tonic_types::StatusExt;

/// Runs the example with `auth` and `args`: its exit code and its JSON.
fn example(c: &TestCluster, stubs: &Path, auth: &[&str], args: &[&str]) -> (i32, Value) {
    let out = Command::new(python())
        .arg(repo_root().join("docs/examples/python/error_details.py"))
        .args(["--server", c.server.trim_start_matches("https://")])
        .arg("--ca")
        .arg(c.admin_tls().join("ca.pem"))
        .args(auth)
        .args(args)
        .env("PYTHONPATH", stubs)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {stdout:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn quota_capacity_and_rate_limit_refusals_are_told_apart_by_their_details() {
    let c = TestCluster::start_opts(
        &["a"],
        &[],
        &[
            "--role-quota",
            "developer:containers=1",
            // Calls without credentials: one, then refused for 1000 s.
            "--anonymous-rate-limit",
            "0.001",
            "--anonymous-rate-burst",
            "1",
        ],
    )
    .unwrap();
    let stubs = c.scratch().join("py");
    generate_python_stubs(&stubs);
    let alice = c.issue_cert("alice", "developer");
    let cert = alice.join("cert.pem");
    let key = alice.join("key.pem");
    let auth = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let node = c.node("a");

    // More CPUs than the node has: no capacity, node a's reason.
    let (code, e) = example(
        &c,
        &stubs,
        &auth,
        &["create", "big", "--image", IMAGE, "--cpus", "1000"],
    );
    assert_eq!(code, 2, "{e}");
    assert_eq!(e["code"], "RESOURCE_EXHAUSTED", "{e}");
    assert_eq!(e["reason"], "NO_CAPACITY", "{e}");
    assert_eq!(e["domain"], "devctl.dev", "{e}");
    let pre = e["preconditions"].as_array().expect("PreconditionFailure");
    assert_eq!(pre.len(), 1, "{e}");
    assert_eq!(pre[0]["type"], "NODE", "{e}");
    assert_eq!(pre[0]["subject"], node.as_str(), "{e}");
    assert!(
        pre[0]["description"]
            .as_str()
            .unwrap()
            .starts_with("needs 1000 CPUs"),
        "{e}"
    );
    assert!(e.get("quota").is_none() && e.get("retry_after_ms").is_none());

    // One container is the quota: the second is refused as over it.
    let (code, made) = example(&c, &stubs, &auth, &["create", "a1", "--image", IMAGE]);
    assert_eq!(
        (code, made["node"].as_str()),
        (0, Some(node.as_str())),
        "{made}"
    );
    let (code, e) = example(&c, &stubs, &auth, &["create", "a2", "--image", IMAGE]);
    assert_eq!(code, 2, "{e}");
    assert_eq!(e["code"], "RESOURCE_EXHAUSTED", "{e}");
    assert_eq!(e["reason"], "QUOTA_EXCEEDED", "{e}");
    assert_eq!(e["metadata"]["owner"], "alice", "{e}");
    assert_eq!(e["metadata"]["resource"], "containers", "{e}");
    assert_eq!(
        e["quota"],
        serde_json::json!([{
            "subject": "role:developer",
            "description": "containers limit 1, 1 in use, this container asks 1 more",
        }]),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("quota exceeded for alice: containers limit 1, 1 in use"),
        "{e}"
    );
    assert!(e.get("preconditions").is_none() && e.get("retry_after_ms").is_none());

    // Without credentials: the first call is UNAUTHENTICATED, the next
    // one over the per-address limit.
    let (code, e) = example(&c, &stubs, &[], &["ls", "--repeat", "3"]);
    assert_eq!(code, 2, "{e}");
    assert_eq!(e["code"], "RESOURCE_EXHAUSTED", "{e}");
    assert_eq!(e["reason"], "RATE_LIMITED", "{e}");
    let retry = e["retry_after_ms"].as_i64().expect("RetryInfo");
    assert!(retry > 900_000, "{e}");
    assert!(
        e["advice"].as_str().unwrap().starts_with("slow down"),
        "{e}"
    );

    // The same details on the Rust side, read with tonic-types: alice's
    // next create, and one too big for any node from the admin (exempt
    // from quotas; a dry run).
    let create = |name: &str, milli_cpus, dry_run| pb::CreateContainerRequest {
        container: Some(pb::Container {
            name: name.into(),
            spec: Some(pb::ContainerSpec {
                image: IMAGE.into(),
                resources: Some(pb::Resources {
                    milli_cpus,
                    memory_bytes: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        dry_run,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let call = |tls: &Path, req| {
        rt.block_on(async {
            let channel = c.grpc_channel(tls).await;
            pb::container_service_client::ContainerServiceClient::new(channel)
                .create_container(req)
                .await
                .unwrap_err()
        })
    };
    let quota = call(&alice, create("a3", 0, false));
    let full = call(&c.admin_tls(), create("big", 1_000_000, true));
    for (status, reason) in [(&quota, "QUOTA_EXCEEDED"), (&full, "NO_CAPACITY")] {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let info = status.get_error_details().error_info().cloned();
        let info = info.expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            (reason, "devctl.dev")
        );
    }
    let quota = quota.get_error_details();
    assert_eq!(
        quota.quota_failure().unwrap().violations[0].subject,
        "role:developer"
    );
    let full = full.get_error_details();
    let nodes = &full.precondition_failure().unwrap().violations;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].subject, node);
    c.devctl(&["rm", "--force", "a1"]).ok();
}
