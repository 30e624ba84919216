//! The agent protects its engine and tells the truth about what it started:
//! a hundred concurrent removals reach the engine a few at a time (and all
//! succeed), and a command that exits at once is not reported as running.

use std::time::{Duration, Instant};

use devctl_tests::{IMAGE, TestCluster, wait_until};
use serde_json::Value;

/// A container's observed state (`status.state`, e.g.
/// `CONTAINER_STATE_RUNNING`); always set on a recorded container.
fn state(c: &Value) -> &str {
    c["status"]["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no status.state: {c}"))
}

/// Containers of the load test.
const MANY: usize = 100;

/// The highest `peak=N` the agent logged for engine operations in flight.
fn logged_peak(log: &str) -> Option<usize> {
    log.lines()
        .filter(|l| l.contains("engine operations in flight: new peak"))
        .filter_map(|l| {
            let rest = &l[l.find("peak=")? + "peak=".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
}

/// Scheduler flags for containers without limits, so a test host of two
/// cores takes more than the eight the default CPU limit allows.
const NO_DEFAULT_LIMITS: &[&str] = &["--default-cpus", "0", "--default-memory", "0"];

#[test]
fn a_hundred_concurrent_removes_reach_the_engine_at_most_eight_at_a_time() {
    // No settle wait: this test is about removals, and creates are many
    // (more than this 2-core host may reserve with the default limits).
    let mut c = TestCluster::start_opts(&["a"], &["--create-settle", "0s"], NO_DEFAULT_LIMITS)
        .expect("cluster");
    let names: Vec<String> = (0..MANY).map(|i| format!("many-{i:03}")).collect();

    let started = Instant::now();
    std::thread::scope(|s| {
        for part in names.chunks(MANY / 10) {
            let c = &c;
            s.spawn(move || {
                for name in part {
                    c.devctl(&["create", name, "--image", IMAGE]).ok();
                }
            });
        }
    });
    eprintln!("created {MANY} containers in {:?}", started.elapsed());
    assert_eq!(c.engine_containers().len(), MANY);

    let started = Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let c = &c;
                s.spawn(move || c.devctl(&["rm", "--force", name]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "removed {MANY} containers concurrently in {:?}",
        started.elapsed()
    );
    for (name, r) in names.iter().zip(results) {
        assert!(r.status.success(), "rm --force {name} failed: {}", r.stderr);
    }
    wait_until("no engine container left", Duration::from_secs(30), || {
        c.engine_containers().is_empty().then_some(())
    });
    let listed = c.devctl(&["ls", "-o", "json"]).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // The agent's own count of operations in flight: the bound held, and
    // the removals did run side by side up to it.
    let peak =
        logged_peak(&c.agent("a").log()).expect("the agent logs its peak of engine operations");
    assert!(
        peak <= 8,
        "{peak} engine operations ran at once; the limit is 8"
    );
    assert!(peak >= 2, "the removals ran one at a time (peak {peak})");
}

#[test]
fn the_engine_operation_limit_is_configurable() {
    let mut c = TestCluster::start_opts(
        &["a"],
        &["--max-engine-ops", "2", "--create-settle", "0s"],
        NO_DEFAULT_LIMITS,
    )
    .expect("cluster");
    let names: Vec<String> = (0..12).map(|i| format!("few-{i:02}")).collect();
    std::thread::scope(|s| {
        for name in &names {
            let c = &c;
            s.spawn(move || c.devctl(&["create", name, "--image", IMAGE]).ok());
        }
    });
    std::thread::scope(|s| {
        for name in &names {
            let c = &c;
            s.spawn(move || c.devctl(&["rm", "--force", name]).ok());
        }
    });
    assert!(c.engine_containers().is_empty());
    let peak = logged_peak(&c.agent("a").log()).expect("the agent logs its peak");
    assert_eq!(peak, 2, "with --max-engine-ops 2");
}

#[test]
fn a_command_that_exits_at_once_is_not_reported_running() {
    let c = TestCluster::start(&["a"]);

    let quick = c
        .devctl(&[
            "create", "quick", "--image", IMAGE, "-o", "json", "--", "false",
        ])
        .json();
    assert_ne!(state(&quick), "CONTAINER_STATE_RUNNING", "{quick}");
    assert_eq!(quick["status"]["exitCode"], 1, "{quick}");
    let why = quick["status"]["lastError"].as_str().unwrap_or_default();
    assert!(why.contains("exited right after it started"), "{quick}");
    assert!(why.contains("exit code 1"), "{quick}");

    // Its record says the same afterwards, and the table shows it.
    let got = c.devctl(&["get", "quick", "-o", "json"]).json();
    assert_ne!(state(&got), "CONTAINER_STATE_RUNNING", "{got}");

    let code = c
        .devctl(&[
            "create", "three", "--image", IMAGE, "-o", "json", "--", "sh", "-c", "exit 3",
        ])
        .json();
    assert_ne!(state(&code), "CONTAINER_STATE_RUNNING", "{code}");
    assert_eq!(code["status"]["exitCode"], 3, "{code}");

    // A command that stays up is running, and no error is recorded.
    let up = c
        .devctl(&["create", "up", "--image", IMAGE, "-o", "json"])
        .json();
    assert_eq!(state(&up), "CONTAINER_STATE_RUNNING", "{up}");
    assert_eq!(
        up["status"]["lastError"].as_str().unwrap_or_default(),
        "",
        "{up}"
    );
}

fn docker(args: &[&str]) {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dropped_engine_events_resync_the_node_and_are_recorded() {
    // A queue of one event: any burst while the bus stalls overflows it.
    let c = TestCluster::start_with(&["a"], &["--event-queue", "1"]).expect("cluster");
    let created = c
        .devctl(&["create", "box", "--image", IMAGE, "-o", "json"])
        .json();
    let runtime_id = created["status"]["runtimeId"].as_str().unwrap().to_string();

    // The bus stalls: the agent's publishes wait for their acknowledgement
    // while the engine's events go on (changes made outside devctl).
    c.nats.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    for _ in 0..3 {
        docker(&["stop", "-t", "0", &runtime_id]);
        docker(&["start", &runtime_id]);
    }
    docker(&["stop", "-t", "0", &runtime_id]);
    c.nats.proc.signal(nix::sys::signal::Signal::SIGCONT);

    let resync = wait_until("a resync in the history", Duration::from_secs(45), || {
        c.events(&[]).into_iter().find(|e| {
            e["type"] == "EVENT_TYPE_NODE_RESYNCED" && e["reason"] == "events_dropped_resync"
        })
    });
    assert_eq!(resync["node"], c.node("a").as_str(), "{resync}");
    // The record follows the engine again.
    wait_until(
        "the record to match the engine",
        Duration::from_secs(30),
        || {
            let engine = c.engine_container("box")?;
            let want = if devctl_tests::engine_status(&engine) == "running" {
                "CONTAINER_STATE_RUNNING"
            } else {
                "CONTAINER_STATE_STOPPED"
            };
            (c.devctl(&["get", "box", "-o", "json"]).json()["status"]["state"] == want)
                .then_some(())
        },
    );
}
