//! Leases: every container has one; expiry stops it (never early, within
//! two seconds after), `devctl extend` renews it within the maximum, and a
//! scheduler that was down across an expiry acts on it when it starts.

use std::time::{Duration, SystemTime};

use devctl_tests::{IMAGE, TestCluster, engine_status, wait_until};
use serde_json::Value;

fn expiry(c: &Value) -> SystemTime {
    let text = c["status"]["leaseExpireTime"]
        .as_str()
        .unwrap_or_else(|| panic!("no lease: {c}"));
    humantime::parse_rfc3339(text).unwrap()
}

/// The engine's record of when the container's main process ended.
fn finished_at(c: &TestCluster, name: &str) -> SystemTime {
    let e = c.engine_container(name).expect("on the engine");
    let text = e["State"]["FinishedAt"].as_str().unwrap();
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn wait_state(c: &TestCluster, name: &str, state: &str) -> Value {
    wait_until(&format!("{name} {state}"), Duration::from_secs(30), || {
        let v = c.devctl(&["get", name, "-o", "json"]).json();
        (v["status"]["state"] == state).then_some(v)
    })
}

#[test]
fn an_expired_lease_stops_its_container_on_time_and_extend_renews_it() {
    let c =
        TestCluster::start_opts(&["a"], &[], &["--default-ttl", "1h", "--max-ttl", "2h"]).unwrap();
    let short = c
        .devctl(&[
            "create", "short", "--image", IMAGE, "--ttl", "3s", "-o", "json",
        ])
        .json();
    let long = c
        .devctl(&[
            "create", "long", "--image", IMAGE, "--ttl", "3s", "-o", "json",
        ])
        .json();
    assert_eq!(short["spec"]["ttlSeconds"], "3", "{short}");
    let expires = expiry(&short);
    // Renewed within the maximum: one hour from now.
    let extended = c.devctl(&["extend", "long", "1h", "-o", "json"]).json();
    let renewed = expiry(&extended);
    assert!(
        renewed > expiry(&long) + Duration::from_secs(3500),
        "{extended}"
    );
    let err = c.devctl(&["extend", "long", "3h"]).err();
    assert!(err.contains("InvalidArgument"), "{err}");
    assert!(
        err.contains("ttl_seconds") && err.contains("maximum lease of 2h"),
        "{err}"
    );
    // The table shows the time left.
    let table = c.devctl(&["ls"]).ok().stdout;
    assert!(table.contains("LEASE"), "{table}");

    let stopped = wait_state(&c, "short", "CONTAINER_STATE_STOPPED");
    assert_eq!(
        stopped["status"]["stopReason"], "STOP_REASON_LEASE_EXPIRED",
        "{stopped}"
    );
    assert!(
        stopped["status"].get("leaseExpireTime").is_none(),
        "{stopped}"
    );
    // Never early, and within two seconds of the expiry.
    let ended = finished_at(&c, "short");
    assert!(
        ended >= expires,
        "stopped {ended:?} before expiry {expires:?}"
    );
    let late = ended.duration_since(expires).unwrap();
    assert!(
        late <= Duration::from_secs(2),
        "stopped {late:?} after expiry"
    );
    let evs = c.events(&["--container", "short"]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_CONTAINER_STOPPED"
                && e["reason"] == "lease_expired"
                && e["actor"] == "system"),
        "{evs:?}"
    );
    // The extended one outlived the original expiry.
    let long = c.devctl(&["get", "long", "-o", "json"]).json();
    assert_eq!(long["status"]["state"], "CONTAINER_STATE_RUNNING", "{long}");
    let evs = c.events(&["--container", "long"]);
    assert!(
        evs.iter().any(|e| e["type"] == "EVENT_TYPE_LEASE_EXTENDED"),
        "{evs:?}"
    );

    // A start renews the lease for the container's TTL.
    let started = c.devctl(&["start", "short", "-o", "json"]).json();
    assert!(expiry(&started) > SystemTime::now(), "{started}");
    assert_eq!(
        started["status"]["state"], "CONTAINER_STATE_RUNNING",
        "{started}"
    );
    assert!(started["status"].get("stopReason").is_none(), "{started}");
}

#[test]
fn lease_requests_outside_the_policy_are_refused_by_field() {
    let c =
        TestCluster::start_opts(&["a"], &[], &["--default-ttl", "1h", "--max-ttl", "1h"]).unwrap();
    let err = c
        .devctl(&["create", "forever", "--image", IMAGE, "--ttl", "0"])
        .err();
    assert!(err.contains("InvalidArgument"), "{err}");
    assert!(err.contains("container.spec.ttl_seconds"), "{err}");
    let err = c
        .devctl(&["create", "long", "--image", IMAGE, "--ttl", "2h"])
        .err();
    assert!(err.contains("maximum lease of 1h"), "{err}");
    // Nothing was created.
    assert!(c.engine_containers().is_empty());
    let list = c.devctl(&["ls", "-o", "json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 0);
    // The cluster default applies without --ttl; a stopped container cannot
    // be extended (start renews it).
    let d = c
        .devctl(&["create", "dflt", "--image", IMAGE, "-o", "json"])
        .json();
    assert_eq!(d["spec"]["ttlSeconds"], "3600", "{d}");
    c.devctl(&["stop", "dflt", "-t", "0"]).ok();
    let err = c.devctl(&["extend", "dflt", "10m"]).err();
    assert!(
        err.contains("FailedPrecondition") && err.contains("devctl start"),
        "{err}"
    );
}

#[test]
fn a_scheduler_down_across_an_expiry_acts_on_it_when_it_starts() {
    let mut c = TestCluster::start_opts(&["a"], &[], &["--allow-no-ttl"]).unwrap();
    // The container without a lease first: between the lease's create and
    // the kill there is then nothing but reading its answer, so the lease
    // runs out with the scheduler down even on a loaded machine.
    c.devctl(&["create", "keep", "--image", IMAGE, "--ttl", "0"])
        .ok();
    let lease = c
        .devctl(&[
            "create", "lapse", "--image", IMAGE, "--ttl", "4s", "-o", "json",
        ])
        .json();
    let expires = expiry(&lease);
    c.scheduler
        .take()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    // Wait (by the clock) until the lease has run out with nobody to act.
    wait_until("the lease to run out", Duration::from_secs(20), || {
        (SystemTime::now() > expires + Duration::from_secs(1)).then_some(())
    });
    let engine = c.engine_container("lapse").unwrap();
    assert_eq!(engine_status(&engine), "running");

    c.start_scheduler().unwrap();
    let stopped = wait_state(&c, "lapse", "CONTAINER_STATE_STOPPED");
    assert_eq!(
        stopped["status"]["stopReason"], "STOP_REASON_LEASE_EXPIRED",
        "{stopped}"
    );
    assert_eq!(
        engine_status(&c.engine_container("lapse").unwrap()),
        "exited"
    );
    // No lease: untouched.
    let keep = c.devctl(&["get", "keep", "-o", "json"]).json();
    assert_eq!(keep["status"]["state"], "CONTAINER_STATE_RUNNING", "{keep}");
    assert_eq!(keep["spec"]["ttlSeconds"], "0", "{keep}");
}

#[test]
fn with_the_remove_policy_an_expired_container_is_removed() {
    let c = TestCluster::start_opts(&["a"], &[], &["--lease-expiry", "remove"]).unwrap();
    c.devctl(&["create", "temp", "--image", IMAGE, "--ttl", "2s"])
        .ok();
    c.devctl(&["create", "stays", "--image", IMAGE]).ok();
    wait_until("temp removed", Duration::from_secs(30), || {
        let list = c.devctl(&["ls", "-o", "json"]).json();
        let names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_string())
            .collect();
        (names == ["stays"]).then_some(())
    });
    assert!(c.engine_container("temp").is_none());
    let evs = c.events(&["--container", "temp"]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_CONTAINER_REMOVED"
                && e["reason"] == "lease_expired"
                && e["actor"] == "system"),
        "{evs:?}"
    );
}
