//! One engine network per owner (issue 11, finding 3): a container of bob
//! cannot reach a server in alice's container, even by its IP; alice's
//! containers reach each other by IP and by devctl name. The agent makes
//! the network with the owner's first container on a node and removes it
//! with the last one, and an inventory collects one left behind.

use std::{path::Path, time::Duration};

use devctl_tests::{IMAGE, TestCluster, network_names_by_label, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

/// The engine networks a container is attached to, with its address on
/// each.
fn networks_of(engine: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = engine["NetworkSettings"]["Networks"]
        .as_object()
        .expect("networks")
        .iter()
        .map(|(name, n)| (name.clone(), n["IPAddress"].as_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

/// Runs `nc` to `target:8080` in `name` as `tls`: what the server said,
/// or `None` if nothing answered within 3 s.
fn fetch(c: &TestCluster, tls: &Path, name: &str, target: &str) -> Option<String> {
    let r = c.devctl_as(tls, &["exec", name, "--", "nc", "-w", "3", target, "8080"]);
    r.status
        .success()
        .then(|| r.stdout.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[test]
fn owners_are_isolated_from_each_other_and_networks_follow_their_containers() {
    let mut c = TestCluster::start(&["a"]);
    let node = c.node("a");
    let alice = c.issue_cert("alice", "developer");
    let bob = c.issue_cert("bob", "developer");
    let on_node = format!("io.devctl.node={node}");

    c.devctl_as(
        &alice,
        &[
            "create",
            "srv",
            "--image",
            IMAGE,
            "--",
            "sh",
            "-c",
            "while true; do echo alice-secret | nc -l -p 8080; done",
        ],
    )
    .ok();
    c.devctl_as(&alice, &["create", "peer", "--image", IMAGE])
        .ok();
    c.devctl_as(&bob, &["create", "probe", "--image", IMAGE])
        .ok();

    // Each owner has one network of its own, and no container is on the
    // engine's shared default bridge.
    let alice_net = format!("devctl-alice.{node}");
    let bob_net = format!("devctl-bob.{node}");
    let mut expected = vec![alice_net.clone(), bob_net.clone()];
    expected.sort();
    assert_eq!(network_names_by_label(&on_node), expected);
    let srv = c.engine_container("srv").expect("srv on the engine");
    let srv_nets = networks_of(&srv);
    assert_eq!(srv_nets.len(), 1, "{srv_nets:?}");
    assert_eq!(srv_nets[0].0, alice_net);
    let srv_ip = srv_nets[0].1.clone();
    assert!(!srv_ip.is_empty(), "{srv_nets:?}");
    let probe = networks_of(&c.engine_container("probe").unwrap());
    assert_eq!(
        probe.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
        [bob_net.as_str()]
    );

    // alice's containers reach each other by IP and by name (the server
    // may take a moment to listen).
    let got = wait_until("alice's peer reaches srv", Duration::from_secs(20), || {
        fetch(&c, &alice, "peer", &srv_ip)
    });
    assert_eq!(got, "alice-secret");
    assert_eq!(
        fetch(&c, &alice, "peer", "srv").as_deref(),
        Some("alice-secret")
    );
    // bob's does not: not by IP, and the name does not resolve.
    assert_eq!(fetch(&c, &bob, "probe", &srv_ip), None);
    assert_eq!(fetch(&c, &bob, "probe", "srv"), None);
    // The server was still up: alice still gets through afterwards.
    assert_eq!(
        fetch(&c, &alice, "peer", &srv_ip).as_deref(),
        Some("alice-secret")
    );

    // The network goes with the owner's last container on the node.
    c.devctl_as(&alice, &["rm", "--force", "srv"]).ok();
    assert!(network_names_by_label(&on_node).contains(&alice_net));
    c.devctl_as(&alice, &["rm", "--force", "peer"]).ok();
    assert_eq!(network_names_by_label(&on_node), [bob_net.as_str()]);

    // A container removed behind devctl's back while the agent was away:
    // the agent's inventory on its return collects the network.
    c.devctl_as(&bob, &["create", "probe2", "--image", IMAGE])
        .ok();
    c.agent("a").signal(Signal::SIGTERM);
    c.agent("a").wait_exit(Duration::from_secs(20));
    for name in ["probe", "probe2"] {
        let id = c.engine_container(name).unwrap()["Id"]
            .as_str()
            .unwrap()
            .to_string();
        let out = std::process::Command::new("docker")
            .args(["rm", "-f", &id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(network_names_by_label(&on_node), [bob_net.as_str()]);
    c.start_agent("a", &[]).unwrap();
    wait_until(
        "bob's unused network collected",
        Duration::from_secs(30),
        || network_names_by_label(&on_node).is_empty().then_some(()),
    );
}
