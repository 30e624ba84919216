//! The CLI checks its arguments before it connects: a typo never waits on
//! the network and names the flag to fix.

use std::process::Command;

fn devctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_devctl"))
        .args(args)
        // Nothing listens here: any attempt to connect would fail
        // differently.
        .env("DEVCTL_SERVER", "https://127.0.0.1:9")
        .env("DEVCTL_TLS_DIR", "/nonexistent")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_flags_are_reported_before_connecting() {
    for (args, expected) in [
        (
            &["create", "web", "--image", "x", "--memory", "lots"][..],
            "--memory: \"lots\" is not a size",
        ),
        (
            &["create", "web", "--image", "x", "--cpus=-1"][..],
            "--cpus",
        ),
        (
            &["create", "web", "--image", "x", "--env", "NOEQUALS"][..],
            "KEY=VALUE",
        ),
        (
            &["create", "web", "--image", "x", "--label", "=v"][..],
            "KEY=VALUE",
        ),
        (
            &["audit", "--since", "yesterday"][..],
            "--since \"yesterday\"",
        ),
    ] {
        let (ok, err) = devctl(args);
        assert!(!ok, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(
            !err.contains("cannot reach"),
            "{args:?} tried to connect: {err}"
        );
    }
}

#[test]
fn a_missing_bundle_is_named() {
    let (ok, err) = devctl(&["ls"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent"), "{err}");
}

#[test]
fn the_server_url_must_be_https() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_devctl"))
        .args(["ls", "--server", "http://127.0.0.1:9", "--tls-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("https://"));
}
