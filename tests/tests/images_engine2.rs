//! The two-engine harness: a node on the machine's engine and one on a
//! [`SecondEngine`] are two hosts: each container runs on its own node's
//! engine and only there.

use devctl_tests::{IMAGE, SecondEngine, TestCluster, docker_inspect_by_label, engine_status};

#[test]
fn a_container_runs_on_each_engine() {
    // Declared first, dropped last: the agents end before their engine.
    let engine = SecondEngine::start_seeded(&[IMAGE]);
    let mut c = TestCluster::start(&["a"]);
    c.add_node_on("b", &engine, &[]).unwrap();
    let (a, b) = (c.node("a"), c.node("b"));

    for (name, node) in [("on-a", &a), ("on-b", &b)] {
        let got = c
            .devctl(&[
                "create", name, "--image", IMAGE, "--node", node, "-o", "json", "--", "sleep",
                "600",
            ])
            .json();
        assert_eq!(got["status"]["node"], node.as_str(), "{got}");
    }

    // Node a's container is on the machine's engine only, node b's on the
    // second engine only; both run.
    let main_a = docker_inspect_by_label(&format!("io.devctl.node={a}"));
    let main_b = docker_inspect_by_label(&format!("io.devctl.node={b}"));
    let second_a = engine.inspect_by_label(&format!("io.devctl.node={a}"));
    let second_b = engine.inspect_by_label(&format!("io.devctl.node={b}"));
    assert_eq!(main_a.len(), 1, "{main_a:?}");
    assert_eq!(second_b.len(), 1, "{second_b:?}");
    assert!(
        main_b.is_empty(),
        "node b's container is on the main engine"
    );
    assert!(
        second_a.is_empty(),
        "node a's container is on the second engine"
    );
    assert_eq!(main_a[0]["Config"]["Labels"]["io.devctl.name"], "on-a");
    assert_eq!(second_b[0]["Config"]["Labels"]["io.devctl.name"], "on-b");
    assert_eq!(engine_status(&main_a[0]), "running");
    assert_eq!(engine_status(&second_b[0]), "running");

    // The second engine's container is on one of its own subnets (its
    // bridge's 10.213.N.0/24 or its networks' 10.214.N.0/24), not the main
    // engine's.
    let n = engine.subnet().split('.').nth(2).unwrap().to_string();
    let ips: Vec<String> = second_b[0]["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v["IPAddress"].as_str().map(String::from))
        .collect();
    assert!(
        !ips.is_empty()
            && ips.iter().all(|ip| ip.starts_with(&format!("10.213.{n}."))
                || ip.starts_with(&format!("10.214.{n}."))),
        "{ips:?} not in {}",
        engine.subnet()
    );

    // exec reaches it through its agent.
    let out = c.devctl(&["exec", "on-b", "--", "hostname"]).ok().stdout;
    assert!(!out.trim().is_empty());
}

#[test]
fn engines_run_side_by_side_and_clean_up() {
    let (first, second) = (SecondEngine::start(), SecondEngine::start());
    assert_ne!(first.bridge(), second.bridge());
    assert_ne!(first.subnet(), second.subnet());
    assert!(!first.has_image(IMAGE), "a fresh engine has no images");
    let dir_bridge = first.bridge().to_string();
    let host = first.host().to_string();
    drop(first);
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{dir_bridge}")).exists(),
        "the bridge is deleted"
    );
    let sock = host.trim_start_matches("unix://");
    assert!(
        !std::path::Path::new(sock).exists(),
        "the directory is gone"
    );
    // The other engine is untouched, and so is the main engine's docker0.
    assert!(second.docker(&["info", "--format", "{{.Driver}}"]).is_ok());
    assert!(std::path::Path::new("/sys/class/net/docker0").exists());
}
