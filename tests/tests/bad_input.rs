//! Bad input gets a clear error naming the field, with the right gRPC code,
//! and leaves nothing behind: no record, no engine container.

use devctl_tests::{IMAGE, TestCluster};

#[test]
fn bad_input_is_refused_with_the_right_code_and_leaves_nothing() {
    let c = TestCluster::start(&["a"]);
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["create", "Bad_Name", "--image", IMAGE],
            &["InvalidArgument", "container.name", "lowercase"],
        ),
        (
            &["create", "-x", "--image", IMAGE],
            &["unexpected argument"],
        ),
        (
            &["create", "ok1", "--image", IMAGE, "--memory", "12zz"],
            &["--memory", "512m"],
        ),
        (
            &["create", "ok2", "--image", IMAGE, "--cpus", "lots"],
            &["--cpus", "500m"],
        ),
        (
            &["create", "ok3", "--image", IMAGE, "--memory", "1k"],
            &["InvalidArgument", "memory_bytes", "6 MiB"],
        ),
        (
            &[
                "create",
                "ok4",
                "--image",
                "devctl/no-such-image:1",
                "--pull",
                "never",
            ],
            &[
                "FailedPrecondition",
                "is not on this node and pull policy is never",
                "--pull missing",
            ],
        ),
        // Pulled when missing: Docker Hub is out of reach here.
        (
            &["create", "ok4b", "--image", "devctl/no-such-image:1"],
            &["Unavailable", "could not reach registry docker.io"],
        ),
        (
            &["create", "ok4c", "--image", IMAGE, "--pull", "sometimes"],
            &["invalid value", "missing, always, never"],
        ),
        (
            &["create", "ok5", "--image", IMAGE, "--node", "no-such-node"],
            &["NotFound", "no-such-node", "devctl nodes"],
        ),
        (
            &[
                "create",
                "ok6",
                "--image",
                IMAGE,
                "--label",
                "io.devctl.id=x",
            ],
            &["InvalidArgument", "reserved"],
        ),
        (
            &["create", "ok7", "--image", IMAGE, "--env", "NOVALUE"],
            &["KEY=VALUE"],
        ),
        (&["get", "missing"], &["NotFound", "missing"]),
        (&["stop", "missing"], &["NotFound"]),
        (&["rm", "missing"], &["NotFound"]),
    ];
    for (args, expected) in cases {
        let err = c.devctl(args).err();
        for e in *expected {
            assert!(err.contains(e), "devctl {args:?}: expected {e:?} in: {err}");
        }
    }
    // Nothing half-made.
    assert_eq!(
        c.devctl(&["ls", "-o", "json"]).json(),
        serde_json::json!([])
    );
    assert!(
        c.engine_containers().is_empty(),
        "{:?}",
        c.engine_containers()
    );

    // A duplicate name: the first container stays as it was.
    let first = c
        .devctl(&["create", "dup", "--image", IMAGE, "-o", "json"])
        .json();
    let err = c
        .devctl(&["create", "dup", "--image", IMAGE, "--memory", "64m"])
        .err();
    assert!(
        err.contains("AlreadyExists") && err.contains("dup"),
        "{err}"
    );
    let engine = c.engine_containers();
    assert_eq!(engine.len(), 1);
    assert_eq!(engine[0]["Config"]["Labels"]["io.devctl.id"], first["id"]);
    // The first create's (default) limit, not the refused one's.
    assert_eq!(engine[0]["HostConfig"]["Memory"], 2i64 << 30);
}
