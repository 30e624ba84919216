//! Containers are hardened by default: no privilege gain through setuid
//! binaries, every capability dropped but a documented minimal set, a pids
//! limit, and no swap beyond the memory limit — as `docker inspect` shows.

use devctl_tests::{IMAGE, TestCluster};

#[test]
fn created_containers_are_hardened_as_docker_inspect_shows() {
    let c = TestCluster::start(&["a"]);
    c.devctl(&["create", "hard", "--image", IMAGE, "--memory", "64m"])
        .ok();
    let e = c.engine_container("hard").expect("on the engine");
    let hc = &e["HostConfig"];
    let opts: Vec<&str> = hc["SecurityOpt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        opts.iter().any(|o| o.starts_with("no-new-privileges")),
        "{opts:?}"
    );
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]));
    let mut added: Vec<&str> = hc["CapAdd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    added.sort();
    let mut expected = devctl_agent::runtime::docker::CAPABILITIES.to_vec();
    expected.sort();
    assert_eq!(added, expected);
    assert!(!added.contains(&"NET_RAW") && !added.contains(&"SYS_ADMIN"));
    assert_eq!(hc["PidsLimit"], 4096);
    assert_eq!(hc["Privileged"], false);
    assert_eq!(hc["Memory"], 64 << 20);
    assert_eq!(hc["MemorySwap"], hc["Memory"]);
    // The owner's own network, not the engine's shared bridge.
    assert_eq!(
        hc["NetworkMode"],
        format!("devctl-admin.{}", c.node("a")).as_str()
    );

    // A dev container still works: files, processes, users.
    let out = c
        .devctl(&[
            "exec",
            "hard",
            "--",
            "sh",
            "-c",
            "touch /tmp/x && chown 1:1 /tmp/x && echo ok",
        ])
        .ok()
        .stdout;
    assert_eq!(out.trim(), "ok");
    // What was dropped stays dropped: no device nodes.
    let mknod = c.devctl(&["exec", "hard", "--", "mknod", "/tmp/dev", "c", "1", "3"]);
    assert!(!mknod.status.success(), "mknod succeeded without CAP_MKNOD");
}

#[test]
fn privilege_escalation_is_off_unless_the_node_allows_it() {
    let mut c = TestCluster::start(&["a"]);
    c.start_agent("b", &["--allow-privilege-escalation"])
        .unwrap();
    let (a, b) = (c.node("a"), c.node("b"));
    c.wait_nodes_ready(std::slice::from_ref(&b));
    let no_new_privs = |name: &str, node: &str| {
        c.devctl(&[
            "create", name, "--image", IMAGE, "--node", node, "--", "sleep", "600",
        ])
        .ok();
        c.devctl(&[
            "exec",
            name,
            "--",
            "grep",
            "NoNewPrivs",
            "/proc/self/status",
        ])
        .ok()
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
    };
    // As the kernel sees the container's processes: setuid binaries (sudo)
    // gain nothing on node a, and work on node b, whose admin allowed it.
    assert_eq!(no_new_privs("strict", &a), "1");
    assert_eq!(no_new_privs("sudoer", &b), "0");
    let e = c.engine_container("sudoer").expect("on the engine");
    assert!(
        !e["HostConfig"]["SecurityOpt"]
            .to_string()
            .contains("no-new-privileges"),
        "{e}"
    );
    // The capability set stays the minimal one.
    assert_eq!(e["HostConfig"]["CapDrop"], serde_json::json!(["ALL"]));
}
