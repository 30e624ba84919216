//! Live usage from the agents: containers (CPU against the limit, memory
//! against the engine's own figure), nodes, `stats` and `top`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use devctl_tests::{IMAGE, TestCluster, bin, wait_until};
use serde_json::Value;

/// An int64 field of canonical proto JSON (a string there), as a number.
fn int64(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an int64 in proto JSON: {v}"))
}

/// Bytes from docker's "1.5MiB" notation.
fn docker_bytes(s: &str) -> f64 {
    let units = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    let (unit, mult) = units.iter().find(|(u, _)| s.ends_with(u)).unwrap();
    s.trim_end_matches(unit).parse::<f64>().unwrap() * *mult as f64
}

#[test]
fn cpu_and_memory_follow_the_engine_and_stop_with_the_container() {
    let c = TestCluster::start(&["a"]);
    c.devctl(&[
        "create",
        "burner",
        "--image",
        IMAGE,
        "--cpus",
        "0.5",
        "--memory",
        "64m",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ])
    .ok();
    // CPU near its limit: the mean of five consecutive samples.
    let mut cpu = Vec::new();
    wait_until("five CPU samples", Duration::from_secs(30), || {
        let s = c.stats_sample("burner")?;
        let t = s["time"].as_str()?.to_string();
        if cpu.last().map(|(lt, _)| lt) != Some(&t) {
            // Proto JSON leaves out a field at its default: absent is 0%.
            cpu.push((t, s.get("cpuPercent").map_or(Some(0.0), Value::as_f64)?));
        }
        (cpu.len() >= 6).then_some(())
    });
    // The first sample may cover the start.
    let mean: f64 = cpu[1..].iter().map(|(_, v)| v).sum::<f64>() / (cpu.len() - 1) as f64;
    eprintln!("burner at --cpus 0.5: CPU samples {cpu:?}, mean {mean:.1}%");
    assert!(
        (40.0..=60.0).contains(&mean),
        "mean CPU {mean:.1}% with a 0.5 CPU limit"
    );

    // Memory: the limit exactly, the usage close to the engine's figure.
    let s = c.stats_sample("burner").unwrap();
    assert_eq!(int64(&s["memoryLimitBytes"]), 64i64 << 20, "{s}");
    assert!(int64(&s["pids"]) >= 1, "{s}");
    let engine_id = c.engine_container("burner").unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = Command::new("docker")
        .args([
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            &engine_id,
        ])
        .output()
        .unwrap();
    let theirs = docker_bytes(
        String::from_utf8_lossy(&out.stdout)
            .split(" / ")
            .next()
            .unwrap()
            .trim(),
    );
    let ours = int64(&c.stats_sample("burner").unwrap()["memoryBytes"]) as f64;
    assert!(
        (ours - theirs).abs() <= (theirs * 0.25).max(512.0 * 1024.0),
        "ours {ours}, docker {theirs}"
    );

    // Nodes report their own usage.
    let node = c.devctl(&["nodes", &c.node("a"), "-o", "json"]).json();
    assert!(int64(&node["usage"]["memoryUsedBytes"]) > 0, "{node}");
    assert!(node["usage"]["cpuPercent"].as_f64().is_some(), "{node}");
    let top = c.devctl(&["top", "--no-stream", "-o", "json"]).json();
    assert_eq!(top["containers"][0]["name"], "burner");

    // Stopped: no more samples.
    c.devctl(&["stop", "burner", "-t", "0"]).ok();
    wait_until("samples to stop", Duration::from_secs(10), || {
        c.stats_sample("burner").is_none().then_some(())
    });
}

#[test]
fn stats_streams_samples_as_they_arrive() {
    let c = TestCluster::start(&["a"]);
    c.devctl(&["create", "idle", "--image", IMAGE]).ok();
    let mut watcher = Command::new(bin("devctl"))
        .args(["stats", "idle", "-o", "json"])
        .env("DEVCTL_SERVER", &c.server)
        .env("DEVCTL_TLS_DIR", c.admin_tls())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let mut times = Vec::new();
    while times.len() < 3 {
        let line = lines.next().expect("stats output ended").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["name"], "idle");
        times.push(v["time"].as_str().unwrap().to_string());
    }
    times.dedup();
    assert!(times.len() >= 2, "samples are fresh each time: {times:?}");
    watcher.kill().unwrap();
    watcher.wait().unwrap();
}
