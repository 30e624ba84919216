//! What devctl's stats cost the engine at 100 idle containers on one node
//! (deploy/bench.sh stats-load):
//!
//! A real cluster (nats-server, scheduler, one agent, mutual TLS) creates
//! 100 idle containers (8 creates at a time). Then, for `DEVCTL_BENCH_SECS`
//! (60 by default) each, with the same containers running:
//!
//! 1. the agent stopped: dockerd alone, no stats readers;
//! 2. the agent with stats off (`--stats-interval 1h`): what the agent costs
//!    the engine without stats (heartbeats list the running containers
//!    every second, inventory syncs every 30 s);
//! 3. the agent reading the cgroup files (the default, 1 s reports);
//! 4. the agent with `--stats-source engine` (one engine stats stream per
//!    container, the path before issue 10);
//!
//! `DEVCTL_BENCH_ROUNDS` (2) rounds, to see the noise from other work on a
//! shared engine; each row also counts the engine events of other
//! containers during its window.
//!
//! The engine's cost of stats is row 3 (or 4) minus row 2.
//!
//! CPU is utime + stime from /proc/PID/stat over the window, in percent of
//! one core, for dockerd, containerd and the agent; the agent's VmRSS at the
//! end of its window. Containers are removed 8 at a time at the end
//! (removing 100 at once can hang Docker 20.10 with fuse-overlayfs).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use devctl_tests::{IMAGE, TestCluster, wait_until};

const CONTAINERS: usize = 100;
const AT_ONCE: usize = 8;

/// CPU time (utime + stime) of `pid`, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // USER_HZ: 100 on every Linux architecture devctl runs on.
    ticks as f64 / 100.0
}

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn pidof(name: &str) -> i32 {
    let out = Command::new("pidof").arg(name).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("{name} is not running"))
        .parse()
        .unwrap()
}

/// Percent of one core each pid used over `window`, and how many engine
/// events meanwhile were about containers of other nodes than `node` (other
/// work on a shared engine: noise).
fn measure(pids: &[i32], window: Duration, node: &str) -> (Vec<f64>, usize) {
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let since = unix();
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let start = Instant::now();
    std::thread::sleep(window);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = pids
        .iter()
        .zip(before)
        .map(|(p, b)| (cpu_seconds(*p) - b) / elapsed * 100.0)
        .collect();
    let out = Command::new("docker")
        .args(["events", "--since", &since.to_string(), "--until"])
        .arg(unix().to_string())
        .args(["--format", "{{json .Actor.Attributes}}"])
        .output()
        .unwrap();
    let ours = format!("\"io.devctl.node\":\"{node}\"");
    let others = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(&ours))
        .count();
    (cpu, others)
}

fn in_batches(items: &[String], run: impl Fn(&[String]) + Sync) {
    for batch in items.chunks(AT_ONCE) {
        std::thread::scope(|s| {
            for one in batch {
                let run = &run;
                s.spawn(move || run(std::slice::from_ref(one)));
            }
        });
    }
}

fn main() {
    let window = Duration::from_secs(
        std::env::var("DEVCTL_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let warmup = Duration::from_secs(10);
    let mut c = TestCluster::start(&["a"]);
    let names: Vec<String> = (0..CONTAINERS).map(|i| format!("idle-{i:03}")).collect();
    let t = Instant::now();
    in_batches(&names, |n| {
        c.devctl(&["create", &n[0], "--image", IMAGE]).ok();
    });
    eprintln!("created {CONTAINERS} containers in {:.1?}", t.elapsed());
    let (dockerd, containerd) = (pidof("dockerd"), pidof("containerd"));

    let node = c.node("a");
    println!(
        "| phase ({}s each, {CONTAINERS} idle containers) | dockerd | containerd | agent | agent VmRSS | other engine events |",
        window.as_secs()
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let stop_agent = |c: &mut TestCluster| {
        let agent = c.agent("a");
        agent.signal(nix::sys::signal::Signal::SIGTERM);
        agent.wait_exit(Duration::from_secs(40));
    };
    let alone = |c: &mut TestCluster, label: &str| {
        stop_agent(c);
        std::thread::sleep(warmup);
        let (cpu, others) = measure(&[dockerd, containerd], window, &node);
        println!(
            "| {label} | {:.2} % | {:.2} % | — | — | {others} |",
            cpu[0], cpu[1]
        );
    };
    let with_agent = |c: &mut TestCluster, label: &str, args: &[&str]| {
        c.start_agent("a", args).unwrap();
        c.wait_nodes_ready(&[c.node("a")]);
        let stats_on = !args.contains(&"1h");
        wait_until(
            "samples of every container",
            Duration::from_secs(60),
            || {
                let out = c
                    .devctl(&["stats", "--no-stream", "-o", "json"])
                    .ok()
                    .stdout;
                (!stats_on || out.lines().count() >= CONTAINERS).then_some(())
            },
        );
        std::thread::sleep(warmup);
        let agent = c.agent("a").pid();
        let (cpu, others) = measure(&[dockerd, containerd, agent], window, &node);
        println!(
            "| {label} | {:.2} % | {:.2} % | {:.2} % | {:.1} MiB | {others} |",
            cpu[0],
            cpu[1],
            cpu[2],
            rss_mib(agent)
        );
    };
    let rounds: usize = std::env::var("DEVCTL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    for _ in 0..rounds {
        alone(&mut c, "dockerd alone, no stats readers");
        with_agent(
            &mut c,
            "devctl agent, stats off (`--stats-interval 1h`)",
            &["--stats-interval", "1h"],
        );
        stop_agent(&mut c);
        with_agent(
            &mut c,
            "devctl agent, stats from cgroup files (default)",
            &[],
        );
        stop_agent(&mut c);
        with_agent(
            &mut c,
            "devctl agent, `--stats-source engine`",
            &["--stats-source", "engine"],
        );
    }

    // Clean up 8 at a time, before the cluster's guard removes the rest.
    let ids: Vec<String> = c
        .engine_containers()
        .iter()
        .filter_map(|e| e["Id"].as_str().map(str::to_string))
        .collect();
    for batch in ids.chunks(AT_ONCE) {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(batch)
            .output();
    }
}
