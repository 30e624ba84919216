//! The agent refuses bad configuration before it touches the engine or the
//! bus.

use std::process::Command;

#[test]
fn invalid_node_names_and_labels_are_refused() {
    for (args, expected) in [
        (&["--node", "Bad_Name"][..], "--node"),
        (&["--node", "ok", "--label", "novalue"][..], "--label"),
        (
            &["--node", "ok", "--label", "io.devctl.node=x"][..],
            "reserved",
        ),
        (
            &["--node", "ok", "--log-max-size", "lots"][..],
            "--log-max-size",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_devctl-agent"))
            .args(args)
            .args([
                "--nats",
                "nats://127.0.0.1:9",
                "--docker-host",
                "unix:///nonexistent.sock",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
