//! Placement and memory benchmarks (deploy/bench.sh placement):
//!
//! 1. Decisions/s: the scheduler's per-create placement path minus its I/O
//!    (`Store::node_usage`, then `Registry::with_views` — views borrowed
//!    from the registry with each node's reservations and live memory —
//!    and `placement::place`, as `Cluster::place` does it) over 1,000 ready
//!    nodes and a real store holding 10,000 containers, on one thread (one
//!    core). Reported as decisions/s and p50/p99 per decision, for spread
//!    and binpack, with and without a label constraint, and when nothing
//!    fits; then what each step costs on its own.
//! 2. Memory: the real scheduler binary serving that store (1,000 nodes,
//!    10,000 containers) while a simulated fleet heartbeats, reports stats
//!    and answers inventory requests for all 1,000 nodes, after `devctl ls`
//!    and `devctl nodes` read everything; VmRSS and VmHWM from
//!    /proc/PID/status, next to the same for an empty store.
//!
//! One file on purpose: both parts build on the same fixture (the 1,000
//! nodes and the 10,000-container store); a bench binary per part would
//! each need all of it.

use devctl_proto::container::ContainerExt;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use devctl_proto::{bus, pb};
use devctl_scheduler::{
    nodes::Registry,
    placement::{self, Request, Strategy},
    store::Store,
};
use devctl_tests::{Nats, Proc, bin, wait_until};
use prost::Message;
use tokio_stream::StreamExt as _;

const NODES: usize = 1_000;
const CONTAINERS: usize = 10_000;
const GIB: i64 = 1 << 30;

fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

/// A quarter of the nodes are in zone eu (with an ssd label), a quarter in
/// zone us, the rest carry no labels.
fn node_labels(i: usize) -> HashMap<String, String> {
    match i % 4 {
        0 => HashMap::from([("zone".into(), "eu".into()), ("disk".into(), "ssd".into())]),
        1 => HashMap::from([("zone".into(), "us".into())]),
        _ => HashMap::new(),
    }
}

fn heartbeat(i: usize) -> pb::Heartbeat {
    pb::Heartbeat {
        node: node_name(i),
        boot_id: format!("boot-{i}"),
        labels: node_labels(i),
        cpus: 16,
        memory_bytes: 64 * GIB,
        docker_version: "27.3.1".into(),
        agent_version: "0.1.0".into(),
        platform: "linux/amd64".into(),
        time: Some(SystemTime::now().into()),
        workspaces: true,
        ..Default::default()
    }
}

/// The node record as the scheduler persists it after a first heartbeat.
fn node(i: usize) -> pb::Node {
    let hb = heartbeat(i);
    pb::Node {
        name: hb.node,
        labels: hb.labels,
        cpus: hb.cpus,
        memory_bytes: hb.memory_bytes,
        docker_version: hb.docker_version,
        agent_version: hb.agent_version,
        platform: hb.platform,
        last_seen: hb.time,
        create_time: hb.time,
        ..Default::default()
    }
}

/// Node `i`'s usage sample, taken at `time`.
fn node_stats(i: usize, time: SystemTime) -> pb::NodeStats {
    pb::NodeStats {
        node: node_name(i),
        time: Some(time.into()),
        cpu_percent: 20.0,
        memory_used_bytes: (10 + (i as i64 % 50)) * GIB,
        memory_total_bytes: 64 * GIB,
        ..Default::default()
    }
}

/// Container `i`: 10 per node, one in four stopped; reservations vary so
/// nodes differ in load.
fn container(i: usize) -> pb::Container {
    let t = |ago: u64| Some((SystemTime::now() - Duration::from_secs(ago)).into());
    let stopped = i % 4 == 3;
    let id = uuid::Uuid::new_v4().to_string();
    pb::Container {
        name: format!("ws-{i:05}"),
        id: id.clone(),
        owner: format!("user-{}", i % 300),
        create_time: t(7200),
        update_time: t(3600),
        spec: Some(pb::ContainerSpec {
            image: "registry.example.com/dev/rust-toolchain:1.83".into(),
            command: vec!["sleep".into(), "infinity".into()],
            desired_state: if stopped {
                pb::DesiredState::Stopped
            } else {
                pb::DesiredState::Running
            } as i32,
            resources: Some(pb::Resources {
                milli_cpus: 500 * (1 + (i as i64 * 7) % 4),
                memory_bytes: GIB * (1 + (i as i64 * 3) % 4),
            }),
            env: HashMap::from([
                ("RUST_LOG".into(), "info".into()),
                ("HOME".into(), "/home/dev".into()),
                ("PROJECT".into(), format!("project-{}", i % 97)),
            ]),
            labels: HashMap::from([
                ("team".into(), format!("team-{}", i % 13)),
                ("purpose".into(), "dev".into()),
            ]),
            ttl_seconds: Some(8 * 3600),
            ..Default::default()
        }),
        status: Some(pb::ContainerStatus {
            node: node_name(i % NODES),
            runtime_id: format!("{}{}", id.replace('-', ""), id.replace('-', "")),
            state: if stopped {
                pb::ContainerState::Stopped
            } else {
                pb::ContainerState::Running
            } as i32,
            exit_code: stopped.then_some(0),
            start_time: if stopped { None } else { t(3600) },
            lease_expire_time: if stopped {
                None
            } else {
                Some((SystemTime::now() + Duration::from_secs(4 * 3600)).into())
            },
            idle_timeout_seconds: 1800,
            stop_reason: if stopped {
                pb::StopReason::Manual as i32
            } else {
                0
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes 1,000 nodes and 10,000 containers into the store at `path`
/// (through the store itself: one fsync'd commit each).
fn fill_store(path: &Path) -> (Store, Vec<pb::Container>) {
    let store = Store::open(path).unwrap();
    let containers: Vec<pb::Container> = (0..CONTAINERS).map(container).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..NODES {
            store.put_node(node(i)).await.unwrap();
        }
        for c in &containers {
            store.insert_container(c.clone(), None).await.unwrap();
        }
    });
    println!(
        "(store written: {NODES} nodes, {CONTAINERS} containers, {} bytes, in {:.1} s)",
        std::fs::metadata(path).unwrap().len(),
        started.elapsed().as_secs_f64()
    );
    (store, containers)
}

/// Times `n` decisions of the create path (minus the store insert); prints
/// a row.
fn decisions(what: &str, store: &Store, registry: &Registry, req: &Request, n: usize) {
    let decide = || {
        let usage = store.node_usage();
        registry.with_views(&usage, |views| {
            placement::place(views, req)
                .map(|n| n.name.to_string())
                .map_err(|e| e.to_string())
        })
    };
    let expected = decide();
    for _ in 0..n / 20 {
        let _ = std::hint::black_box(decide());
    }
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let got = std::hint::black_box(decide());
        lat.push(t.elapsed());
        assert_eq!(got, expected);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let p = |q: f64| lat[((n as f64 * q) as usize).min(n - 1)].as_secs_f64() * 1e6;
    let outcome = match &expected {
        Ok(node) => node.clone(),
        Err(e) => format!("no fit ({} bytes of reasons)", e.len()),
    };
    println!(
        "| {what} | {n} | {:.0} | {:.1} µs | {:.1} µs | {outcome} |",
        n as f64 / secs,
        p(0.5),
        p(0.99)
    );
}

fn decisions_per_second(state: &Path) -> Vec<pb::Container> {
    let (store, containers) = fill_store(state);
    let registry = Registry::new(
        store.nodes().unwrap(),
        Duration::from_secs(3600),
        Default::default(),
    );
    for i in 0..NODES {
        registry.observe(&heartbeat(i));
        // As `Cluster::ingest_stats` records each node's report.
        let sample = node_stats(i, SystemTime::now());
        registry.set_memory_used(&node_name(i), placement::memory_used_percent(&sample));
    }
    assert_eq!(registry.ready_nodes().len(), NODES);
    let base = Request {
        milli_cpus: 1000,
        memory_bytes: 2 * GIB,
        memory_threshold_percent: 90.0,
        ..Default::default()
    };
    let eu = HashMap::from([("zone".to_string(), "eu".to_string())]);
    let n = 20_000;
    println!("| request | decisions | decisions/s | p50 | p99 | chosen |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (what, req) in [
        ("spread", base.clone()),
        (
            "binpack",
            Request {
                strategy: Strategy::Binpack,
                ..base.clone()
            },
        ),
        (
            "spread, zone=eu",
            Request {
                constraints: eu.clone(),
                ..base.clone()
            },
        ),
        (
            "binpack, zone=eu",
            Request {
                strategy: Strategy::Binpack,
                constraints: eu.clone(),
                ..base.clone()
            },
        ),
        (
            "nothing fits (64 CPUs)",
            Request {
                milli_cpus: 64_000,
                ..base.clone()
            },
        ),
    ] {
        decisions(what, &store, &registry, &req, n);
    }
    breakdown(&store, &registry, &base, &eu);
    containers
}

/// Where a decision's time goes: each step alone, averaged.
fn breakdown(store: &Store, registry: &Registry, base: &Request, eu: &HashMap<String, String>) {
    let time = |what: &str, f: &mut dyn FnMut()| {
        let rounds = 2_000;
        let t = Instant::now();
        for _ in 0..rounds {
            f();
        }
        println!(
            "| {what} | {:.1} µs |",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
        );
    };
    println!("| step (spread unless said) | per decision |");
    println!("| --- | --- |");
    time("`Store::node_usage`", &mut || {
        drop(std::hint::black_box(store.node_usage()))
    });
    let usage = store.node_usage();
    time(
        "`Registry::with_views` (building the 1,000 views)",
        &mut || {
            registry.with_views(&usage, |views| {
                std::hint::black_box(views.len());
            })
        },
    );
    let empty = std::collections::BTreeMap::new();
    time(
        "`Registry::with_views` with no usage (the walk alone)",
        &mut || {
            registry.with_views(&empty, |views| {
                std::hint::black_box(views.len());
            })
        },
    );
    registry.with_views(&usage, |views| {
        time("`placement::place`", &mut || {
            let _ = std::hint::black_box(placement::place(views, base));
        });
        let constrained = Request {
            constraints: eu.clone(),
            ..base.clone()
        };
        time("`placement::place`, zone=eu", &mut || {
            let _ = std::hint::black_box(placement::place(views, &constrained));
        });
    });
}

/// CPU time `pid` has used so far (user + system).
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces): utime and stime
    // are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    // In clock ticks of USER_HZ, 100 on Linux.
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory_of(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn init(data: &Path) {
    let out = Command::new(bin("devctl-scheduler"))
        .args(["init", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The scheduler serving `data`, with its address.
fn serve(data: &Path, nats: &Nats, log: PathBuf) -> (Proc, String) {
    let mut cmd = Command::new(bin("devctl-scheduler"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--nats", &nats.url])
        .arg("--data-dir")
        .arg(data);
    let proc = Proc::spawn("devctl-scheduler", cmd, log).unwrap();
    let addr = wait_until("scheduler address", Duration::from_secs(60), || {
        std::fs::read_to_string(data.join("scheduler.addr"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    (proc, format!("https://{addr}"))
}

/// `devctl ARGS -o json` as admin, parsed.
fn devctl_json(data: &Path, server: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin("devctl"))
        .args(args)
        .args(["-o", "json"])
        .env("DEVCTL_SERVER", server)
        .env("DEVCTL_TLS_DIR", data.join("clients/admin"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "devctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A simulated fleet of `NODES` agents: heartbeats and stats reports every
/// second (as the agent's defaults), and inventory replies matching the
/// store, until `stop` is dropped.
fn fleet(
    url: String,
    tls_dir: PathBuf,
    containers: Vec<pb::Container>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // The scheduler's bus certificate: one identity that may speak
            // for every simulated node.
            let client = devctl_tests::bus_options(&tls_dir)
                .connect(&url)
                .await
                .unwrap();
            let mut by_node: HashMap<String, Vec<pb::Container>> = HashMap::new();
            for c in containers {
                by_node.entry(c.status().node.clone()).or_default().push(c);
            }
            let mut commands = client
                .subscribe(format!("{}.node.*.cmd", bus::ROOT))
                .await
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut stop = stop;
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {
                        for i in 0..NODES {
                            let hb = heartbeat(i);
                            let on_node = &by_node[&hb.node];
                            let report = pb::StatsReport {
                                node: Some(node_stats(i, SystemTime::now())),
                                containers: on_node
                                    .iter()
                                    .filter(|c| c.status().state == pb::ContainerState::Running as i32)
                                    .map(|c| pb::ContainerStats {
                                        name: c.name.clone(),
                                        id: c.id.clone(),
                                        node: c.status().node.clone(),
                                        time: Some(SystemTime::now().into()),
                                        cpu_percent: 12.0,
                                        memory_bytes: 300 << 20,
                                        memory_limit_bytes: c.spec().resources.unwrap_or_default().memory_bytes,
                                        pids: 12,
                                        ..Default::default()
                                    })
                                    .collect(),
                            };
                            client
                                .publish(bus::heartbeat_subject(&hb.node), hb.encode_to_vec().into())
                                .await
                                .unwrap();
                            client
                                .publish(bus::stats_subject(&hb.node), report.encode_to_vec().into())
                                .await
                                .unwrap();
                        }
                        client.flush().await.unwrap();
                    }
                    Some(msg) = commands.next() => {
                        let node = msg.subject.split('.').nth(2).unwrap_or_default().to_string();
                        let command = pb::AgentCommand::decode(msg.payload).unwrap();
                        let result = match command.command {
                            Some(pb::agent_command::Command::Inventory(_)) => {
                                pb::agent_reply::Result::Inventory(pb::Inventory {
                                    containers: by_node[&node]
                                        .iter()
                                        .map(|c| pb::EngineContainer {
                                            id: c.id.clone(),
                                            name: c.name.clone(),
                                            runtime_id: c.status().runtime_id.clone(),
                                            state: c.status().state,
                                            exit_code: c.status().exit_code,
                                            start_time: c.status().start_time,
                                            engine_status: if c.status().state == pb::ContainerState::Running as i32 {
                                                "running"
                                            } else {
                                                "exited"
                                            }
                                            .into(),
                                            image: c.spec().image.clone(),
                                            ..Default::default()
                                        })
                                        .collect(),
                                    workspaces: by_node[&node]
                                        .iter()
                                        .filter(|c| !c.spec().workspace.is_empty())
                                        .map(|c| pb::EngineWorkspace {
                                            name: c.spec().workspace.clone(),
                                            size_bytes: -1,
                                            ..Default::default()
                                        })
                                        .collect(),
                                })
                            }
                            other => panic!("the simulated fleet only answers inventory requests, got {other:?}"),
                        };
                        let reply = pb::AgentReply { result: Some(result) };
                        if let Some(to) = msg.reply {
                            client.publish(to, reply.encode_to_vec().into()).await.unwrap();
                        }
                    }
                }
            }
        });
    })
}

fn memory(scratch: &Path, full: &Path, containers: Vec<pb::Container>) {
    println!("| scheduler holding | VmRSS | VmHWM (peak) |");
    println!("| --- | --- | --- |");

    // An empty store, for comparison.
    let empty = scratch.join("empty");
    init(&empty);
    // Each data directory is its own cluster (CA), with its own bus.
    let nats = Nats::start(&scratch.join("nats-empty"), &empty).unwrap();
    let (proc, server) = serve(&empty, &nats, scratch.join("scheduler-empty.log"));
    assert_eq!(devctl_json(&empty, &server, &["ls"]), serde_json::json!([]));
    devctl_json(&empty, &server, &["nodes"]);
    std::thread::sleep(Duration::from_secs(5));
    let (rss, hwm) = memory_of(proc.pid());
    println!("| empty store, no nodes | {} | {} |", mib(rss), mib(hwm));
    drop(proc);
    drop(nats);

    // 10,000 containers on 1,000 nodes that never heartbeat (all down).
    let nats = Nats::start(&scratch.join("nats-full"), full).unwrap();
    let (proc, server) = serve(full, &nats, scratch.join("scheduler-full.log"));
    let listed = devctl_json(full, &server, &["ls"]);
    assert_eq!(listed.as_array().unwrap().len(), CONTAINERS);
    let nodes = devctl_json(full, &server, &["nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), NODES);
    std::thread::sleep(Duration::from_secs(5));
    let (rss, hwm) = memory_of(proc.pid());
    println!(
        "| {CONTAINERS} containers, {NODES} nodes (down), after `ls` and `nodes` | {} | {} |",
        mib(rss),
        mib(hwm)
    );

    // The same with every node live: heartbeats, stats and inventory syncs.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let fleet = fleet(nats.url.clone(), full.join("bus"), containers, stop_rx);
    wait_until("every node ready", Duration::from_secs(120), || {
        let nodes = devctl_json(full, &server, &["nodes"]);
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "NODE_STATE_READY")
            .then_some(())
    });
    // Inventory syncs, the reconciliation round (30 s) and a full stats
    // cache: the steady state of a live cluster.
    let (cpu_before, at) = (cpu_time(proc.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(35));
    let cpu = (cpu_time(proc.pid()) - cpu_before).as_secs_f64() / at.elapsed().as_secs_f64();
    let listed = devctl_json(full, &server, &["ls"]);
    assert_eq!(listed.as_array().unwrap().len(), CONTAINERS);
    let stats = devctl_json(full, &server, &["nodes"]);
    assert_eq!(stats.as_array().unwrap().len(), NODES);
    let (rss, hwm) = memory_of(proc.pid());
    println!(
        "| {CONTAINERS} containers, {NODES} live nodes (heartbeats, stats, inventory), after `ls` and `nodes` | {} | {} |",
        mib(rss),
        mib(hwm)
    );
    println!(
        "(live: the scheduler used {:.0} % of one core for 1,000 heartbeats and 1,000 stats reports/s)",
        cpu * 100.0
    );
    let _ = stop_tx.send(());
    fleet.join().unwrap();
    let log = std::fs::read_to_string(scratch.join("scheduler-full.log")).unwrap_or_default();
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    println!("(scheduler log: {warnings} warnings)");
    drop(proc);
}

/// `cargo bench --bench placement [-- decisions|memory]` runs one part.
fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    devctl_tests::ensure_prerequisites();
    let dir = tempfile::Builder::new()
        .prefix("devctl-bench-")
        .tempdir()
        .unwrap();
    let full = dir.path().join("full");
    init(&full);
    // The store is closed again before the scheduler opens it.
    let containers = if run("decisions") {
        println!(
            "placement decisions on one thread, {NODES} ready nodes, {CONTAINERS} containers in the store:"
        );
        decisions_per_second(&full.join("state.redb"))
    } else {
        fill_store(&full.join("state.redb")).1
    };
    if run("memory") {
        println!("scheduler memory:");
        memory(dir.path(), &full, containers);
    }
}
