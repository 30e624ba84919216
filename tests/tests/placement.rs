//! Two agents with different node names on one engine: both are nodes,
//! `--node` pins, and unpinned containers spread.

use std::collections::HashMap;

use devctl_tests::{IMAGE, TestCluster};

#[test]
fn two_agents_on_one_engine_are_two_nodes_and_containers_spread() {
    let c = TestCluster::start_with(&["a", "b"], &["--label", "zone=test"]).unwrap();
    let (a, b) = (c.node("a"), c.node("b"));

    let nodes = c.devctl(&["nodes", "-o", "json"]).json();
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for n in nodes {
        assert_eq!(n["state"], "NODE_STATE_READY");
        assert!(n["cpus"].as_i64().unwrap() >= 1);
        assert!(n["memoryBytes"].as_str().unwrap().parse::<i64>().unwrap() > 0);
        assert_eq!(n["labels"]["zone"], "test");
        assert!(!n["dockerVersion"].as_str().unwrap().is_empty());
    }
    let one = c.devctl(&["nodes", &b, "-o", "json"]).json();
    assert_eq!(one["name"], b.as_str());

    // --node pins, even against the spread.
    for i in 0..2 {
        let name = format!("pinned-{i}");
        let got = c
            .devctl(&[
                "create", &name, "--image", IMAGE, "--node", &b, "-o", "json",
            ])
            .json();
        assert_eq!(got["status"]["node"], b.as_str());
        let engine = c.engine_container(&name).unwrap();
        assert_eq!(engine["Config"]["Labels"]["io.devctl.node"], b.as_str());
    }

    // Unpinned: node a is emptier, so it receives containers until the
    // counts are even, then they alternate.
    let mut per_node: HashMap<String, usize> = HashMap::from([(b.clone(), 2)]);
    for i in 0..4 {
        let got = c
            .devctl(&[
                "create",
                &format!("free-{i}"),
                "--image",
                IMAGE,
                "-o",
                "json",
            ])
            .json();
        *per_node
            .entry(got["status"]["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_node[&a], 3, "{per_node:?}");
    assert_eq!(per_node[&b], 3, "{per_node:?}");

    // The engine agrees, node by node.
    let engine = c.engine_containers();
    let on = |n: &str| {
        engine
            .iter()
            .filter(|e| e["Config"]["Labels"]["io.devctl.node"] == n)
            .count()
    };
    assert_eq!((on(&a), on(&b)), (3, 3));
    let nodes = c.devctl(&["nodes", "-o", "json"]).json();
    for n in nodes.as_array().unwrap() {
        assert_eq!(n["containerCount"], 3);
    }
    // ls --node filters.
    let only_a = c.devctl(&["ls", "--node", &a, "-o", "json"]).json();
    assert_eq!(only_a.as_array().unwrap().len(), 3);
}

#[test]
fn a_down_node_is_never_chosen_and_a_pinned_create_says_why() {
    let mut c = TestCluster::start(&["a", "b"]);
    let (a, b) = (c.node("a"), c.node("b"));
    // A stopping agent announces it is leaving: the node is down at once.
    c.agent("b").signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        c.agent("b")
            .wait_exit(std::time::Duration::from_secs(20))
            .success()
    );
    c.wait_node_state(&b, "down");
    c.wait_node_state(&a, "ready");

    for i in 0..2 {
        let got = c
            .devctl(&["create", &format!("c{i}"), "--image", IMAGE, "-o", "json"])
            .json();
        assert_eq!(got["status"]["node"], a.as_str());
    }
    let err = c
        .devctl(&["create", "pinned", "--image", IMAGE, "--node", &b])
        .err();
    assert!(
        err.contains("FailedPrecondition") && err.contains("down"),
        "{err}"
    );
    assert!(c.engine_container("pinned").is_none());
}
