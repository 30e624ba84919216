//! The tunnel pipes (devctl_proto::pipe) over a real nats-server with the
//! cluster's bus permissions: the scheduler's identity on one end, an
//! agent's on the other, as a tunnel uses them.

use std::{path::PathBuf, time::Duration};

use async_nats::{Client, RequestErrorKind};
use devctl_proto::{
    bus, pb,
    pipe::{PipeError, PipeReceiver, PipeSender},
};
use devctl_tests::{Nats, bus_options, init_data_dir, issue_cert_into};
use futures::StreamExt;
use tempfile::TempDir;

struct Bus {
    nats: Nats,
    data: PathBuf,
    tmp: TempDir,
}

impl Bus {
    fn start() -> Self {
        devctl_tests::ensure_prerequisites();
        let tmp = tempfile::Builder::new()
            .prefix("devctl-pipe-")
            .tempdir()
            .unwrap();
        let data = tmp.path().join("data");
        init_data_dir(&data).unwrap();
        issue_cert_into(&data, "node-a", "agent", &tmp.path().join("node-a")).unwrap();
        let nats = Nats::start(tmp.path(), &data).unwrap();
        Self { nats, data, tmp }
    }

    async fn scheduler(&self) -> Client {
        bus_options(&self.data.join("bus"))
            .custom_inbox_prefix(bus::SCHEDULER_INBOX_PREFIX)
            .connect(&self.nats.url)
            .await
            .unwrap()
    }

    async fn agent(&self) -> Client {
        bus_options(&self.tmp.path().join("node-a"))
            .custom_inbox_prefix(bus::agent_inbox_prefix("node-a"))
            .connect(&self.nats.url)
            .await
            .unwrap()
    }
}

/// Both directions of a tunnel `id` of node-a, set up as a tunnel sets
/// them up: (scheduler's up receiver, scheduler's down sender, agent's
/// down receiver, agent's up sender).
///
/// The order comes from the tunnel's command and reply: the server handles
/// each connection's messages in order, so the agent that receives the
/// command knows the scheduler's subscriptions made before it are in
/// place, and the scheduler that receives the reply knows the same of the
/// agent's. (A client's `flush()` is no such barrier: it says the bytes
/// left this process, not that the server has handled them.)
async fn tunnel(
    sched: &Client,
    agent: &Client,
    id: &str,
) -> (PipeReceiver, PipeSender, PipeReceiver, PipeSender) {
    let subject = bus::command_subject("node-a");
    let mut commands = agent.subscribe(subject.clone()).await.unwrap();
    let (up_data, up_control) = bus::stream_subjects("node-a", id);
    let (up_rx, up_setup) = PipeReceiver::open(sched.clone(), up_data, up_control)
        .await
        .unwrap();
    let (down_data, down_credit) = bus::down_subjects("node-a", id);
    let down_setup = pb::StreamSetup {
        data_subject: down_data,
        control_subject: down_credit,
        initial_credit: bus::STREAM_WINDOW,
    };
    let down_tx = PipeSender::new(sched.clone(), &down_setup).await.unwrap();
    // The command, sent again while the agent's subscription is not yet
    // in place (the server then answers "no responders" at once).
    let command = async {
        loop {
            match sched.request(subject.clone(), "open".into()).await {
                Ok(_) => return,
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("the command: {e}"),
            }
        }
    };
    let answer = async {
        let command = commands.next().await.expect("the command");
        let (down_rx, _) = PipeReceiver::open(
            agent.clone(),
            down_setup.data_subject.clone(),
            down_setup.control_subject.clone(),
        )
        .await
        .unwrap();
        let up_tx = PipeSender::new(agent.clone(), &up_setup).await.unwrap();
        let to = command.reply.expect("a reply subject");
        agent.publish(to, "opened".into()).await.unwrap();
        (down_rx, up_tx)
    };
    let ((), (down_rx, up_tx)) = within("the command and its reply", async {
        tokio::join!(command, answer)
    })
    .await;
    (up_rx, down_tx, down_rx, up_tx)
}

/// `f`, or a failure naming `what` after 30 seconds (never a hang).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 30 s"))
}

/// Deterministic bytes that differ at every position of a chunk.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

async fn read_all(rx: &mut PipeReceiver) -> Result<Vec<u8>, PipeError> {
    let mut got = Vec::new();
    while let Some(piece) = rx.recv().await {
        got.extend(piece?);
    }
    Ok(got)
}

async fn send_all(mut tx: PipeSender, bytes: Vec<u8>) {
    for piece in bytes.chunks(100_003) {
        tx.send(piece).await.unwrap();
    }
    tx.finish(None).await;
}

#[tokio::test]
async fn a_tunnel_carries_bytes_both_ways_in_order_under_the_bus_permissions() {
    let bus = Bus::start();
    let (sched, agent) = (bus.scheduler().await, bus.agent().await);
    let (mut up_rx, down_tx, mut down_rx, up_tx) = tunnel(&sched, &agent, "t1").await;
    // Eight MiB each way, at once, in odd-sized writes: more than the
    // window, so credit has to flow both ways.
    let down_bytes = pattern(8 << 20, 1);
    let up_bytes = pattern(8 << 20, 2);
    let (_, _, got_down, got_up) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            send_all(down_tx, down_bytes.clone()),
            send_all(up_tx, up_bytes.clone()),
            read_all(&mut down_rx),
            read_all(&mut up_rx),
        )
    })
    .await
    .expect("16 MiB within a minute");
    assert!(got_down.unwrap() == down_bytes, "down bytes differ");
    assert!(got_up.unwrap() == up_bytes, "up bytes differ");
}

#[tokio::test]
async fn a_reader_that_stops_reading_stops_the_sender_at_the_window() {
    let bus = Bus::start();
    let (sched, agent) = (bus.scheduler().await, bus.agent().await);
    let (_up_rx, mut down_tx, mut down_rx, _up_tx) = tunnel(&sched, &agent, "t2").await;
    let chunk = vec![7u8; bus::STREAM_CHUNK_MAX];
    // The whole window goes out without a single read...
    for _ in 0..bus::STREAM_WINDOW {
        tokio::time::timeout(Duration::from_secs(10), down_tx.send(&chunk))
            .await
            .expect("within the window")
            .unwrap();
    }
    // ...and not one chunk more while nobody reads.
    let blocked = tokio::time::timeout(Duration::from_millis(500), down_tx.send(&chunk)).await;
    assert!(blocked.is_err(), "a chunk beyond the window went out");
    // Reading half the window moves it: the sender goes on.
    for _ in 0..bus::STREAM_WINDOW / 2 {
        let piece = within("a chunk", down_rx.recv()).await;
        assert_eq!(piece.unwrap().unwrap().len(), chunk.len());
    }
    tokio::time::timeout(Duration::from_secs(10), down_tx.send(&chunk))
        .await
        .expect("credit arrived")
        .unwrap();
}

#[tokio::test]
async fn an_end_with_an_error_a_cancel_and_silence_reach_the_other_side() {
    let bus = Bus::start();
    let (sched, agent) = (bus.scheduler().await, bus.agent().await);
    // The sender's error ends the reader with it.
    let (mut up_rx, mut down_tx, mut down_rx, mut up_tx) = tunnel(&sched, &agent, "t3").await;
    up_tx.finish(Some("the container stopped")).await;
    assert_eq!(
        within("the end", up_rx.recv()).await,
        Some(Err(PipeError::Remote("the container stopped".into())))
    );
    assert_eq!(within("nothing more", up_rx.recv()).await, None);
    // A reader that cancels stops its sender.
    down_rx.cancel().await;
    let why = tokio::time::timeout(Duration::from_secs(10), down_tx.closed())
        .await
        .expect("the cancel arrives");
    assert_eq!(why, PipeError::Cancelled);

    // A reader that vanishes without a word (its process died: no more
    // keepalives) is noticed by its sender after the idle limit.
    let (up_data, up_control) = bus::stream_subjects("node-a", "t4");
    let (gone, setup) = PipeReceiver::open(sched.clone(), up_data, up_control)
        .await
        .unwrap();
    let mut tx = PipeSender::with_idle_limit(agent.clone(), &setup, Duration::from_secs(1))
        .await
        .unwrap();
    drop(gone);
    let why = tokio::time::timeout(Duration::from_secs(10), tx.closed())
        .await
        .expect("silence is noticed");
    assert_eq!(why, PipeError::Silent(Duration::from_secs(1)));
}
