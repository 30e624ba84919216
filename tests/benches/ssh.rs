//! SSH and port-forward benchmark: 100 MiB through `ssh NAME.devctl 'cat >
//! /dev/null'` and through `devctl port-forward` into a discarding server
//! in the container, and the round trip of one keystroke through ssh,
//! each beside `docker exec -i` into the same container on the same engine
//! (the peer a user would otherwise reach for).
//!
//!   deploy/bench.sh ssh     (DEVCTL_BENCH_MIB, default 100; DEVCTL_BENCH_RUNS, default 5)

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use devctl_tests::{IMAGE, SshUser, TestCluster};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `cmd` with `file` as stdin; the time until it exits (successfully).
fn timed_with_input(mut cmd: Command, file: &std::path::Path) -> Duration {
    let t = Instant::now();
    let out = cmd
        .stdin(std::fs::File::open(file).unwrap())
        .stdout(Stdio::null())
        .output()
        .expect("spawn");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// The engine id of devctl container `name`.
fn engine_id(c: &TestCluster, name: &str) -> String {
    c.engine_container(name).expect("engine container")["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// One-byte round trips through `cmd` (which echoes what it reads): the
/// time from writing a byte to reading one back, `n` times.
fn round_trips(mut cmd: Command, n: usize) -> Vec<Duration> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut inp, mut out) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut byte = [0u8; 1];
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        inp.write_all(b"k").unwrap();
        inp.flush().unwrap();
        out.read_exact(&mut byte).unwrap();
        if i >= 10 {
            times.push(t.elapsed());
        }
    }
    drop(inp);
    let _ = child.kill();
    let _ = child.wait();
    times
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let mib = env_or("DEVCTL_BENCH_MIB", 100);
    let runs = env_or("DEVCTL_BENCH_RUNS", 5);
    let bytes = mib << 20;
    let c = TestCluster::start(&["bench"]);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    alice
        .devctl(&["create", "box", "--image", IMAGE, "--", "sleep", "1d"])
        .ok();
    // A server that reads each connection to its end and drops it.
    alice
        .devctl(&[
            "create",
            "sink",
            "--image",
            IMAGE,
            "--",
            "sh",
            "-c",
            "printf '#!/bin/sh\\ncat >/dev/null\\n' >/sink && chmod +x /sink && exec nc -ll -p 7000 -e /sink",
        ])
        .ok();
    alice.devctl(&["config-ssh"]).ok();
    let data = c.scratch().join("payload");
    std::fs::write(
        &data,
        (0..bytes)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let box_id = engine_id(&c, "box");

    // Bulk copy: ssh vs docker exec -i, interleaved.
    let (mut via_ssh, mut via_docker) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        via_ssh.push(timed_with_input(
            alice.ssh_command(&["box.devctl", "cat > /dev/null"]),
            &data,
        ));
        let mut docker = Command::new("docker");
        docker.args(["exec", "-i", &box_id, "sh", "-c", "cat > /dev/null"]);
        via_docker.push(timed_with_input(docker, &data));
    }

    // Bulk copy through devctl port-forward into the sink.
    let log = c.scratch().join("pf.log");
    let mut pf = alice
        .devctl_command(&["port-forward", "sink", ":7000"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = devctl_tests::forwarded_port(&log);
    let payload = std::fs::read(&data).unwrap();
    let mut via_forward = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&payload).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // The sink read everything once it closes its end.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        via_forward.push(t.elapsed());
    }
    let _ = pf.kill();
    let _ = pf.wait();

    // Keystrokes: one byte to `cat` and back, without a terminal on both
    // paths; and through ssh with a terminal (echo on, as typing is).
    let n = 200;
    let mut rt_ssh = round_trips(alice.ssh_command(&["box.devctl", "cat"]), n);
    let mut docker = Command::new("docker");
    docker.args(["exec", "-i", &box_id, "cat"]);
    let mut rt_docker = round_trips(docker, n);
    let mut rt_tty = round_trips(
        alice.ssh_command(&["-tt", "box.devctl", "stty raw -echo; cat"]),
        n,
    );

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (s, d, f) = (
        median(&mut via_ssh),
        median(&mut via_docker),
        median(&mut via_forward),
    );
    println!("{mib} MiB into the container, median of {runs}:");
    println!("| path | time | throughput |");
    println!("| --- | --- | --- |");
    println!(
        "| `ssh box.devctl 'cat > /dev/null'` | {:.2} s | {:.0} MiB/s |",
        s.as_secs_f64(),
        mib_s(bytes, s)
    );
    println!(
        "| `devctl port-forward` into `nc` | {:.2} s | {:.0} MiB/s |",
        f.as_secs_f64(),
        mib_s(bytes, f)
    );
    println!(
        "| `docker exec -i … sh -c 'cat > /dev/null'` | {:.2} s | {:.0} MiB/s |",
        d.as_secs_f64(),
        mib_s(bytes, d)
    );
    println!();
    println!("one-byte round trips, {n} each:");
    println!("| path | median | p99 |");
    println!("| --- | --- | --- |");
    println!(
        "| ssh box.devctl cat | {:.2} ms | {:.2} ms |",
        ms(median(&mut rt_ssh)),
        ms(percentile(&mut rt_ssh, 0.99))
    );
    println!(
        "| ssh -tt box.devctl (terminal) | {:.2} ms | {:.2} ms |",
        ms(median(&mut rt_tty)),
        ms(percentile(&mut rt_tty, 0.99))
    );
    println!(
        "| docker exec -i … cat | {:.2} ms | {:.2} ms |",
        ms(median(&mut rt_docker)),
        ms(percentile(&mut rt_docker, 0.99))
    );
}
