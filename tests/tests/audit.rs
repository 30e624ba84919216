//! The audit log: every mutating call and every refused call is recorded
//! (identity, role, method, target, result, source address), durably and
//! readable by admins only; successful reads are not. And the per-identity
//! rate limit: RESOURCE_EXHAUSTED with a retry hint, for that identity
//! only.

use std::time::{Duration, SystemTime};

use devctl_proto::pb;
use devctl_tests::{IMAGE, TestCluster, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

/// `devctl audit -o json` (plus `extra`) as admin, one entry per line.
fn audit(c: &TestCluster, extra: &[&str]) -> Vec<Value> {
    audit_as(c, &c.admin_tls(), extra)
}

/// `devctl audit -o json` (plus `extra`) with the bundle in `tls`.
fn audit_as(c: &TestCluster, tls: &std::path::Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "-o", "json"];
    args.extend_from_slice(extra);
    let out = c.devctl_as(tls, &args).ok().stdout;
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// (identity, method without its service, target, code) of each entry.
fn summary(entries: &[Value]) -> Vec<(String, String, String, String)> {
    entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            let method = s("method");
            let method = method.rsplit('/').next().unwrap_or_default().to_string();
            (s("identity"), method, s("target"), s("code"))
        })
        .collect()
}

fn row(identity: &str, method: &str, target: &str, code: &str) -> (String, String, String, String) {
    (identity.into(), method.into(), target.into(), code.into())
}

/// Waits until the audit log (with `extra` flags) holds `n` entries.
fn wait_entries(c: &TestCluster, extra: &[&str], n: usize) -> Vec<Value> {
    wait_until(
        &format!("{n} audit entries"),
        Duration::from_secs(20),
        || {
            let e = audit(c, extra);
            (e.len() >= n).then_some(e)
        },
    )
}

#[test]
fn mutating_and_refused_calls_are_audited_durably_for_admins() {
    // A size cap on the log (JetStream reserves it) still starts and records.
    let mut c = TestCluster::start_opts(&["a"], &[], &["--audit-max-size", "64m"]).unwrap();
    let node = c.node("a");
    let alice = c.issue_cert("alice", "developer");
    let rogue = c.issue_cert("rogue", "agent");

    c.devctl(&["create", "box", "--image", IMAGE]).ok();
    // The create is stored: everything after `mark` comes later.
    wait_entries(&c, &[], 1);
    let mark = humantime::format_rfc3339_millis(SystemTime::now()).to_string();

    for args in [
        &["stop", "box", "-t", "0"][..],
        &["get", "box"],
        &["exec", "box", "--", "true"],
    ] {
        let err = c.devctl_as(&alice, args).err();
        assert!(err.contains("PermissionDenied"), "{args:?}: {err}");
    }
    let err = c.devctl_as(&rogue, &["ls"]).err();
    assert!(err.contains("PermissionDenied"), "{err}");
    // Successful reads are not recorded.
    c.devctl(&["ls"]).ok();
    c.devctl(&["get", "box"]).ok();
    c.devctl_as(&alice, &["ls"]).ok();
    c.devctl(&["stop", "box", "-t", "0"]).ok();
    c.devctl(&["rm", "box"]).ok();
    c.devctl(&["nodes", "cordon", &node]).ok();
    c.devctl(&["tokens", "create", "--name", "ci", "--role", "viewer"])
        .ok();
    // Only admins read the log; the refusal is itself recorded.
    let err = c.devctl_as(&alice, &["audit"]).err();
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(err.contains("admin"), "{err}");

    let expected = vec![
        row("admin", "CreateContainer", "box", "OK"),
        row("alice", "StopContainer", "box", "PERMISSION_DENIED"),
        row("alice", "GetContainer", "box", "PERMISSION_DENIED"),
        row("alice", "Exec", "box", "PERMISSION_DENIED"),
        row("rogue", "ListContainers", "", "PERMISSION_DENIED"),
        row("admin", "StopContainer", "box", "OK"),
        row("admin", "DeleteContainer", "box", "OK"),
        row("admin", "CordonNode", &node, "OK"),
        row("admin", "CreateToken", "ci", "OK"),
        row("alice", "ListAuditEntries", "", "PERMISSION_DENIED"),
    ];
    let entries = wait_entries(&c, &[], expected.len());
    assert_eq!(summary(&entries), expected, "{entries:#?}");

    // Every field is there.
    let create = &entries[0];
    assert_eq!(create["role"], "admin");
    assert_eq!(
        create["method"],
        "devctl.v1.ContainerService/CreateContainer"
    );
    assert!(
        create["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{create}"
    );
    for e in &entries {
        let source = e["source"].as_str().unwrap();
        assert!(source.starts_with("127.0.0.1:"), "{e}");
    }
    let denied = &entries[1];
    assert_eq!(denied["role"], "developer");
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("belongs to admin"),
        "{denied}"
    );
    assert_eq!(entries[4]["role"], "agent");

    // Filters: by identity, by time.
    let alices = audit(&c, &["--identity", "alice"]);
    assert_eq!(
        summary(&alices),
        expected
            .iter()
            .filter(|r| r.0 == "alice")
            .cloned()
            .collect::<Vec<_>>()
    );
    let since = audit(&c, &["--since", &mark]);
    assert_eq!(summary(&since), expected[1..].to_vec());
    // The table names the columns.
    let table = c.devctl(&["audit", "--identity", "rogue"]).ok().stdout;
    assert!(table.starts_with("TIME"), "{table}");
    for col in ["IDENTITY", "ROLE", "METHOD", "TARGET", "RESULT", "SOURCE"] {
        assert!(table.contains(col), "{table}");
    }
    assert!(table.contains("ListContainers") && table.contains("PERMISSION_DENIED"));

    // The log survives a scheduler restart.
    let mut s = c.scheduler.take().unwrap();
    s.signal(Signal::SIGKILL);
    s.wait_exit(Duration::from_secs(10));
    c.start_scheduler().unwrap();
    assert_eq!(summary(&audit(&c, &[])), expected);

    // A graceful stop stores what is still queued: a call just before
    // SIGTERM is in the log afterwards.
    c.devctl(&["nodes", "uncordon", &node]).ok();
    let mut s = c.scheduler.take().unwrap();
    s.signal(Signal::SIGTERM);
    assert!(s.wait_exit(Duration::from_secs(30)).success());
    c.start_scheduler().unwrap();
    let entries = audit(&c, &[]);
    assert_eq!(
        summary(&entries).last(),
        Some(&row("admin", "UncordonNode", &node, "OK")),
        "{entries:#?}"
    );
}

/// One call as `tls` over gRPC: ListNodes.
async fn list_nodes(c: &TestCluster, tls: &std::path::Path) -> Result<(), tonic::Status> {
    let channel = c.grpc_channel(tls).await;
    pb::node_service_client::NodeServiceClient::new(channel)
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map(drop)
}

#[test]
fn the_rate_limit_refuses_one_identity_with_a_retry_hint() {
    // One call per 1000 s after a burst of 3: the 4th call in a row is
    // refused whatever the machine's speed.
    let c =
        TestCluster::start_opts(&[], &[], &["--rate-limit", "0.001", "--rate-burst", "3"]).unwrap();
    let alice = c.issue_cert("alice", "developer");
    let bob = c.issue_cert("bob", "developer");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for i in 0..3 {
        rt.block_on(list_nodes(&c, &alice))
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
    }
    let refused = rt.block_on(list_nodes(&c, &alice)).unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let msg = refused.message();
    assert!(msg.contains("alice"), "{msg}");
    assert!(msg.contains("0.001 calls/s, burst 3"), "{msg}");
    assert!(msg.contains("retry in"), "{msg}");
    let retry: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .expect("retry-after-ms metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 900_000 && retry <= 1_000_000, "{retry}");
    // The CLI shows the same.
    let err = c.devctl_as(&alice, &["ls"]).err();
    assert!(
        err.contains("retry in") && err.contains("ResourceExhausted"),
        "{err}"
    );
    // Another identity has its own allowance.
    for _ in 0..3 {
        rt.block_on(list_nodes(&c, &bob)).unwrap();
    }
    // The refusals are audited (the reads that passed are not). Each read
    // of the log is by a new admin: the limit holds for admins too, and a
    // new identity has a full allowance.
    let mut n = 0;
    let mut fresh_admin = || {
        n += 1;
        c.issue_cert(&format!("ops{n}"), "admin")
    };
    let entries = wait_until("alice's refusals audited", Duration::from_secs(20), || {
        let e = audit_as(&c, &fresh_admin(), &["--identity", "alice"]);
        (e.len() >= 2).then_some(e)
    });
    assert_eq!(
        summary(&entries),
        vec![
            row("alice", "ListNodes", "", "RESOURCE_EXHAUSTED"),
            row("alice", "ListContainers", "", "RESOURCE_EXHAUSTED"),
        ]
    );
    assert!(audit_as(&c, &fresh_admin(), &["--identity", "bob"]).is_empty());
}
