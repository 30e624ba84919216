//! `devctl-scheduler init` and `issue-cert` through the real binary.

use std::{os::unix::fs::PermissionsExt, process::Command};

fn scheduler(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_devctl-scheduler"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn init_writes_the_bundles_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    let out = scheduler(&["init", "--data-dir", d, "--san", "scheduler.example"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(dir.join("clients/admin").join(f).exists(), "{f}");
    }
    let mode = std::fs::metadata(dir.join("clients/admin/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let again = scheduler(&["init", "--data-dir", d]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(
        scheduler(&["init", "--data-dir", d, "--force"])
            .status
            .success()
    );

    let out_dir = tmp.path().join("bob");
    let o = out_dir.to_str().unwrap();
    let ok = scheduler(&[
        "issue-cert",
        "--data-dir",
        d,
        "--name",
        "bob",
        "--role",
        "developer",
        "--out",
        o,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = scheduler(&[
        "issue-cert",
        "--data-dir",
        d,
        "--name",
        "bob",
        "--role",
        "root",
        "--out",
        o,
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--role"));

    let missing = tmp.path().join("nothing");
    let serve = scheduler(&[
        "serve",
        "--data-dir",
        missing.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!serve.status.success());
    assert!(
        String::from_utf8_lossy(&serve.stderr).contains("init"),
        "{}",
        String::from_utf8_lossy(&serve.stderr)
    );
}
