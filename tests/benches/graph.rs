//! Benchmark (a `cargo bench` target, harness = false): the graph
//! projection's throughput and lag during a burst of 1,000 container
//! records, against the test Bolt/Cypher server (ArcadeDB; or the server
//! `DEVCTL_TEST_NEO4J_URI` names).
//!
//! The pipeline is the scheduler's own, from a store commit to the graph:
//! a real store (redb, fsync per commit) publishing to its change feed, the
//! real projector (`devctl_scheduler::graph::project::start`) following the
//! feed and a real nats-server's event history, and writing batches to the
//! real server over Bolt. What is left out is what happens before a commit
//! (the API, the agent, Docker): the projection only ever sees commits.
//!
//! Measured, in one run:
//! 1. burst: 1,000 containers recorded (pending), then each marked
//!    running: 2,000 changes as fast as the store commits them, with the
//!    projector following; the largest lag seen (changes, seconds; sampled
//!    every 20 ms) and the time from the first commit until the graph holds
//!    the last one;
//! 2. the same 1,000 deleted;
//! 3. catch-up: 2,000 more changes committed while the projection was
//!    stopped, and the time for a new one to write them (connect, read the
//!    cursor from the graph, follow the feed);
//! 4. recovery: 2,000 changes committed while the graph server was down,
//!    and the time from its restart until the graph holds them (this
//!    includes the projection's reconnect backoff, up to 15 s);
//! 5. a full re-projection (`devctl graph resync`, and what every
//!    scheduler start does) of the 2,000 live containers, which the graph
//!    already holds;
//! 6. the peer: 1,000 rows written by one `UNWIND … MERGE` statement from
//!    a plain neo4rs client (what the server itself takes for the simplest
//!    write).
//!
//!   deploy/bench.sh graph      (release build)

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use devctl_proto::pb;
use devctl_scheduler::{
    bus::Bus,
    graph::{GraphConfig, Secret, project},
    store::Store,
};
use devctl_tests::{GraphServer, Nats, init_data_dir};
use tokio_util::sync::CancellationToken;

const RECORDS: usize = 1000;

fn container(i: usize) -> pb::Container {
    let now = prost_types::Timestamp::from(SystemTime::now());
    pb::Container {
        name: format!("bench-{i:04}"),
        id: uuid::Uuid::new_v4().to_string(),
        owner: format!("user-{}", i % 10),
        create_time: Some(now),
        update_time: Some(now),
        spec: Some(pb::ContainerSpec {
            image: format!("devctl/bench:{}", i % 5),
            resources: Some(pb::Resources {
                milli_cpus: 500,
                memory_bytes: 256 << 20,
            }),
            ..Default::default()
        }),
        status: Some(pb::ContainerStatus {
            state: pb::ContainerState::Pending as i32,
            node: format!("node-{}", i % 3),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Largest lag seen while `work` runs (the commits and the wait until the
/// graph holds them), sampling every 20 ms.
async fn sampled<F: std::future::Future<Output = ()>>(
    p: &devctl_scheduler::graph::Projection,
    work: F,
) -> (u64, f64) {
    let stop = CancellationToken::new();
    let sampler = {
        let (p, stop) = (p.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut changes, mut secs) = (0u64, 0f64);
            while !stop.is_cancelled() {
                let s = p.status();
                changes = changes.max(s.lag_changes);
                secs = secs.max(s.lag_seconds);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (changes, secs)
        })
    };
    work.await;
    stop.cancel();
    sampler.await.unwrap()
}

/// Waits until the projection has written the feed's latest revision.
async fn caught_up(p: &devctl_scheduler::graph::Projection, store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = p.status();
        if s.connected && s.projected_revision == store.feed().latest() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projection did not catch up: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn row(what: &str, changes: usize, elapsed: Duration, lag: Option<(u64, f64)>) {
    let rate = changes as f64 / elapsed.as_secs_f64();
    let lag = lag.map_or("-".to_string(), |(c, s)| format!("{c} changes, {s:.2} s"));
    println!(
        "| {what} | {changes} | {:.2} s | {rate:.0} changes/s | {lag} |",
        elapsed.as_secs_f64()
    );
}

fn main() {
    let tmp = tempfile::Builder::new()
        .prefix("devctl-bench-graph-")
        .tempdir()
        .unwrap();
    let mut server = GraphServer::start(&tmp.path().join("graph")).expect("graph server");
    let data_dir = tmp.path().join("data");
    init_data_dir(&data_dir).unwrap();
    let nats = Nats::start(tmp.path(), &data_dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    devctl_proto::pki::install_crypto_provider();
    let config = GraphConfig {
        uri: server.uri.clone(),
        user: server.user.clone(),
        password: Secret::new(server.password.clone()),
        database: Some(server.database.clone()),
        timeout: Duration::from_secs(10),
    };
    println!(
        "graph server: {} ({})",
        server.uri,
        if server.is_external() {
            "external"
        } else {
            "ArcadeDB 26.10.2, Bolt plugin"
        }
    );
    println!("| run | changes | time | throughput | largest lag |");
    println!("| --- | --- | --- | --- | --- |");
    let stop = CancellationToken::new();
    let store = Store::open(&tmp.path().join("state.redb")).unwrap();
    let (projection, task) = rt.block_on(async {
        let bus = Bus::connect(&nats.url, &data_dir.join("bus"))
            .await
            .unwrap();
        bus.ensure_streams(Duration::from_secs(3600)).await.unwrap();
        let (p, task) = project::start(config.clone(), store.clone(), bus, stop.clone());
        caught_up(&p, &store).await;
        (p, task)
    });
    let records: Arc<Vec<pb::Container>> = Arc::new((0..RECORDS).map(container).collect());

    // 1. The burst.
    rt.block_on(async {
        let start = Instant::now();
        let mut committed = Duration::ZERO;
        let lag = sampled(&projection, async {
            for c in records.iter() {
                store.insert_container(c.clone(), None).await.unwrap();
            }
            for c in records.iter() {
                let mut c = c.clone();
                c.status.as_mut().unwrap().state = pb::ContainerState::Running as i32;
                store.update_container(c).await.unwrap();
            }
            committed = start.elapsed();
            caught_up(&projection, &store).await;
        })
        .await;
        println!(
            "| store commits alone (the burst's pace) | {} | {:.2} s | {:.0} changes/s | - |",
            2 * RECORDS,
            committed.as_secs_f64(),
            (2 * RECORDS) as f64 / committed.as_secs_f64()
        );
        row(
            "burst: 1,000 created + 1,000 running, projection following",
            2 * RECORDS,
            start.elapsed(),
            Some(lag),
        );
    });

    // 2. Deletions.
    rt.block_on(async {
        let start = Instant::now();
        let lag = sampled(&projection, async {
            for c in records.iter() {
                store.delete_container(&c.name).await.unwrap();
            }
            caught_up(&projection, &store).await;
        })
        .await;
        row("1,000 deleted", RECORDS, start.elapsed(), Some(lag));
    });

    // 3. Catch-up: the projection stopped while 2,000 changes were
    // committed, then started again (as after a reconnect).
    let bus_url = nats.url.clone();
    let bus_dir = data_dir.join("bus");
    let again = |store: &Store, from: usize| {
        let (store, records) = (store.clone(), records.clone());
        async move {
            for (i, c) in records.iter().enumerate() {
                let mut c = c.clone();
                c.name = format!("again-{}", from + i);
                c.id = uuid::Uuid::new_v4().to_string();
                store.insert_container(c.clone(), None).await.unwrap();
                c.status.as_mut().unwrap().state = pb::ContainerState::Running as i32;
                store.update_container(c).await.unwrap();
            }
        }
    };
    stop.cancel();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await })
        .expect("the projection stops")
        .unwrap();
    rt.block_on(again(&store, 0));
    let stop = CancellationToken::new();
    let start = Instant::now();
    let (projection, task) = rt.block_on(async {
        let bus = Bus::connect(&bus_url, &bus_dir).await.unwrap();
        let (p, task) = project::start(config.clone(), store.clone(), bus, stop.clone());
        caught_up(&p, &store).await;
        (p, task)
    });
    row(
        "catch-up: 2,000 changes committed while the projection was stopped",
        2 * RECORDS,
        start.elapsed(),
        None,
    );

    // 4. The server away: 2,000 changes while it is down, then the time
    // from its restart (with the reconnect backoff) until the graph holds
    // them.
    if !server.is_external() {
        server.stop().unwrap();
        rt.block_on(again(&store, RECORDS));
        server.restart().unwrap();
        let start = Instant::now();
        rt.block_on(caught_up(&projection, &store));
        row(
            "recovery: 2,000 changes made while the server was down, from its restart",
            2 * RECORDS,
            start.elapsed(),
            None,
        );
    }

    // 5. A full re-projection of the store (2,000 live containers here).
    rt.block_on(async {
        let before = projection.status().resyncs;
        let live = store.snapshot().await.unwrap().containers.len();
        let start = Instant::now();
        projection.resync();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let s = projection.status();
            if s.resyncs > before && !s.resyncing && s.connected {
                break;
            }
            assert!(Instant::now() < deadline, "resync did not finish: {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        row(
            &format!("full resync of {live} containers (devctl graph resync)"),
            live,
            start.elapsed(),
            None,
        );
    });

    // 6. The peer: one statement from a plain client.
    rt.block_on(async {
        let neo = neo4rs::ConfigBuilder::default()
            .uri(server.uri.as_str())
            .user(server.user.as_str())
            .password(server.password.as_str())
            .db(server.database.as_str())
            .build()
            .unwrap();
        let graph = neo4rs::Graph::connect(neo).await.unwrap();
        let rows: Vec<neo4rs::BoltType> = (0..RECORDS)
            .map(|i| {
                let mut m = neo4rs::BoltMap::new();
                m.put("id".into(), format!("peer-{i}").into());
                m.put("name".into(), format!("peer-{i}").into());
                m.put("image".into(), format!("devctl/bench:{}", i % 5).into());
                neo4rs::BoltType::Map(m)
            })
            .collect();
        let start = Instant::now();
        let mut txn = graph.start_txn().await.unwrap();
        txn.run(
            neo4rs::query(
                "UNWIND $rows AS r MERGE (c:Container {id: r.id}) SET c.name = r.name, c.image = r.image",
            )
            .param("rows", rows),
        )
        .await
        .unwrap();
        txn.commit().await.unwrap();
        row(
            "peer: 1,000 rows, one UNWIND MERGE from a plain neo4rs client",
            RECORDS,
            start.elapsed(),
            None,
        );
    });

    stop.cancel();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the projection stops")
            .unwrap();
    });
    drop(nats);
}
