//! Restarts of the parts the agents depend on: a scheduler restarted with
//! SIGKILL does not take its nodes for down (they are `unknown` until they
//! report), a removal on a node that is really down is recorded and carried
//! out when the node returns, and a bus restarted with SIGKILL loses
//! neither the nodes nor the event history.

use std::time::Duration;

use devctl_tests::{IMAGE, TestCluster, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

fn kill_scheduler(c: &mut TestCluster) {
    let mut s = c.scheduler.take().expect("scheduler runs");
    s.signal(Signal::SIGKILL);
    s.wait_exit(Duration::from_secs(10));
}

fn node_of(c: &TestCluster, name: &str) -> String {
    c.devctl(&["get", name, "-o", "json"]).json()["status"]["node"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn right_after_a_scheduler_restart_creates_and_removals_reach_the_nodes() {
    // Heartbeats every 3 s: a restarted scheduler hears from each node only
    // up to 3 s after its port answers, so what it does meanwhile counts.
    let mut c = TestCluster::start_with(&["a", "b"], &["--heartbeat-interval", "3s"]).unwrap();
    let (a, b) = (c.node("a"), c.node("b"));
    c.devctl(&["create", "on-a", "--image", IMAGE, "--node", &a])
        .ok();
    c.devctl(&["create", "on-b", "--image", IMAGE, "--node", &b])
        .ok();

    kill_scheduler(&mut c);
    c.start_scheduler().unwrap();
    // As soon as the port answers: nothing is down.
    let nodes = c.devctl(&["nodes", "-o", "json"]).json();
    for n in nodes.as_array().unwrap() {
        assert!(
            n["state"] == "NODE_STATE_UNKNOWN" || n["state"] == "NODE_STATE_READY",
            "a node heard from before the restart is not down: {n}"
        );
    }
    let created = c
        .devctl(&[
            "create", "fresh", "--image", IMAGE, "--node", &b, "-o", "json",
        ])
        .ok()
        .json();
    assert_eq!(
        created["status"]["state"], "CONTAINER_STATE_RUNNING",
        "{created}"
    );
    c.devctl(&["rm", "on-a", "--force"]).ok();
    wait_until("on-a gone from the engine", Duration::from_secs(20), || {
        c.engine_container("on-a").is_none().then_some(())
    });
    assert!(c.devctl(&["get", "on-a"]).err().contains("NotFound"));
    // No node was ever reported down, and the other container still runs.
    let down: Vec<Value> = c
        .events(&[])
        .into_iter()
        .filter(|e| e["type"] == "EVENT_TYPE_NODE_DOWN" && (e["node"] == a || e["node"] == b))
        .collect();
    assert!(down.is_empty(), "{down:?}");
    assert_eq!(
        c.devctl(&["get", "on-b", "-o", "json"]).json()["status"]["state"],
        "CONTAINER_STATE_RUNNING"
    );
    let log = c.scheduler.as_ref().unwrap().log();
    assert!(!log.contains("forgetting"), "{log}");
}

#[test]
fn a_removal_on_a_down_node_is_carried_out_when_the_node_returns() {
    let mut c = TestCluster::start_opts(&["a"], &[], &["--node-timeout", "2s"]).unwrap();
    let a = c.node("a");
    c.devctl(&["create", "box", "--image", IMAGE]).ok();
    assert_eq!(node_of(&c, "box"), a);

    c.agent("a").signal(Signal::SIGKILL);
    c.wait_node_state(&a, "down");
    // Without --force: refused, nothing changes.
    let err = c.devctl(&["rm", "box"]).err();
    assert!(
        err.contains("FailedPrecondition") && err.contains("--force"),
        "{err}"
    );
    let out = c.devctl(&["rm", "box", "--force"]).ok().stdout;
    assert!(
        out.contains(&format!(
            "node {a} is down; the container will be removed when it returns"
        )),
        "{out}"
    );
    // Recorded, not forgotten: the engine still has it, the record says so.
    assert!(c.engine_container("box").is_some());
    let v = c.devctl(&["get", "box", "-o", "json"]).json();
    assert_eq!(v["spec"]["desiredState"], "DESIRED_STATE_REMOVED", "{v}");
    let ls = c.devctl(&["ls"]).ok().stdout;
    assert!(ls.contains("removing (node down)"), "{ls}");
    // Its name stays taken, and it cannot be started meanwhile.
    let err = c.devctl(&["create", "box", "--image", IMAGE]).err();
    assert!(err.contains("AlreadyExists"), "{err}");
    let err = c.devctl(&["start", "box"]).err();
    assert!(err.contains("being removed"), "{err}");
    // A second rm says the same, and changes nothing.
    c.devctl(&["rm", "box", "--force"]).ok();
    let evs = c.events(&["--container", "box"]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_CONTAINER_REMOVAL_PENDING"
                && e["reason"] == "removal_pending"),
        "{evs:?}"
    );

    c.start_agent("a", &[]).unwrap();
    wait_until(
        "box removed from the engine",
        Duration::from_secs(20),
        || c.engine_container("box").is_none().then_some(()),
    );
    // The record goes once the agent's reply arrives (after the engine
    // removal): poll, it may still be there for a moment.
    wait_until("box's record gone", Duration::from_secs(10), || {
        let r = c.devctl(&["get", "box"]);
        (!r.status.success() && r.stderr.contains("NotFound")).then_some(())
    });
    // The name is free again.
    c.devctl(&["create", "box", "--image", IMAGE]).ok();
}

#[test]
fn a_bus_killed_and_restarted_keeps_nodes_commands_and_history() {
    let mut c = TestCluster::start(&["a", "b"]);
    let (a, b) = (c.node("a"), c.node("b"));
    c.devctl(&["create", "before", "--image", IMAGE]).ok();
    let before = c.events(&["--container", "before"]);
    assert!(!before.is_empty());

    c.restart_nats().unwrap();
    // Within 45 s: both nodes ready, create and exec work.
    wait_until(
        "both nodes ready and a create works",
        Duration::from_secs(45),
        || {
            let nodes = c.devctl(&["nodes", "-o", "json"]);
            let nodes: Value = serde_json::from_str(&nodes.stdout).ok()?;
            let ready = |n: &str| {
                nodes.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|x| x["name"] == n && x["state"] == "NODE_STATE_READY")
                })
            };
            if !(ready(&a) && ready(&b)) {
                return None;
            }
            c.devctl(&["create", "after", "--image", IMAGE])
                .status
                .success()
                .then_some(())
        },
    );
    let out = wait_until("exec works", Duration::from_secs(20), || {
        let r = c.devctl(&["exec", "after", "--", "echo", "hello"]);
        r.status.success().then_some(r.stdout)
    });
    assert_eq!(out.trim(), "hello");
    // The history from before the restart is still there.
    let again = c.events(&["--container", "before"]);
    assert!(again.len() >= before.len(), "{before:?} vs {again:?}");
    assert_eq!(again[0]["sequence"], before[0]["sequence"]);
}
