//! API latency benchmark: GetContainer and ListContainers over mutual TLS on
//! loopback at a fixed total rate from concurrent clients. Two figures per
//! call: latency from each request's scheduled time (open loop: a slow
//! server cannot hide queueing, but the client's 1 ms timer granularity is
//! included), and service time from the actual send to the reply.
//!
//!   deploy/bench.sh api   (DEVCTL_BENCH_RATE=1000 req/s, DEVCTL_BENCH_SECS=10,
//!                          DEVCTL_BENCH_CLIENTS=16, 20 containers listed)

use std::time::{Duration, Instant};

use devctl_proto::{
    pb::{
        GetContainerRequest, ListContainersRequest,
        container_service_client::ContainerServiceClient,
    },
    pki::Bundle,
};
use devctl_tests::{IMAGE, TestCluster};
use tonic::transport::Endpoint;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let rate = env("DEVCTL_BENCH_RATE", 1000);
    let secs = env("DEVCTL_BENCH_SECS", 10);
    let clients = env("DEVCTL_BENCH_CLIENTS", 16);
    // One identity far above the default per-identity rate limit: off.
    let c = TestCluster::start_opts(&["bench"], &[], &["--rate-limit", "0"]).expect("cluster");
    for i in 0..20 {
        c.devctl(&["create", &format!("api-{i:02}"), "--image", IMAGE])
            .ok();
    }
    let bundle = Bundle::load(&c.admin_tls()).unwrap();
    let server = c.server.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (get, list) = rt.block_on(async move {
        devctl_proto::pki::install_crypto_provider();
        let per_client = Duration::from_secs_f64(clients as f64 / rate as f64);
        let total = secs * rate / clients;
        let mut tasks = Vec::new();
        for k in 0..clients {
            let channel = Endpoint::from_shared(server.clone())
                .unwrap()
                .tls_config(bundle.client_tls())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = ContainerServiceClient::new(channel);
            tasks.push(tokio::spawn(async move {
                // (from scheduled time, from actual send)
                let (mut get, mut list) = (Vec::new(), Vec::new());
                // Stagger the clients across one period.
                let start = Instant::now() + per_client.mul_f64(k as f64 / clients as f64);
                for i in 0..total {
                    let due = start + per_client * i as u32;
                    tokio::time::sleep_until(due.into()).await;
                    let sent = Instant::now();
                    if i % 2 == 0 {
                        client
                            .get_container(GetContainerRequest {
                                name: format!("api-{:02}", i % 20),
                            })
                            .await
                            .unwrap();
                        get.push((due.elapsed(), sent.elapsed()));
                    } else {
                        let r = client
                            .list_containers(ListContainersRequest::default())
                            .await
                            .unwrap();
                        assert_eq!(r.get_ref().containers.len(), 20);
                        list.push((due.elapsed(), sent.elapsed()));
                    }
                }
                (get, list)
            }));
        }
        let (mut get, mut list) = (Vec::new(), Vec::new());
        for t in tasks {
            let (g, l) = t.await.unwrap();
            get.extend(g);
            list.extend(l);
        }
        (get, list)
    });
    println!(
        "API over mTLS, {rate} req/s total from {clients} clients for {secs}s (half Get, half List of 20):"
    );
    println!("| call | requests | p50 / p99 from scheduled time | p50 / p99 service time | max |");
    for (name, v) in [("GetContainer", get), ("ListContainers", list)] {
        let mut scheduled: Vec<Duration> = v.iter().map(|x| x.0).collect();
        let mut service: Vec<Duration> = v.iter().map(|x| x.1).collect();
        scheduled.sort();
        service.sort();
        println!(
            "| {name} | {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} ms |",
            v.len(),
            pct(&scheduled, 0.50),
            pct(&scheduled, 0.99),
            pct(&service, 0.50),
            pct(&service, 0.99),
            scheduled[scheduled.len() - 1].as_secs_f64() * 1e3
        );
    }
}
