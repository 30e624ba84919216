//! Placement as a scheduler: reservations, label constraints, spread and
//! binpack, a reason per rejected node, and dry runs.

use devctl_tests::{IMAGE, TestCluster};

#[test]
fn constraints_reservations_strategies_and_dry_runs() {
    let mut c = TestCluster::start(&["b"]);
    c.start_agent("a", &["--label", "zone=eu"]).unwrap();
    c.wait_nodes_ready(&[c.node("a")]);
    let (a, b) = (c.node("a"), c.node("b"));
    let node_of = |r: serde_json::Value| r["status"]["node"].as_str().unwrap().to_string();

    // A constraint picks the labelled node; an impossible one says why for
    // every node.
    let eu = c
        .devctl(&[
            "create",
            "eu",
            "--image",
            IMAGE,
            "--cpus",
            "0.5",
            "--constraint",
            "zone=eu",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(node_of(eu), a);
    let err = c
        .devctl(&["create", "us", "--image", IMAGE, "--constraint", "zone=us"])
        .err();
    assert!(err.contains("FailedPrecondition"), "{err}");
    assert!(
        err.contains(&format!("{a}: label zone=us required, node has zone=eu")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{b}: label zone=us required, node has no zone label"
        )),
        "{err}"
    );

    // Reservations: a now has 0.5 of its CPUs reserved.
    let nodes = c.devctl(&["nodes", &a, "-o", "json"]).json();
    assert_eq!(nodes["reservedMilliCpus"], "500");

    // binpack fills a (the fuller node that fits), spread prefers b.
    let packed = c
        .devctl(&[
            "create",
            "packed",
            "--image",
            IMAGE,
            "--cpus",
            "0.5",
            "--strategy",
            "binpack",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(node_of(packed), a);
    let spread = c
        .devctl(&[
            "create",
            "spread",
            "--image",
            IMAGE,
            "--cpus",
            "0.5",
            "--strategy",
            "spread",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(node_of(spread), b);

    // Nothing fits: RESOURCE_EXHAUSTED with each node's numbers.
    let cpus = c.devctl(&["nodes", &a, "-o", "json"]).json()["cpus"]
        .as_i64()
        .unwrap();
    // CPU is overcommitted four times by default: a's reservations may
    // add up to four times its CPUs.
    let schedulable = cpus as f64 * 4.0;
    let too_big = format!("{}", schedulable - 0.5);
    let err = c
        .devctl(&[
            "create",
            "huge",
            "--image",
            IMAGE,
            "--cpus",
            &too_big,
            "--constraint",
            "zone=eu",
        ])
        .err();
    assert!(err.contains("ResourceExhausted"), "{err}");
    assert!(
        err.contains(&format!(
            "{a}: needs {too_big} CPUs, {} free of {schedulable} ({cpus} CPUs x 4 overcommit)",
            schedulable - 1.0
        )),
        "{err}"
    );

    // A stopped container gives its reservation back.
    c.devctl(&["stop", "packed", "-t", "0"]).ok();
    assert_eq!(
        c.devctl(&["nodes", &a, "-o", "json"]).json()["reservedMilliCpus"],
        "500"
    );

    // A dry run decides and creates nothing.
    let dry = c
        .devctl(&["create", "dry", "--image", IMAGE, "--dry-run", "-o", "json"])
        .json();
    assert_eq!(dry["status"]["state"], "CONTAINER_STATE_PENDING");
    assert!(!dry["status"]["node"].as_str().unwrap().is_empty());
    let err = c.devctl(&["get", "dry"]).err();
    assert!(err.contains("NotFound"), "{err}");
    assert!(c.engine_container("dry").is_none());
    let table = c
        .devctl(&["create", "dry", "--image", IMAGE, "--dry-run"])
        .ok()
        .stdout;
    assert!(table.contains("would run on node"), "{table}");
}
