//! Resource defaults (issue 11, finding 6): a container created without
//! `--cpus`/`--memory` is limited on the engine by the cluster's defaults,
//! and a developer holds at most the default quota without any quota flag.

use devctl_tests::{IMAGE, TestCluster};

#[test]
fn containers_get_default_limits_and_developers_a_default_quota() {
    let c = TestCluster::start(&["a"]);
    let alice = c.issue_cert("alice", "developer");

    // No flags: one CPU and 2 GiB, in the record and on the engine.
    let plain = c
        .devctl_as(&alice, &["create", "plain", "--image", IMAGE, "-o", "json"])
        .json();
    let resources = &plain["spec"]["resources"];
    assert_eq!(resources["milliCpus"], "1000", "{plain}");
    assert_eq!(
        resources["memoryBytes"],
        (2i64 << 30).to_string(),
        "{plain}"
    );
    let hc = &c.engine_container("plain").expect("on the engine")["HostConfig"];
    assert_eq!(hc["NanoCpus"], 1_000_000_000i64);
    assert_eq!(hc["Memory"], 2i64 << 30);
    assert_eq!(hc["MemorySwap"], 2i64 << 30);

    // The default quota: ten containers (small ones, so the node's CPU is
    // not what runs out).
    for i in 1..10 {
        c.devctl_as(
            &alice,
            &[
                "create",
                &format!("small-{i}"),
                "--image",
                IMAGE,
                "--cpus",
                "0.1",
                "--memory",
                "32m",
            ],
        )
        .ok();
    }
    let err = c
        .devctl_as(
            &alice,
            &[
                "create", "eleventh", "--image", IMAGE, "--cpus", "0.1", "--memory", "32m",
            ],
        )
        .err();
    assert!(
        err.contains("ResourceExhausted")
            && err.contains("quota exceeded for alice: containers limit 10, 10 in use"),
        "{err}"
    );
    assert!(c.engine_container("eleventh").is_none());
    assert_eq!(c.engine_containers().len(), 10);

    // The admin is exempt, and a developer's memory quota binds too.
    c.devctl(&[
        "create", "ops", "--image", IMAGE, "--cpus", "0.1", "--memory", "32m",
    ])
    .ok();
    let bob = c.issue_cert("bob", "developer");
    let err = c
        .devctl_as(
            &bob,
            &[
                "create", "big", "--image", IMAGE, "--cpus", "0.1", "--memory", "33g",
            ],
        )
        .err();
    assert!(
        err.contains(
            "quota exceeded for bob: memory limit 32Gi, 0 in use, this container asks 33Gi"
        ),
        "{err}"
    );
}
