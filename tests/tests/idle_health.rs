//! The scheduler's own stops: an idle container is stopped (an exec session
//! keeps it in use), and a failing health check restarts a container once,
//! then marks it failed and leaves it stopped.

use std::time::Duration;

use devctl_tests::{IMAGE, TestCluster, engine_status, wait_until};
use serde_json::Value;

fn get(c: &TestCluster, name: &str) -> Value {
    c.devctl(&["get", name, "-o", "json"]).json()
}

/// An int32 field of canonical proto JSON: a number, or left out when 0.
fn count_of(v: &Value) -> i64 {
    match v {
        Value::Null => 0,
        n => n.as_i64().unwrap_or_else(|| panic!("not an integer: {n}")),
    }
}

fn wait_for(c: &TestCluster, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_until(&format!("{name}: {what}"), Duration::from_secs(60), || {
        let v = get(c, name);
        f(&v).then_some(v)
    })
}

#[test]
fn idle_containers_stop_with_reason_inactivity_and_a_session_keeps_one_in_use() {
    let c = TestCluster::start_opts(&["a"], &[], &["--idle-timeout", "3s"]).unwrap();
    c.devctl(&["create", "idle", "--image", IMAGE]).ok();
    c.devctl(&["create", "busy", "--image", IMAGE]).ok();
    let v = get(&c, "busy");
    assert_eq!(v["status"]["idleTimeoutSeconds"], "3", "{v}");
    let table = c.devctl(&["get", "busy"]).ok().stdout;
    assert!(table.contains("Idle:"), "{table}");

    // A session twice as long as the idle window: the container stays up
    // through it (a stop would kill the session's process).
    let exec = c.devctl(&["exec", "busy", "--", "sleep", "6"]);
    assert!(exec.status.success(), "exec ended early: {exec:?}");
    let after = get(&c, "busy");
    assert_eq!(
        after["status"]["state"], "CONTAINER_STATE_RUNNING",
        "{after}"
    );

    let idle = wait_for(&c, "idle", "stopped", |v| {
        v["status"]["state"] == "CONTAINER_STATE_STOPPED"
    });
    assert_eq!(
        idle["status"]["stopReason"], "STOP_REASON_INACTIVITY",
        "{idle}"
    );
    assert_eq!(
        idle["spec"]["desiredState"], "DESIRED_STATE_STOPPED",
        "{idle}"
    );
    // Stopped, not removed: the workspace stays on the engine.
    assert_eq!(
        engine_status(&c.engine_container("idle").unwrap()),
        "exited"
    );
    let evs = c.events(&["--container", "idle"]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_CONTAINER_STOPPED" && e["reason"] == "inactivity"),
        "{evs:?}"
    );
    // Once the session is over, the busy one goes idle too.
    let busy = wait_for(&c, "busy", "stopped", |v| {
        v["status"]["state"] == "CONTAINER_STATE_STOPPED"
    });
    assert_eq!(
        busy["status"]["stopReason"], "STOP_REASON_INACTIVITY",
        "{busy}"
    );
}

#[test]
fn a_failing_health_check_restarts_once_then_marks_the_container_failed() {
    let c = TestCluster::start(&["a"]);
    let health = [
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--health-timeout",
        "2s",
    ];
    let mut args = vec!["create", "sick", "--image", IMAGE, "--health-cmd", "exit 1"];
    args.extend(health);
    c.devctl(&args).ok();
    let mut args = vec!["create", "fine", "--image", IMAGE, "--health-cmd", "true"];
    args.extend(health);
    c.devctl(&args).ok();

    let sick = wait_for(&c, "sick", "failed", |v| {
        v["status"]["state"] == "CONTAINER_STATE_FAILED"
    });
    assert_eq!(
        sick["status"]["stopReason"], "STOP_REASON_UNHEALTHY",
        "{sick}"
    );
    assert_eq!(sick["status"]["healthRestarts"], 1, "{sick}");
    assert_eq!(
        sick["spec"]["desiredState"], "DESIRED_STATE_STOPPED",
        "{sick}"
    );
    assert!(
        sick["status"]["lastError"]
            .as_str()
            .unwrap()
            .contains("health check"),
        "{sick}"
    );
    // Left stopped for inspection.
    assert_eq!(
        engine_status(&c.engine_container("sick").unwrap()),
        "exited"
    );
    let evs = c.events(&["--container", "sick"]);
    let count = |ty: &str, reason: &str| {
        evs.iter()
            .filter(|e| e["type"] == ty && e["reason"] == reason)
            .count()
    };
    assert!(
        count("EVENT_TYPE_CONTAINER_UNHEALTHY", "unhealthy") >= 2,
        "{evs:?}"
    );
    assert_eq!(
        count("EVENT_TYPE_CONTAINER_RESTARTED", "unhealthy"),
        1,
        "{evs:?}"
    );
    assert_eq!(
        count("EVENT_TYPE_CONTAINER_STOPPED", "unhealthy"),
        1,
        "{evs:?}"
    );

    let fine = wait_for(&c, "fine", "healthy", |v| {
        v["status"]["health"] == "HEALTH_STATUS_HEALTHY"
    });
    assert_eq!(fine["status"]["state"], "CONTAINER_STATE_RUNNING", "{fine}");
    assert_eq!(count_of(&fine["status"]["healthRestarts"]), 0, "{fine}");

    // A user's start gives it a fresh chance (and a fresh restart).
    let again = c.devctl(&["start", "sick", "-o", "json"]).json();
    assert_eq!(
        again["status"]["state"], "CONTAINER_STATE_RUNNING",
        "{again}"
    );
    assert_eq!(count_of(&again["status"]["healthRestarts"]), 0, "{again}");
}
