//! Nodes over time: a lost agent makes its containers `lost` and its return
//! reconciles them; cordon, uncordon and drain; admission by live memory;
//! and devctl containers nobody recorded are removed after a grace period.

use std::{process::Command, time::Duration};

use devctl_tests::{IMAGE, TestCluster, engine_status, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

fn get(c: &TestCluster, name: &str) -> Value {
    c.devctl(&["get", name, "-o", "json"]).json()
}

fn wait_for(c: &TestCluster, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_until(&format!("{name}: {what}"), Duration::from_secs(30), || {
        let v = get(c, name);
        f(&v).then_some(v)
    })
}

#[test]
fn a_lost_agent_makes_its_containers_lost_and_its_return_reconciles_them() {
    let mut c = TestCluster::start_opts(&["a"], &[], &["--node-timeout", "2s"]).unwrap();
    let node = c.node("a");
    c.devctl(&["create", "alive", "--image", IMAGE]).ok();
    c.devctl(&["create", "gone", "--image", IMAGE]).ok();

    c.agent("a").signal(Signal::SIGKILL);
    c.wait_node_state(&node, "down");
    for name in ["alive", "gone"] {
        let v = wait_for(&c, name, "lost", |v| {
            v["status"]["state"] == "CONTAINER_STATE_LOST"
        });
        assert!(
            v["status"]["lastError"].as_str().unwrap().contains("down"),
            "{v}"
        );
    }
    let evs = c.events(&["--container", "alive"]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_CONTAINER_LOST" && e["reason"] == "node_lost"),
        "{evs:?}"
    );
    // While the node is away, one of its containers disappears.
    let id = c.engine_container("gone").unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let rm = Command::new("docker")
        .args(["rm", "-f", &id])
        .output()
        .unwrap();
    assert!(rm.status.success());

    c.start_agent("a", &[]).unwrap();
    c.wait_node_state(&node, "ready");
    let alive = wait_for(&c, "alive", "running again", |v| {
        v["status"]["state"] == "CONTAINER_STATE_RUNNING"
    });
    assert!(alive["status"].get("lastError").is_none(), "{alive}");
    let gone = wait_for(&c, "gone", "failed", |v| {
        v["status"]["state"] == "CONTAINER_STATE_FAILED"
    });
    assert_eq!(
        gone["status"]["stopReason"], "STOP_REASON_NODE_LOST",
        "{gone}"
    );
    // Nothing was deleted: both records remain.
    assert_eq!(
        c.devctl(&["ls", "-o", "json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn cordon_stops_placements_and_drain_stops_containers_that_start_elsewhere_with_their_workspace() {
    let c = TestCluster::start(&["a", "b"]);
    let (a, b) = (c.node("a"), c.node("b"));
    let node_of = |name: &str| {
        get(&c, name)["status"]["node"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let n = c.devctl(&["nodes", "cordon", &a, "-o", "json"]).json();
    assert_eq!(n["cordoned"], true, "{n}");
    let err = c
        .devctl(&["create", "pinned", "--image", IMAGE, "--node", &a])
        .err();
    assert!(err.contains("FailedPrecondition"), "{err}");
    assert!(err.contains(&format!("{a}: cordoned")), "{err}");
    // Both nodes are empty: spread would pick a (first by name), but a is
    // cordoned.
    c.devctl(&["create", "w1", "--image", IMAGE]).ok();
    c.devctl(&["create", "w2", "--image", IMAGE]).ok();
    assert_eq!(node_of("w1"), b);
    assert_eq!(node_of("w2"), b);
    let table = c.devctl(&["nodes"]).ok().stdout;
    assert!(table.contains("cordoned"), "{table}");

    c.devctl(&["nodes", "uncordon", &a]).ok();
    c.devctl(&["stop", "w2", "-t", "0"]).ok();
    let drained = c
        .devctl(&["nodes", "drain", &b, "-t", "1", "-o", "json"])
        .json();
    assert_eq!(drained["stopped"], serde_json::json!(["w1"]), "{drained}");
    assert_eq!(drained["node"]["cordoned"], true, "{drained}");
    let w1 = get(&c, "w1");
    assert_eq!(w1["status"]["state"], "CONTAINER_STATE_STOPPED", "{w1}");
    assert_eq!(w1["status"]["stopReason"], "STOP_REASON_DRAINED", "{w1}");
    // A container stopped before the drain keeps its own reason.
    assert_eq!(get(&c, "w2")["status"]["stopReason"], "STOP_REASON_MANUAL");
    let evs = c.events(&["--container", "w1"]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_CONTAINER_STOPPED" && e["reason"] == "drained"),
        "{evs:?}"
    );

    // b is cordoned, and w1's workspace lives there: it is not started
    // elsewhere without it. Once the workspace is moved to a, it starts
    // there, same definition.
    let err = c.devctl(&["start", "w1"]).err();
    assert!(
        err.contains("FailedPrecondition") && err.contains("devctl workspaces move w1 --to NODE"),
        "{err}"
    );
    c.devctl(&["workspaces", "move", "w1", "--to", &a]).ok();
    let started = c.devctl(&["start", "w1", "-o", "json"]).json();
    assert_eq!(
        started["status"]["state"], "CONTAINER_STATE_RUNNING",
        "{started}"
    );
    assert_eq!(started["status"]["node"], a.as_str(), "{started}");
    assert_eq!(started["id"], w1["id"]);
    let engine = c.engine_container("w1").expect("on the engine once");
    assert_eq!(engine["Config"]["Labels"]["io.devctl.node"], a.as_str());
    assert_eq!(engine_status(&engine), "running");

    // Cordoning leaves running containers alone, and starting a running
    // one is a no-op: it is not moved.
    c.devctl(&["nodes", "cordon", &a]).ok();
    let again = c.devctl(&["start", "w1", "-o", "json"]).json();
    assert_eq!(again["status"]["node"], a.as_str(), "{again}");
    let same = c.engine_container("w1").expect("on the engine once");
    assert_eq!(same["Id"], engine["Id"]);
}

#[test]
fn a_node_over_the_memory_threshold_is_refused_with_that_reason() {
    let mut c = TestCluster::start(&["a"]);
    c.start_agent("hot", &["--test-memory-used-percent", "95"])
        .unwrap();
    let hot = c.node("hot");
    c.wait_nodes_ready(std::slice::from_ref(&hot));
    // The usage report arrives with the stats, a moment after readiness.
    wait_until("hot node's usage", Duration::from_secs(20), || {
        let n = c.devctl(&["nodes", &hot, "-o", "json"]).json();
        n["usage"].get("memoryUsedBytes").map(|_| ())
    });
    let err = c
        .devctl(&["create", "x", "--image", IMAGE, "--node", &hot])
        .err();
    assert!(err.contains("ResourceExhausted"), "{err}");
    assert!(
        err.contains(&format!("{hot}: memory 95% used > 90% threshold")),
        "{err}"
    );
    let placed = c
        .devctl(&["create", "x", "--image", IMAGE, "-o", "json"])
        .json();
    assert_eq!(placed["status"]["node"], c.node("a").as_str());
}

#[test]
fn unknown_devctl_containers_are_reported_then_removed_after_the_grace_period() {
    let c = TestCluster::start_opts(
        &["a"],
        &[],
        &["--reconcile-interval", "1s", "--orphan-grace", "2s"],
    )
    .unwrap();
    let node = c.node("a");
    c.devctl(&["create", "known", "--image", IMAGE]).ok();
    let id = uuid::Uuid::new_v4().to_string();
    let run = Command::new("docker")
        .args(["run", "-d", "--init"])
        .args(["--label", "io.devctl.managed=true"])
        .args(["--label", &format!("io.devctl.node={node}")])
        .args(["--label", &format!("io.devctl.id={id}")])
        .args(["--label", "io.devctl.name=stray"])
        .args([IMAGE, "sleep", "600"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    wait_until(
        "the stray container removed",
        Duration::from_secs(30),
        || c.engine_container("stray").is_none().then_some(()),
    );
    let evs = c.events(&["--node", &node]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_CONTAINER_REMOVED"
                && e["reason"] == "unknown_container"
                && e["container"] == "stray"),
        "{evs:?}"
    );
    assert_eq!(
        get(&c, "known")["status"]["state"],
        "CONTAINER_STATE_RUNNING"
    );
    assert_eq!(
        engine_status(&c.engine_container("known").unwrap()),
        "running"
    );
}
