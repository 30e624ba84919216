//! Stats benchmarks (deploy/bench.sh stats):
//!
//! 1. Ingest: the scheduler's own stats path (`bus::StatsReports` decoding
//!    and `stats::StatsCache::ingest`) on a single-threaded runtime, i.e.
//!    one core, fed through a real nats-server by a publisher thread
//!    simulating nodes. Reported as reports/s and container samples/s, for
//!    reports of 1 and of 50 containers.
//! 2. Latency: a real cluster (agent with a 100 ms stats interval); a
//!    WatchStats client measures from the agent's timestamp on each node
//!    sample to its arrival (same host, same clock). p50/p99.

use std::time::{Duration, Instant, SystemTime};

use devctl_proto::{
    bus,
    pb::{self, stats_service_client::StatsServiceClient},
    pki::Bundle,
};
use devctl_scheduler::stats::StatsCache;
use devctl_tests::{Nats, TestCluster};
use prost::Message;
use tonic::transport::Endpoint;

fn report(node: &str, containers: usize) -> pb::StatsReport {
    let now = Some(SystemTime::now().into());
    pb::StatsReport {
        node: Some(pb::NodeStats {
            node: node.into(),
            time: now,
            cpu_percent: 12.5,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 8 << 30,
            ..Default::default()
        }),
        containers: (0..containers)
            .map(|i| pb::ContainerStats {
                name: format!("{node}-c{i}"),
                id: format!("id-{node}-{i}"),
                node: node.into(),
                time: now,
                cpu_percent: 3.0,
                memory_bytes: 100 << 20,
                memory_limit_bytes: 1 << 30,
                pids: 4,
                ..Default::default()
            })
            .collect(),
    }
}

fn ingest(nats: &Nats, data: &std::path::Path, containers: usize, reports: usize) {
    let url = nats.url.clone();
    let tls_dir = data.join("bus");
    // The scheduler side: one thread, one core.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let bus = devctl_scheduler::bus::Bus::connect(&url, &tls_dir)
                .await
                .unwrap();
            let mut sub = bus.stats_reports().await.unwrap();
            bus.flush().await.unwrap();
            ready_tx.send(()).unwrap();
            let cache = StatsCache::default();
            let mut n = 0;
            let mut first = None;
            let mut last = Instant::now();
            // Core NATS drops messages for a subscriber that falls behind:
            // count what arrives until the stream goes quiet.
            while n < reports {
                match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                    Ok(Some((_, r))) => {
                        first.get_or_insert_with(Instant::now);
                        cache.ingest(r);
                        n += 1;
                        last = Instant::now();
                    }
                    _ => break,
                }
            }
            (n, last.duration_since(first.unwrap()))
        })
    });
    ready_rx.recv().unwrap();
    // Simulated nodes: encoded reports published as fast as NATS takes them.
    let url = nats.url.clone();
    let tls_dir = data.join("bus");
    let publisher = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = devctl_tests::bus_options(&tls_dir)
                .connect(&url)
                .await
                .unwrap();
            let payloads: Vec<(String, bytes::Bytes)> = (0..100)
                .map(|i| {
                    let node = format!("node-{i}");
                    (
                        bus::stats_subject(&node),
                        report(&node, containers).encode_to_vec().into(),
                    )
                })
                .collect();
            for i in 0..reports {
                let (subject, payload) = &payloads[i % payloads.len()];
                client
                    .publish(subject.clone(), payload.clone())
                    .await
                    .unwrap();
                if i % 1000 == 999 {
                    // Keep the server's buffer for a slow subscriber bounded.
                    client.flush().await.unwrap();
                }
            }
            client.flush().await.unwrap();
        })
    });
    let (received, elapsed) = consumer.join().unwrap();
    publisher.join().unwrap();
    let secs = elapsed.as_secs_f64();
    println!(
        "| {containers} per report | {received} of {reports} received | {:.0} reports/s | {:.0} samples/s |",
        received as f64 / secs,
        (received * (containers + 1)) as f64 / secs
    );
}

fn latency() {
    let c = TestCluster::start_with(&["lat"], &["--stats-interval", "100ms"]).unwrap();
    let bundle = Bundle::load(&c.admin_tls()).unwrap();
    let server = c.server.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lat = rt.block_on(async move {
        devctl_proto::pki::install_crypto_provider();
        let ch = Endpoint::from_shared(server)
            .unwrap()
            .tls_config(bundle.client_tls())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = StatsServiceClient::new(ch);
        let mut stream = client
            .watch_stats(pb::WatchStatsRequest {
                names: vec![],
                nodes: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut lat = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while lat.len() < 300 && Instant::now() < deadline {
            let u = stream.message().await.unwrap().unwrap();
            if let Some(pb::stats_update::Sample::Node(n)) = u.sample {
                let sent = SystemTime::try_from(n.time.unwrap()).unwrap();
                lat.push(SystemTime::now().duration_since(sent).unwrap_or_default());
            }
        }
        lat
    });
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "| agent -> WatchStats client | {} samples | p50 {:.2} ms | p99 {:.2} ms | max {:.2} ms |",
        lat.len(),
        p(0.5),
        p(0.99),
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    devctl_tests::ensure_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    devctl_tests::init_data_dir(&data).unwrap();
    let nats = Nats::start(dir.path(), &data).unwrap();
    println!("stats ingest, scheduler path on one core (decode + cache), via nats-server:");
    ingest(&nats, &data, 1, 400_000);
    ingest(&nats, &data, 50, 40_000);
    println!("stats latency:");
    latency();
}
