//! Where usage samples come from and how long they are served: the agent
//! reads cgroup files (under a configurable root) and asks the engine only
//! for containers whose files it cannot find; the scheduler keeps samples by
//! container id and judges them by when it received them, not by the
//! agent's clock.

use std::{fs, path::Path, time::Duration};

use devctl_tests::{IMAGE, TestCluster, wait_until};
use serde_json::Value;

/// An int64 field of canonical proto JSON (a string there), as a number.
fn int64(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an int64 in proto JSON: {v}"))
}

fn devctl_id(c: &TestCluster, name: &str) -> String {
    c.devctl(&["get", name, "-o", "json"]).json()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A cgroup v1 tree (cgroupfs driver) for engine container `id` with
/// figures no real container has.
fn fake_cgroup_v1(root: &Path, id: &str) {
    let write = |controller: &str, file: &str, content: &str| {
        let dir = root.join(controller).join("docker").join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(file), content).unwrap();
    };
    write("memory", "memory.usage_in_bytes", "123456789\n");
    write("memory", "memory.limit_in_bytes", "9223372036854771712\n");
    write("memory", "memory.stat", "total_inactive_file 6789\n");
    write("pids", "pids.current", "4242\n");
    // Written last: the agent looks for this file first.
    write("cpuacct", "cpuacct.usage", "1000\n");
}

#[test]
fn samples_come_from_the_cgroup_root_and_from_the_engine_where_it_has_no_files() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("cgroup");
    fs::create_dir_all(&root).unwrap();
    let root_arg = root.to_str().unwrap().to_string();
    let c = TestCluster::start_with(&["a"], &["--cgroup-root", &root_arg]).unwrap();
    c.devctl(&["create", "sampled", "--image", IMAGE]).ok();
    // No files for it under the root: the engine's figures.
    let from_engine = wait_until("a sample from the engine", Duration::from_secs(20), || {
        c.stats_sample("sampled")
    });
    let pids = int64(&from_engine["pids"]);
    assert!((1..100).contains(&pids), "{from_engine}");
    // Its files appear under the root: read from there from then on.
    let engine_id = c.engine_container("sampled").unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    fake_cgroup_v1(&root, &engine_id);
    let from_files = wait_until(
        "a sample from the cgroup files",
        Duration::from_secs(20),
        || c.stats_sample("sampled").filter(|s| s["pids"] == "4242"),
    );
    assert_eq!(
        int64(&from_files["memoryBytes"]),
        123456789 - 6789,
        "{from_files}"
    );
    // No limit in the files: the node's memory, as the engine reports it.
    let node = c.devctl(&["nodes", &c.node("a"), "-o", "json"]).json();
    assert_eq!(
        from_files["memoryLimitBytes"], node["memoryBytes"],
        "{from_files} {node}"
    );
    assert!(
        int64(&from_engine["memoryBytes"]) < 123456789 - 6789,
        "{from_engine}"
    );
}

#[test]
fn freshness_is_judged_by_the_schedulers_clock() {
    // Node a's clock is two minutes behind, node b's an hour ahead.
    let mut c = TestCluster::start_with(&["a"], &["--test-clock-skew-secs=-120"]).unwrap();
    c.start_agent("b", &["--test-clock-skew-secs=3600"])
        .unwrap();
    c.wait_nodes_ready(&[c.node("b")]);
    c.devctl(&["create", "behind", "--image", IMAGE, "--node", &c.node("a")])
        .ok();
    c.devctl(&["create", "ahead", "--image", IMAGE, "--node", &c.node("b")])
        .ok();
    // A sample two minutes "old" by the agent's clock is fresh: it just came.
    wait_until(
        "samples of both containers",
        Duration::from_secs(20),
        || (c.stats_sample("behind").is_some() && c.stats_sample("ahead").is_some()).then_some(()),
    );
    // A node that stops reporting: its samples go within the freshness
    // window (10 s after the last one arrived), whatever time it wrote on
    // them.
    c.agent("b").signal(nix::sys::signal::Signal::SIGKILL);
    wait_until(
        "the silent node's samples to go",
        Duration::from_secs(20),
        || c.stats_sample("ahead").is_none().then_some(()),
    );
    assert!(c.stats_sample("behind").is_some());
}

#[test]
fn a_new_container_with_a_removed_ones_name_never_shows_its_samples() {
    // Reports every 5 s: a removal lands between two reports.
    let c = TestCluster::start_with(&["a"], &["--stats-interval", "5s"]).unwrap();
    c.devctl(&["create", "reused", "--image", IMAGE]).ok();
    let old_id = devctl_id(&c, "reused");
    wait_until("a sample", Duration::from_secs(20), || {
        c.stats_sample("reused")
            .filter(|s| s["id"] == old_id.as_str())
    });
    c.devctl(&["rm", "reused", "--force"]).ok();
    // Gone with the container, not at the node's next report.
    assert_eq!(
        c.stats_sample("reused"),
        None,
        "a removed container's sample"
    );
    c.devctl(&["create", "reused", "--image", IMAGE]).ok();
    let new_id = devctl_id(&c, "reused");
    assert_ne!(old_id, new_id);
    let fresh = wait_until(
        "the new container's sample",
        Duration::from_secs(20),
        || {
            let s = c.stats_sample("reused");
            if let Some(s) = &s {
                assert_eq!(s["id"], new_id.as_str(), "the old container's sample: {s}");
            }
            s
        },
    );
    assert_eq!(fresh["id"], new_id.as_str());
}
