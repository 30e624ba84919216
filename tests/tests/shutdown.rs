//! SIGTERM stops the scheduler and the agent cleanly: exit status 0, a
//! final log line, and an agent leaving leaves its containers running.

use std::time::Duration;

use devctl_tests::{IMAGE, TestCluster, engine_status};
use nix::sys::signal::Signal;

#[test]
fn sigterm_stops_agent_and_scheduler_cleanly() {
    let mut c = TestCluster::start(&["a"]);
    c.devctl(&["create", "survivor", "--image", IMAGE]).ok();

    let agent = c.agent("a");
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "agent exit: {status}");
    assert!(agent.log().contains("agent stopped"));
    // The agent's own end does not end the dev containers.
    assert_eq!(
        engine_status(&c.engine_container("survivor").unwrap()),
        "running"
    );
    // It said it was leaving: the node goes down without waiting out the
    // 10 s heartbeat timeout (the deadline here is shorter than that).
    let started = std::time::Instant::now();
    c.wait_node_state(&c.node("a"), "down");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "down only after {:?}",
        started.elapsed()
    );

    // Followers attached at shutdown end with it, instead of holding it up.
    c.start_agent("a", &[]).unwrap();
    c.wait_nodes_ready(&[c.node("a")]);
    let follow = |args: &[&str]| {
        std::process::Command::new(devctl_tests::bin("devctl"))
            .args(args)
            .env("DEVCTL_SERVER", &c.server)
            .env("DEVCTL_TLS_DIR", c.admin_tls())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut followers = [
        follow(&["logs", "-f", "survivor"]),
        follow(&["events", "-f"]),
    ];
    devctl_tests::wait_until(
        "the log follower to attach",
        Duration::from_secs(10),
        || {
            let n = c.devctl(&["nodes", &c.node("a"), "-o", "json"]).json();
            (n["openStreams"] == 1).then_some(())
        },
    );

    let mut scheduler = c.scheduler.take().unwrap();
    scheduler.signal(Signal::SIGTERM);
    let status = scheduler.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "scheduler exit: {status}");
    assert!(scheduler.log().contains("scheduler stopped"));
    for f in &mut followers {
        devctl_tests::wait_until("a follower to end", Duration::from_secs(10), || {
            f.try_wait().unwrap()
        });
    }
    assert!(!c.data_dir().join("scheduler.addr").exists());
}
