//! Container output from any node: stdout and stderr apart, follow, tail,
//! since, large bursts complete and in order, and no stream left running on
//! the agent once its reader is gone.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use devctl_tests::{IMAGE, TestCluster, bin, wait_until};

fn follower(c: &TestCluster, args: &[&str]) -> std::process::Child {
    Command::new(bin("devctl"))
        .args(args)
        .env("DEVCTL_SERVER", &c.server)
        .env("DEVCTL_TLS_DIR", c.admin_tls())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn open_streams(c: &TestCluster, node: &str) -> i64 {
    // An int32: left out of the JSON when 0.
    match &c.devctl(&["nodes", node, "-o", "json"]).json()["openStreams"] {
        serde_json::Value::Null => 0,
        n => n
            .as_i64()
            .unwrap_or_else(|| panic!("openStreams not an integer: {n}")),
    }
}

#[test]
fn follow_on_a_second_node_keeps_streams_apart_and_leaves_nothing_behind() {
    let c = TestCluster::start(&["a", "b"]);
    let b = c.node("b");
    c.devctl(&[
        "create",
        "chatty",
        "--image",
        IMAGE,
        "--node",
        &b,
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo out $i; echo err $i >&2; i=$((i+1)); sleep 0.1; done",
    ])
    .ok();

    let mut f = follower(&c, &["logs", "-f", "chatty"]);
    let mut out = BufReader::new(f.stdout.take().unwrap());
    let mut err = BufReader::new(f.stderr.take().unwrap());
    // Lines arrive as they are printed, each on its own stream.
    let mut line = String::new();
    let mut last = -1i64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while last < 20 {
        assert!(Instant::now() < deadline, "too slow: reached out {last}");
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "stdout ended");
        let n: i64 = line
            .trim()
            .strip_prefix("out ")
            .expect(&line)
            .parse()
            .unwrap();
        assert!(n > last, "out of order: {n} after {last}");
        last = n;
    }
    line.clear();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("err "), "{line}");
    assert_eq!(open_streams(&c, &b), 1);

    // The reader goes away without a word (like Ctrl-C): the agent stops
    // reading the engine's stream.
    f.kill().unwrap();
    f.wait().unwrap();
    wait_until(
        "the agent's stream to close",
        Duration::from_secs(10),
        || (open_streams(&c, &b) == 0).then_some(()),
    );

    // Follow ends by itself when the container stops.
    let mut f = follower(&c, &["logs", "-f", "--tail", "1", "chatty"]);
    let mut first = String::new();
    BufReader::new(f.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    c.devctl(&["stop", "chatty", "-t", "0"]).ok();
    let status = wait_until("follow to end", Duration::from_secs(10), || {
        f.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    wait_until("no stream left", Duration::from_secs(10), || {
        (open_streams(&c, &b) == 0).then_some(())
    });
}

#[test]
fn tail_and_since_select_output() {
    let c = TestCluster::start(&["a"]);
    c.devctl(&[
        "create",
        "steps",
        "--image",
        IMAGE,
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do echo step $i; done; sleep 2; echo late; sleep 3600",
    ])
    .ok();
    let all = wait_until("late output", Duration::from_secs(15), || {
        let o = c.devctl(&["logs", "steps", "--timestamps"]).ok().stdout;
        o.contains("late").then_some(o)
    });
    let tail = c.devctl(&["logs", "steps", "--tail", "3"]).ok().stdout;
    assert_eq!(tail, "step 5\nstep 6\nlate\n");
    // --since the "late" line's own time (whole seconds): the steps, 2 s
    // earlier, are left out.
    let late = all.lines().find(|l| l.ends_with(" late")).unwrap();
    let stamp = late.split_whitespace().next().unwrap();
    let second = format!("{}Z", &stamp[..19]);
    let since = c.devctl(&["logs", "steps", "--since", &second]).ok().stdout;
    assert_eq!(since, "late\n");
    let err = c.devctl(&["logs", "nope"]).err();
    assert!(err.contains("NotFound"), "{err}");
}

#[test]
fn a_50_mb_burst_arrives_complete_and_in_order() {
    let c = TestCluster::start(&["a"]);
    let node = c.node("a");
    // 51,200 numbered lines of 1,024 bytes (50 MiB), written at full speed
    // once /tmp/go exists, so the follower is attached before the burst.
    c.devctl(&[
        "create", "burst", "--image", IMAGE, "--",
        "sh", "-c",
        "while [ ! -f /tmp/go ]; do sleep 0.05; done; awk 'BEGIN { pad = sprintf(\"%1014s\", \"\"); for (i = 0; i < 51200; i++) printf \"%08d %s\\n\", i, pad }'; sleep 3600",
    ])
    .ok();
    // devctl's own log budget (3 x 64 MiB) holds the burst, whatever the
    // engine's default rotation.
    let log_config = &c.engine_container("burst").unwrap()["HostConfig"]["LogConfig"];
    assert_eq!(log_config["Config"]["max-size"], "64m", "{log_config}");
    let mut f = follower(&c, &["logs", "-f", "burst"]);
    wait_until("the follower to attach", Duration::from_secs(10), || {
        (open_streams(&c, &node) == 1).then_some(())
    });
    let engine_id = c.engine_container("burst").unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let go = Command::new("docker")
        .args(["exec", &engine_id, "touch", "/tmp/go"])
        .output()
        .unwrap();
    assert!(go.status.success());

    let started = Instant::now();
    let mut out = f.stdout.take().unwrap();
    let mut bytes = vec![0u8; 51_200 * 1_024];
    out.read_exact(&mut bytes).unwrap();
    eprintln!("50 MiB followed live in {:?}", started.elapsed());
    f.kill().unwrap();
    f.wait().unwrap();
    for (i, line) in bytes.split(|b| *b == b'\n').take(51_200).enumerate() {
        assert_eq!(line.len(), 1_023, "line {i}");
        assert_eq!(
            &line[..8],
            format!("{i:08}").as_bytes(),
            "line {i} out of order"
        );
    }

    // Without follow: exactly what the engine still holds (its log rotation
    // may have dropped the oldest part).
    let ours = Command::new(bin("devctl"))
        .args(["logs", "burst"])
        .env("DEVCTL_SERVER", &c.server)
        .env("DEVCTL_TLS_DIR", c.admin_tls())
        .output()
        .unwrap();
    assert!(ours.status.success());
    let engine = Command::new("docker")
        .args(["logs", &engine_id])
        .output()
        .unwrap();
    assert_eq!(ours.stdout.len(), engine.stdout.len());
    assert!(
        ours.stdout == engine.stdout,
        "devctl logs differs from docker logs"
    );
}

#[test]
fn a_follower_is_told_when_its_node_dies() {
    let mut c = TestCluster::start_opts(&["a", "b"], &[], &["--node-timeout", "2s"]).unwrap();
    let b = c.node("b");
    c.devctl(&[
        "create",
        "doomed",
        "--image",
        IMAGE,
        "--node",
        &b,
        "--",
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.2; done",
    ])
    .ok();
    let mut f = follower(&c, &["logs", "-f", "doomed"]);
    let mut first = String::new();
    BufReader::new(f.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "tick\n");
    c.agent("b").signal(nix::sys::signal::Signal::SIGKILL);
    let status = wait_until("the follower to be told", Duration::from_secs(15), || {
        f.try_wait().unwrap()
    });
    assert!(!status.success());
    let mut err = String::new();
    f.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        err.contains("went down") && err.contains("Unavailable"),
        "{err}"
    );
}
