//! The scheduler loses nothing it acknowledged: SIGKILL and restart, with
//! and without creates in flight; afterwards the node's inventory brings
//! recorded state in line with the engine.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use devctl_tests::{IMAGE, TestCluster, engine_status, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

fn by_name(list: &Value, name: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed in {list}"))
}

fn kill_and_restart(c: &mut TestCluster) {
    let mut s = c.scheduler.take().unwrap();
    s.signal(Signal::SIGKILL);
    s.wait_exit(Duration::from_secs(10));
    c.start_scheduler().unwrap();
}

#[test]
fn acknowledged_containers_survive_sigkill_with_their_state() {
    let mut c = TestCluster::start(&["a"]);
    for name in ["one", "two", "three"] {
        c.devctl(&["create", name, "--image", IMAGE]).ok();
    }
    c.devctl(&["stop", "two", "-t", "0"]).ok();
    kill_and_restart(&mut c);

    // Listed at once, from the store, before any node reports.
    let list = c.devctl(&["ls", "-o", "json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(
        by_name(&list, "one")["status"]["state"],
        "CONTAINER_STATE_RUNNING"
    );
    assert_eq!(
        by_name(&list, "two")["status"]["state"],
        "CONTAINER_STATE_STOPPED"
    );
    assert_eq!(
        by_name(&list, "three")["status"]["state"],
        "CONTAINER_STATE_RUNNING"
    );

    // The node comes back and operations work again.
    c.wait_nodes_ready(&[c.node("a")]);
    c.devctl(&["start", "two"]).ok();
    assert_eq!(
        engine_status(&c.engine_container("two").unwrap()),
        "running"
    );
}

#[test]
fn changes_made_while_the_scheduler_was_down_are_reconciled_not_destroyed() {
    let mut c = TestCluster::start(&["a"]);
    let node = c.node("a");
    c.devctl(&["create", "kept", "--image", IMAGE]).ok();
    c.devctl(&["create", "gone", "--image", IMAGE]).ok();
    let mut s = c.scheduler.take().unwrap();
    s.signal(Signal::SIGKILL);
    s.wait_exit(Duration::from_secs(10));

    // Meanwhile, by hand on the engine: one container stopped, one removed,
    // and a labelled container the scheduler never heard of.
    let kept = c.engine_container("kept").unwrap();
    let gone = c.engine_container("gone").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["stop", "-t", "0", kept["Id"].as_str().unwrap()]);
    run(&["rm", "-f", gone["Id"].as_str().unwrap()]);
    let stray = format!("{}-stray", c.prefix);
    run(&[
        "create",
        "--name",
        &stray,
        "--label",
        "io.devctl.managed=true",
        "--label",
        &format!("io.devctl.node={node}"),
        "--label",
        "io.devctl.id=00000000-0000-0000-0000-000000000000",
        "--label",
        "io.devctl.name=stray",
        IMAGE,
    ]);

    c.start_scheduler().unwrap();
    wait_until("inventory reconciled", Duration::from_secs(30), || {
        let list = c.devctl(&["ls", "-o", "json"]).json();
        (by_name(&list, "kept")["status"]["state"] == "CONTAINER_STATE_STOPPED"
            && by_name(&list, "gone")["status"]["state"] == "CONTAINER_STATE_FAILED")
            .then_some(())
    });
    let gone = c.devctl(&["get", "gone", "-o", "json"]).json();
    assert!(
        gone["status"]["lastError"]
            .as_str()
            .unwrap()
            .contains("outside devctl"),
        "{gone}"
    );
    // Reported, not destroyed.
    assert!(c.engine_container("stray").is_some());
    wait_until(
        "the stray container to be reported",
        Duration::from_secs(30),
        || {
            let log = c.scheduler.as_ref().unwrap().log();
            log.contains("unknown to the scheduler").then_some(())
        },
    );
    // A failed container can still be removed.
    c.devctl(&["rm", "gone"]).ok();
}

#[test]
fn sigkill_in_the_middle_of_concurrent_creates_loses_no_acknowledged_container() {
    let mut c = TestCluster::start(&["a"]);
    let acked = Arc::new(AtomicUsize::new(0));
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let c = &c;
                let acked = Arc::clone(&acked);
                scope.spawn(move || {
                    let name = format!("burst-{i}");
                    let ok = c
                        .devctl(&["create", &name, "--image", IMAGE])
                        .status
                        .success();
                    if ok {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    (name, ok)
                })
            })
            .collect();
        wait_until("some creates acknowledged", Duration::from_secs(60), || {
            (acked.load(Ordering::SeqCst) >= 2).then_some(())
        });
        c.scheduler.as_ref().unwrap().signal(Signal::SIGKILL);
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    c.scheduler
        .take()
        .unwrap()
        .wait_exit(Duration::from_secs(10));
    let acknowledged = results.iter().filter(|(_, ok)| *ok).count();
    eprintln!(
        "{acknowledged} of {} creates acknowledged around the kill",
        results.len()
    );
    assert!(
        acknowledged < results.len(),
        "the kill came after every create: nothing was in flight"
    );
    c.start_scheduler().unwrap();
    c.wait_nodes_ready(&[c.node("a")]);

    // Once the node's inventory is in, nothing is pending any more.
    let list = wait_until("no pending containers", Duration::from_secs(30), || {
        let list = c.devctl(&["ls", "-o", "json"]).json();
        list.as_array()
            .unwrap()
            .iter()
            .all(|x| x["status"]["state"] != "CONTAINER_STATE_PENDING")
            .then_some(list)
    });
    for (name, ok) in &results {
        if *ok {
            assert_eq!(
                by_name(&list, name)["status"]["state"],
                "CONTAINER_STATE_RUNNING",
                "acknowledged {name}"
            );
        }
    }
    // Every engine container is known to the scheduler, none twice.
    let engine = c.engine_containers();
    let mut names: Vec<String> = engine
        .iter()
        .map(|e| {
            e["Config"]["Labels"]["io.devctl.name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicates on the engine: {names:?}");
    for name in &names {
        let rec = by_name(&list, name);
        assert_eq!(rec["status"]["state"], "CONTAINER_STATE_RUNNING", "{rec}");
    }
    // Every recorded container is on the engine, or marked failed with why.
    for rec in list.as_array().unwrap() {
        let name = rec["name"].as_str().unwrap();
        if !names.iter().any(|n| n == name) {
            assert_eq!(rec["status"]["state"], "CONTAINER_STATE_FAILED", "{rec}");
            assert!(
                rec["status"]["lastError"]
                    .as_str()
                    .unwrap()
                    .contains("interrupted"),
                "{rec}"
            );
        }
    }
}
