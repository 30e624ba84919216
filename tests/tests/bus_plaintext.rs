//! A scheduler or agent pointed at a bus that does not speak TLS (a
//! nats-server started without devctl's configuration) says so once,
//! clearly, and keeps retrying.

use std::{fs, path::Path, process::Command, time::Duration};

use devctl_tests::{Proc, bin, ensure_prerequisites, init_data_dir, issue_cert_into, wait_until};
use serde_json::Value;

/// A nats-server with no configuration (plain text) on a free port:
/// the process and `nats://127.0.0.1:PORT`.
fn plain_nats(dir: &Path) -> (Proc, String) {
    let ports = dir.join("ports");
    fs::create_dir_all(&ports).unwrap();
    let mut cmd = Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(&ports);
    let mut proc = Proc::spawn("nats-server (plain)", cmd, dir.join("nats.log")).unwrap();
    let file = ports.join(format!("nats-server_{}.ports", proc.pid()));
    let url = wait_until("nats-server ports file", Duration::from_secs(10), || {
        assert!(proc.is_running(), "nats-server exited: {}", proc.log());
        let v: Value = serde_json::from_str(&fs::read_to_string(&file).ok()?).ok()?;
        v["nats"][0].as_str().map(str::to_string)
    });
    (proc, url)
}

/// Waits until `proc`'s log holds `message` and at least three later failed
/// attempts (logged at debug level), then checks the message is there once.
fn says_once(proc: &Proc, message: &str) {
    let retries = "bus connection attempt failed; retrying";
    wait_until(
        &format!("{message:?}, then three retries"),
        Duration::from_secs(30),
        || {
            let log = proc.log();
            let at = log.find(message)?;
            (log[at..].matches(retries).count() >= 3).then_some(())
        },
    );
    let log = proc.log();
    assert_eq!(log.matches(message).count(), 1, "{log}");
}

#[test]
fn the_scheduler_says_once_that_the_bus_does_not_speak_tls() {
    ensure_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    init_data_dir(&data).unwrap();
    let (_nats, url) = plain_nats(tmp.path());
    let mut cmd = Command::new(bin("devctl-scheduler"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--nats",
        &url,
        "--data-dir",
    ])
    .arg(&data)
    .env("RUST_LOG", "info,devctl_scheduler=debug");
    let scheduler = Proc::spawn("devctl-scheduler", cmd, tmp.path().join("scheduler.log")).unwrap();
    says_once(
        &scheduler,
        &format!(
            "the bus at {url} does not speak TLS; start nats-server with {}",
            data.join("nats/nats.conf").display()
        ),
    );
}

#[test]
fn the_agent_says_once_that_the_bus_does_not_speak_tls() {
    ensure_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    init_data_dir(&data).unwrap();
    let agent_dir = tmp.path().join("agent");
    issue_cert_into(&data, "plain-a", "agent", &agent_dir.join("tls")).unwrap();
    let (_nats, url) = plain_nats(tmp.path());
    let mut cmd = Command::new(bin("devctl-agent"));
    cmd.args(["--node", "plain-a", "--nats", &url, "--data-dir"])
        .arg(&agent_dir)
        .env("RUST_LOG", "info,devctl_agent=debug");
    let agent = Proc::spawn("devctl-agent", cmd, tmp.path().join("agent.log")).unwrap();
    says_once(
        &agent,
        &format!("the bus at {url} does not speak TLS; start nats-server with"),
    );
}
