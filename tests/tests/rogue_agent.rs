//! A compromised agent: a NATS client connecting with node a's own
//! certificate, publishing on a's own subjects (all the bus lets it), must
//! not change what the scheduler holds about node b's containers, nor win
//! placement by claiming capacity it did not have when it joined.

use std::time::Duration;

use devctl_proto::{bus, pb};
use devctl_tests::{IMAGE, TestCluster, wait_until};
use prost::Message;
use serde_json::Value;

/// A client on the bus as node `short`'s agent.
struct Rogue {
    rt: tokio::runtime::Runtime,
    client: async_nats::Client,
    node: String,
}

impl Rogue {
    fn connect(c: &TestCluster, short: &str) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let node = c.node(short);
        let client = rt.block_on(async {
            devctl_tests::bus_options(&c.agent_tls(short))
                .custom_inbox_prefix(bus::agent_inbox_prefix(&node))
                .connect(c.nats_url())
                .await
                .unwrap()
        });
        Self { rt, client, node }
    }

    fn engine_event(&self, ev: pb::EngineEvent) {
        self.rt.block_on(async {
            let js = async_nats::jetstream::new(self.client.clone());
            js.publish(
                bus::engine_events_subject(&self.node),
                ev.encode_to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        });
    }

    fn publish(&self, subject: String, msg: &impl Message) {
        self.rt.block_on(async {
            self.client
                .publish(subject, msg.encode_to_vec().into())
                .await
                .unwrap();
            self.client.flush().await.unwrap();
        });
    }
}

fn scheduler_log(c: &TestCluster) -> String {
    c.scheduler.as_ref().expect("scheduler runs").log()
}

fn get(c: &TestCluster, name: &str) -> Value {
    c.devctl(&["get", name, "-o", "json"]).json()
}

#[test]
fn forged_engine_events_about_another_nodes_container_are_dropped() {
    let c = TestCluster::start(&["a", "b"]);
    let (a, b) = (c.node("a"), c.node("b"));
    c.devctl(&["create", "victim", "--image", IMAGE, "--node", &b])
        .ok();
    let before = get(&c, "victim");
    let id = before["id"].as_str().unwrap().to_string();
    let rogue = Rogue::connect(&c, "a");
    // Claims about b's container, on a's own subject: an OOM kill and a
    // death, by id and name; then one under a's node with the victim's
    // name but an id that is no container's.
    for (n, action, id) in [
        (1, "oom", id.as_str()),
        (2, "die", id.as_str()),
        (3, "die", "no-such-container"),
    ] {
        rogue.engine_event(pb::EngineEvent {
            event_id: format!("forged-{n}"),
            node: a.clone(),
            id: id.into(),
            name: "victim".into(),
            action: action.into(),
            exit_code: Some(137),
            time: Some(std::time::SystemTime::now().into()),
            ..Default::default()
        });
    }
    // Either the forgeries reach the history (the bug), or the scheduler
    // says it dropped them (each of the first few is logged).
    let forged = |evs: &[Value]| {
        evs.iter()
            .filter(|e| e["node"] == a.as_str() || e["type"] == "EVENT_TYPE_CONTAINER_DIED")
            .count()
    };
    wait_until(
        "the forged events recorded or dropped",
        Duration::from_secs(15),
        || {
            let evs = c.events(&["--container", "victim"]);
            (forged(&evs) > 0 || scheduler_log(&c).matches("engine event dropped").count() >= 3)
                .then_some(())
        },
    );
    let evs = c.events(&["--container", "victim"]);
    assert_eq!(forged(&evs), 0, "forged events in the history: {evs:?}");
    let after = get(&c, "victim");
    assert_eq!(
        after["status"]["state"], "CONTAINER_STATE_RUNNING",
        "{after}"
    );
    assert_eq!(after["status"]["node"], b.as_str());
    assert_eq!(after["status"]["lastError"], before["status"]["lastError"]);
    // The OOM claim does not colour the container's real death: b's own
    // die is recorded as an exit, not an OOM kill.
    let engine = c.engine_container("victim").unwrap();
    let out = std::process::Command::new("docker")
        .args(["kill", engine["Id"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let died = wait_until("the real death recorded", Duration::from_secs(15), || {
        c.events(&["--container", "victim"])
            .into_iter()
            .find(|e| e["type"] == "EVENT_TYPE_CONTAINER_DIED")
    });
    assert_eq!(died["node"], b.as_str());
    assert_eq!(died["reason"], "exited", "{died}");
    c.devctl(&["rm", "--force", "victim"]).ok();
}

#[test]
fn forged_stats_about_another_nodes_container_are_ignored() {
    let c = TestCluster::start(&["a", "b"]);
    let (a, b) = (c.node("a"), c.node("b"));
    c.devctl(&["create", "victim", "--image", IMAGE, "--node", &b])
        .ok();
    let id = get(&c, "victim")["id"].as_str().unwrap().to_string();
    wait_until("a real sample", Duration::from_secs(15), || {
        c.stats_sample("victim")
    });
    let rogue = Rogue::connect(&c, "a");
    let forged = |node: &str| pb::StatsReport {
        node: Some(pb::NodeStats {
            node: a.clone(),
            time: Some(std::time::SystemTime::now().into()),
            ..Default::default()
        }),
        containers: vec![pb::ContainerStats {
            name: "victim".into(),
            id: id.clone(),
            node: node.into(),
            time: Some(std::time::SystemTime::now().into()),
            cpu_percent: 4242.0,
            memory_bytes: 1 << 40,
            ..Default::default()
        }],
    };
    // Sent again each round, so b's own reports cannot hide a forgery
    // that got through: either it shows, or the scheduler says it ignored
    // it.
    wait_until(
        "the forged sample shown or ignored",
        Duration::from_secs(15),
        || {
            rogue.publish(bus::stats_subject(&a), &forged(&a));
            let sample = c.stats_sample("victim").unwrap_or_default();
            assert_ne!(
                sample["cpuPercent"], 4242.0,
                "forged sample served: {sample}"
            );
            assert_eq!(sample["node"], b.as_str(), "{sample}");
            scheduler_log(&c)
                .contains("stats of a container not on the node ignored")
                .then_some(())
        },
    );
    // A report claiming the container is on b, sent on a's subject, is
    // ignored whole.
    rogue.publish(bus::stats_subject(&a), &forged(&b));
    wait_until("b's sample again", Duration::from_secs(15), || {
        let s = c.stats_sample("victim")?;
        assert_ne!(s["cpuPercent"], 4242.0, "{s}");
        (s["node"] == b.as_str()).then_some(())
    });
    c.devctl(&["rm", "--force", "victim"]).ok();
}

#[test]
fn a_claim_of_4096_cpus_does_not_win_placement_and_is_an_event() {
    let mut c = TestCluster::start_opts(&["a", "b"], &[], &["--node-timeout", "60s"]).unwrap();
    let (a, b) = (c.node("a"), c.node("b"));
    // a holds one container, b none: spread placement prefers b, unless
    // a's claim makes it look nearly empty.
    c.devctl(&[
        "create", "on-a", "--image", IMAGE, "--node", &a, "--cpus", "0.5",
    ])
    .ok();
    // The real agent stops: only the rogue's heartbeats come from a now.
    c.agent("a").signal(nix::sys::signal::Signal::SIGSTOP);
    let rogue = Rogue::connect(&c, "a");
    let claim = pb::Heartbeat {
        node: a.clone(),
        boot_id: "rogue".into(),
        cpus: 4096,
        memory_bytes: 1 << 50,
        time: Some(std::time::SystemTime::now().into()),
        workspaces: true,
        ..Default::default()
    };
    wait_until("a's claim seen", Duration::from_secs(15), || {
        rogue.publish(bus::heartbeat_subject(&a), &claim);
        let n = c.devctl(&["nodes", &a, "-o", "json"]).json();
        (n["cpus"] == 4096).then_some(())
    });
    let out = c
        .devctl(&[
            "create",
            "next",
            "--image",
            IMAGE,
            "--cpus",
            "1",
            "--dry-run",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(
        out["status"]["node"],
        b.as_str(),
        "the claim won placement: {out}"
    );
    let grew = wait_until("a capacity event for a", Duration::from_secs(15), || {
        c.events(&["--node", &a])
            .into_iter()
            .find(|e| e["type"] == "EVENT_TYPE_NODE_CAPACITY_CHANGED")
    });
    assert_eq!(grew["actor"], "system", "{grew}");
    assert!(grew["message"].as_str().unwrap().contains("4096"), "{grew}");
    c.agent("a").signal(nix::sys::signal::Signal::SIGCONT);
    c.devctl(&["rm", "--force", "on-a"]).ok();
}
