//! Every state change is an event, kept durably in JetStream: devctl's own
//! operations (attributed to the caller), changes made outside devctl (seen
//! by the agent on the engine's event stream), and node transitions.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use devctl_tests::{IMAGE, TestCluster, bin, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

fn events(c: &TestCluster, extra: &[&str]) -> Vec<Value> {
    c.events(extra)
}

/// An event's sequence number (a uint64: a JSON string).
fn seq(e: &Value) -> u64 {
    e["sequence"]
        .as_str()
        .unwrap_or_else(|| panic!("no sequence: {e}"))
        .parse()
        .unwrap_or_else(|err| panic!("{err}: {e}"))
}

fn has(evs: &[Value], kind: &str, container: &str) -> Option<Value> {
    evs.iter()
        .find(|e| e["type"] == kind && (container.is_empty() || e["container"] == container))
        .cloned()
}

#[test]
fn operations_and_outside_changes_are_events_and_state_follows_the_engine() {
    let c = TestCluster::start(&["a"]);
    let node = c.node("a");
    c.devctl(&["create", "web", "--image", IMAGE]).ok();
    c.devctl(&["stop", "web", "-t", "1"]).ok();
    c.devctl(&["start", "web"]).ok();

    // The agent forwards engine events asynchronously: poll.
    let evs = wait_until("lifecycle events", Duration::from_secs(10), || {
        let evs = events(&c, &["--container", "web"]);
        (evs.iter()
            .filter(|e| e["type"] == "EVENT_TYPE_CONTAINER_STARTED")
            .count()
            == 2)
            .then_some(evs)
    });
    let created = has(&evs, "EVENT_TYPE_CONTAINER_CREATED", "web").expect("created");
    assert_eq!(created["actor"], "admin");
    assert_eq!(created["node"], node.as_str());
    let stopped = has(&evs, "EVENT_TYPE_CONTAINER_STOPPED", "web").expect("stopped");
    assert_eq!(
        (stopped["actor"].as_str(), stopped["reason"].as_str()),
        (Some("admin"), Some("manual"))
    );
    assert!(stopped["exitCode"].is_number(), "{stopped}");
    // Sequence numbers increase.
    let seqs: Vec<u64> = evs.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Killed outside devctl: an event by `system`, and the state follows
    // within 2 s.
    let engine = c.engine_container("web").unwrap();
    let killed_at = Instant::now();
    let out = Command::new("docker")
        .args(["kill", engine["Id"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let got = wait_until(
        "state to follow docker kill",
        Duration::from_secs(2),
        || {
            let g = c.devctl(&["get", "web", "-o", "json"]).json();
            (g["status"]["state"] == "CONTAINER_STATE_FAILED").then_some(g)
        },
    );
    eprintln!("state followed docker kill after {:?}", killed_at.elapsed());
    assert_eq!(got["status"]["exitCode"], 137, "{got}");
    assert!(
        got["status"]["lastError"].as_str().unwrap().contains("137"),
        "{got}"
    );
    let died = wait_until("died event", Duration::from_secs(5), || {
        has(
            &events(&c, &["--container", "web"]),
            "EVENT_TYPE_CONTAINER_DIED",
            "web",
        )
    });
    assert_eq!(
        (died["actor"].as_str(), died["exitCode"].as_i64()),
        (Some("system"), Some(137))
    );

    // Removed: an event by the caller.
    c.devctl(&["rm", "web"]).ok();
    let removed = wait_until("removed event", Duration::from_secs(5), || {
        has(
            &events(&c, &["--container", "web"]),
            "EVENT_TYPE_CONTAINER_REMOVED",
            "web",
        )
    });
    assert_eq!(removed["actor"], "admin");

    // Node events: joined and ready at start, filtered by node.
    let node_evs = events(&c, &["--node", &node]);
    assert!(
        has(&node_evs, "EVENT_TYPE_NODE_JOINED", "").is_some(),
        "{node_evs:?}"
    );
    assert!(
        has(&node_evs, "EVENT_TYPE_NODE_READY", "").is_some(),
        "{node_evs:?}"
    );
    assert!(node_evs.iter().all(|e| e["node"] == node.as_str()));
}

#[test]
fn events_survive_a_scheduler_restart_and_replay_from_a_time_or_sequence() {
    let mut c = TestCluster::start(&["a"]);
    c.devctl(&["create", "one", "--image", IMAGE]).ok();
    let first = wait_until("first container's events", Duration::from_secs(10), || {
        let evs = events(&c, &["--container", "one"]);
        has(&evs, "EVENT_TYPE_CONTAINER_STARTED", "one").map(|_| evs)
    });
    let mut s = c.scheduler.take().unwrap();
    s.signal(Signal::SIGKILL);
    s.wait_exit(Duration::from_secs(10));
    c.start_scheduler().unwrap();
    c.wait_nodes_ready(&[c.node("a")]);

    // Still there after the restart.
    let again = events(&c, &["--container", "one"]);
    assert_eq!(again, first);

    // --from-seq resumes after a known event; --since filters by time.
    let last_seq = seq(first.last().unwrap());
    let marker = std::time::SystemTime::now();
    c.devctl(&["create", "two", "--image", IMAGE]).ok();
    wait_until("second container's events", Duration::from_secs(10), || {
        has(
            &events(&c, &["--container", "two"]),
            "EVENT_TYPE_CONTAINER_STARTED",
            "two",
        )
    });
    let after = events(&c, &["--from-seq", &(last_seq + 1).to_string()]);
    assert!(after.iter().all(|e| seq(e) > last_seq));
    assert!(has(&after, "EVENT_TYPE_CONTAINER_CREATED", "two").is_some());
    assert!(has(&after, "EVENT_TYPE_CONTAINER_CREATED", "one").is_none());
    let since = humantime::format_rfc3339_millis(marker).to_string();
    let recent = events(&c, &["--since", &since, "--container", "two"]);
    assert!(
        has(&recent, "EVENT_TYPE_CONTAINER_CREATED", "two").is_some(),
        "{recent:?}"
    );
    assert!(events(&c, &["--since", &since, "--container", "one"]).is_empty());
}

#[test]
fn follow_streams_new_events_and_nodes_going_down_are_events() {
    let mut c = TestCluster::start_opts(&["a", "b"], &[], &["--node-timeout", "2s"]).unwrap();
    let b = c.node("b");
    let mut follower = Command::new(bin("devctl"))
        .args(["events", "-f", "-o", "json"])
        .env("DEVCTL_SERVER", &c.server)
        .env("DEVCTL_TLS_DIR", c.admin_tls())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // The first event of `kind` about `subject` after sequence `after`.
    let mut wait_for = |kind: &str, subject: &str, after: u64| -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = seen.iter().find(|e: &&Value| {
                e["type"] == kind
                    && (e["container"] == subject || e["node"] == subject)
                    && seq(e) > after
            }) {
                return e.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(e) => seen.push(e),
                Err(_) => panic!("no {kind} for {subject} in {seen:?}"),
            }
        }
    };

    c.devctl(&["create", "live", "--image", IMAGE]).ok();
    assert_eq!(
        wait_for("EVENT_TYPE_CONTAINER_STARTED", "live", 0)["actor"],
        "admin"
    );

    // An agent killed without a word: down after the node timeout.
    c.agent("b").signal(Signal::SIGKILL);
    let down = wait_for("EVENT_TYPE_NODE_DOWN", &b, 0);
    assert_eq!(down["reason"], "heartbeat_timeout");
    c.start_agent("b", &[]).unwrap();
    let ready_again = wait_for("EVENT_TYPE_NODE_READY", &b, seq(&down));
    assert_eq!(ready_again["reason"], "heartbeat");

    follower.kill().unwrap();
    follower.wait().unwrap();
    reader.join().unwrap();
}

#[test]
fn a_late_event_never_overwrites_newer_state() {
    let c = TestCluster::start(&["a"]);
    c.devctl(&["create", "flip", "--image", IMAGE]).ok();
    // Back to back: the stop's engine events may be handled after the start.
    for _ in 0..3 {
        c.devctl(&["stop", "flip", "-t", "0"]).ok();
        c.devctl(&["start", "flip"]).ok();
    }
    // Once every engine event of those operations is handled...
    wait_until("all lifecycle events", Duration::from_secs(15), || {
        let evs = events(&c, &["--container", "flip"]);
        (evs.iter()
            .filter(|e| e["type"] == "EVENT_TYPE_CONTAINER_STARTED")
            .count()
            == 4)
            .then_some(())
    });
    // ...the record still says what the engine says.
    let got = c.devctl(&["get", "flip", "-o", "json"]).json();
    assert_eq!(got["status"]["state"], "CONTAINER_STATE_RUNNING", "{got}");
    let engine = c.engine_container("flip").unwrap();
    assert_eq!(engine["State"]["Status"], "running");
}

/// Publishes `ev` on `node`'s engine-event queue with that agent's own
/// bus identity, as the agent would.
fn publish_engine_event(c: &TestCluster, short: &str, ev: devctl_proto::pb::EngineEvent) {
    use prost::Message;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = devctl_tests::bus_options(&c.agent_tls(short))
            .custom_inbox_prefix(devctl_proto::bus::agent_inbox_prefix(&ev.node))
            .connect(c.nats_url())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        js.publish(
            devctl_proto::bus::engine_events_subject(&ev.node),
            ev.encode_to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    });
}

#[test]
fn an_event_waiting_on_one_node_does_not_hold_up_another_nodes() {
    // A node that does not answer keeps its event waiting for the whole
    // command timeout; the node stays ready meanwhile.
    let mut c = TestCluster::start_opts(
        &["a", "b"],
        &[],
        &["--command-timeout", "30s", "--node-timeout", "120s"],
    )
    .unwrap();
    let (a, b) = (c.node("a"), c.node("b"));
    c.devctl(&["create", "on-a", "--image", IMAGE, "--node", &a])
        .ok();
    c.devctl(&["create", "on-b", "--image", IMAGE, "--node", &b])
        .ok();
    let on_a = c.devctl(&["get", "on-a", "-o", "json"]).json();

    // Agent a hangs; an event for its container arrives: the scheduler asks
    // the hung agent what the container is doing, and waits.
    c.agent("a").signal(Signal::SIGSTOP);
    publish_engine_event(
        &c,
        "a",
        devctl_proto::pb::EngineEvent {
            event_id: "forged-die-1".into(),
            node: a.clone(),
            id: on_a["id"].as_str().unwrap().into(),
            name: "on-a".into(),
            action: "die".into(),
            exit_code: Some(1),
            ..Default::default()
        },
    );
    // Then a container on node b is killed outside devctl: its record
    // follows while a's event still waits (a sequential event loop would
    // handle b's event only after a's timed out).
    let engine = c.engine_container("on-b").unwrap();
    let out = Command::new("docker")
        .args(["kill", engine["Id"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_until(
        "on-b's record to follow docker kill",
        Duration::from_secs(25),
        || {
            (c.devctl(&["get", "on-b", "-o", "json"]).json()["status"]["state"]
                == "CONTAINER_STATE_FAILED")
                .then_some(())
        },
    );
    let still = c.devctl(&["get", "on-a", "-o", "json"]).json();
    assert_eq!(
        still["status"]["state"], "CONTAINER_STATE_RUNNING",
        "a's event was handled first: {still}"
    );
    c.agent("a").signal(Signal::SIGCONT);
}
