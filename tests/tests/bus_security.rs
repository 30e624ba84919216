//! The locked-down bus: a real nats-server configured by `devctl-scheduler
//! init`, real TLS, real certificates from `issue-cert`.
//!
//! Denials are shown by order, never by waiting: NATS keeps the order of
//! one connection's messages, so a forbidden message published before an
//! allowed marker would reach an observer before the marker; the observer
//! sees the marker and not the forbidden message. The server's
//! "Permissions Violation" errors are checked too.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use async_nats::{Client, Event, RequestErrorKind, ServerError, Subscriber, jetstream};
use devctl_proto::bus;
use devctl_scheduler::datadir::DataDir;
use devctl_tests::{Nats, TestCluster, bin, bus_options, init_data_dir, issue_cert_into};
use futures::FutureExt as _;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

const DEADLINE: Duration = Duration::from_secs(15);

/// A bus with nodes `node-a` and `node-b` admitted, and nothing else.
struct Bus {
    nats: Nats,
    data: PathBuf,
    tmp: TempDir,
}

impl Bus {
    fn start() -> Self {
        devctl_tests::ensure_prerequisites();
        let tmp = tempfile::Builder::new()
            .prefix("devctl-bus-")
            .tempdir()
            .unwrap();
        let data = tmp.path().join("data");
        init_data_dir(&data).unwrap();
        for node in ["node-a", "node-b"] {
            issue_cert_into(&data, node, "agent", &tmp.path().join(node)).unwrap();
        }
        issue_cert_into(&data, "alice", "admin", &tmp.path().join("alice")).unwrap();
        let nats = Nats::start(tmp.path(), &data).unwrap();
        Self { nats, data, tmp }
    }

    fn agent_tls(&self, node: &str) -> PathBuf {
        self.tmp.path().join(node)
    }

    fn scheduler_tls(&self) -> PathBuf {
        self.data.join("bus")
    }

    /// Connects as `node`'s agent (with the agent's inbox prefix).
    async fn agent(&self, node: &str) -> Conn {
        Conn::open(
            bus_options(&self.agent_tls(node)).custom_inbox_prefix(bus::agent_inbox_prefix(node)),
            &self.nats.url,
        )
        .await
        .unwrap()
    }

    /// Connects as the scheduler.
    async fn scheduler(&self) -> Conn {
        Conn::open(
            bus_options(&self.scheduler_tls()).custom_inbox_prefix(bus::SCHEDULER_INBOX_PREFIX),
            &self.nats.url,
        )
        .await
        .unwrap()
    }
}

/// A connection and the events (errors, disconnects) of its client.
struct Conn {
    client: Client,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Conn {
    async fn open(
        options: async_nats::ConnectOptions,
        url: &str,
    ) -> Result<Self, async_nats::ConnectError> {
        let (tx, events) = mpsc::unbounded_channel();
        let client = tokio::time::timeout(
            DEADLINE,
            options
                .event_callback(move |ev| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(ev);
                    }
                })
                .connect(url),
        )
        .await
        .expect("connect answers in time")?;
        Ok(Self { client, events })
    }

    /// Returns once the server has processed everything this agent
    /// connection sent so far: a request nobody serves comes back as "no
    /// responders" only after that (nobody serves renewals in these tests).
    async fn sync_agent(&self, node: &str) {
        let err = self
            .client
            .request(bus::renew_subject(node), "".into())
            .await
            .expect_err("nobody answers renewals here");
        assert_eq!(err.kind(), RequestErrorKind::NoResponders, "{err}");
    }

    /// The same for the scheduler's connection (JetStream answers).
    async fn sync_scheduler(&self) {
        self.client
            .request("$JS.API.INFO", "".into())
            .await
            .expect("JetStream answers");
    }

    /// Waits for the server's permissions violation about `subject`.
    async fn violation(&mut self, subject: &str) {
        let wanted = format!("\"{subject}\"");
        tokio::time::timeout(DEADLINE, async {
            loop {
                match self.events.recv().await.expect("client events") {
                    Event::ServerError(ServerError::Other(msg))
                        if msg.to_lowercase().contains("permissions violation")
                            && msg.contains(&wanted) =>
                    {
                        return;
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no permissions violation for {subject}"));
    }
}

/// Reads `sub` until a message on `marker` arrives; returns the subjects
/// that came before it.
async fn until_marker(sub: &mut Subscriber, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(msg) = sub.next().await {
            if msg.subject.as_str() == marker {
                return;
            }
            seen.push(msg.subject.to_string());
        }
        panic!("subscription ended before the marker");
    })
    .await
    .unwrap_or_else(|_| panic!("the marker on {marker} did not arrive"));
    seen
}

#[tokio::test]
async fn a_client_without_a_cluster_certificate_cannot_connect() {
    let bus = Bus::start();
    let url = &bus.nats.url;
    let ca = bus.data.join("ca/ca.pem");

    // TLS, trusting the cluster CA, but no client certificate.
    let no_cert = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.clone());
    assert!(Conn::open(no_cert, url).await.is_err());

    // No TLS at all.
    let plain = url.replace("tls://", "nats://");
    assert!(
        Conn::open(async_nats::ConnectOptions::new(), &plain)
            .await
            .is_err()
    );

    // A certificate from another CA.
    let other = bus.tmp.path().join("other");
    init_data_dir(&other).unwrap();
    let foreign = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.clone())
        .add_client_certificate(
            other.join("clients/admin/cert.pem"),
            other.join("clients/admin/key.pem"),
        );
    assert!(Conn::open(foreign, url).await.is_err());

    // The cluster's own certificates of API users are no bus users.
    for who in [bus.tmp.path().join("alice"), bus.data.join("clients/admin")] {
        let err = Conn::open(bus_options(&who), url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{} got onto the bus", who.display()));
        assert_eq!(
            err.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{err}"
        );
    }

    // The agents and the scheduler can.
    bus.agent("node-a").await;
    bus.scheduler().await;
}

#[tokio::test]
async fn an_agent_cannot_publish_for_another_node() {
    let bus = Bus::start();
    let observer = bus.scheduler().await;
    let mut seen = observer.client.subscribe("devctl.>").await.unwrap();
    let mut inbox = observer
        .client
        .subscribe(format!("{}.>", bus::SCHEDULER_INBOX_PREFIX))
        .await
        .unwrap();
    observer.sync_scheduler().await;

    let mut a = bus.agent("node-a").await;
    let (b_data, _) = bus::stream_subjects("node-b", "s1");
    let forbidden = [
        bus::heartbeat_subject("node-b"),
        bus::engine_events_subject("node-b"),
        bus::stats_subject("node-b"),
        bus::renew_subject("node-b"),
        b_data,
        bus::command_subject("node-b"),
        bus::command_subject("node-a"),
        bus::node_event_subject("node-a"),
        bus::container_event_subject("node-b", "web"),
        format!("{}.forged", bus::SCHEDULER_INBOX_PREFIX),
    ];
    for subject in &forbidden {
        a.client
            .publish(subject.clone(), "forged".into())
            .await
            .unwrap();
    }
    let marker = bus::heartbeat_subject("node-a");
    a.client
        .publish(marker.clone(), "own".into())
        .await
        .unwrap();
    a.client.flush().await.unwrap();

    assert_eq!(until_marker(&mut seen, &marker).await, Vec::<String>::new());
    // The forged reply was published before the marker, on the same
    // connection, so it would be here by now (with the reply to the
    // observer's own sync request).
    while let Some(Some(msg)) = inbox.next().now_or_never() {
        assert!(
            !msg.subject.ends_with(".forged"),
            "the scheduler's inbox received {}",
            msg.subject
        );
    }
    for subject in &forbidden {
        a.violation(subject).await;
    }
}

#[tokio::test]
async fn an_agent_answers_its_commands() {
    let bus = Bus::start();
    let a = bus.agent("node-a").await;
    let mut commands = a
        .client
        .subscribe(bus::command_subject("node-a"))
        .await
        .unwrap();
    a.sync_agent("node-a").await;
    let scheduler = bus.scheduler().await;
    let request = tokio::spawn(async move {
        scheduler
            .client
            .request(bus::command_subject("node-a"), "ping".into())
            .await
    });
    let cmd = tokio::time::timeout(DEADLINE, commands.next())
        .await
        .unwrap()
        .unwrap();
    let reply_to = cmd.reply.expect("a request has a reply subject");
    assert!(
        reply_to.starts_with(bus::SCHEDULER_INBOX_PREFIX),
        "{reply_to}"
    );
    a.client.publish(reply_to, "pong".into()).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, request)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&reply.payload[..], b"pong");
}

#[tokio::test]
async fn an_agents_engine_events_reach_jetstream_and_forged_ones_do_not() {
    let bus = Bus::start();
    let scheduler = bus.scheduler().await;
    let js = jetstream::new(scheduler.client.clone());
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: bus::NODE_EVENTS_STREAM.into(),
            subjects: vec![bus::ALL_ENGINE_EVENTS.into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();

    let mut a = bus.agent("node-a").await;
    // Forged, then real: the real one is acknowledged (its ack comes to
    // the agent's own inbox), and the stream holds only it.
    a.client
        .publish(bus::engine_events_subject("node-b"), "forged".into())
        .await
        .unwrap();
    let a_js = jetstream::new(a.client.clone());
    let ack = a_js
        .publish(bus::engine_events_subject("node-a"), "real".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 1);
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 1);
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        stored.subject.as_str(),
        bus::engine_events_subject("node-a")
    );
    a.violation(&bus::engine_events_subject("node-b")).await;

    // The agent cannot use the JetStream API (e.g. delete the queue).
    let delete = format!("$JS.API.STREAM.DELETE.{}", bus::NODE_EVENTS_STREAM);
    a.client.publish(delete.clone(), "".into()).await.unwrap();
    a.violation(&delete).await;
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn an_agent_cannot_read_another_nodes_commands_streams_or_replies() {
    let bus = Bus::start();
    let mut a = bus.agent("node-a").await;
    let (_, b_control) = bus::stream_subjects("node-b", "s1");
    let b_input = bus::exec_input_subject("node-b", "s1");
    let forbidden = [
        bus::command_subject("node-b"),
        "devctl.node.*.cmd".to_string(),
        "devctl.>".into(),
        bus::heartbeat_subject("node-b"),
        bus::stream_subjects("node-b", "*").1,
        bus::exec_input_subject("node-b", "*"),
        "_INBOX.>".into(),
        format!("{}.>", bus::SCHEDULER_INBOX_PREFIX),
        format!("{}.>", bus::agent_inbox_prefix("node-b")),
        ">".into(),
    ];
    let mut subs = Vec::new();
    for subject in &forbidden {
        subs.push((
            subject.clone(),
            a.client.subscribe(subject.clone()).await.unwrap(),
        ));
    }
    let own = bus::command_subject("node-a");
    let mut own_sub = a.client.subscribe(own.clone()).await.unwrap();
    a.sync_agent("node-a").await;
    for subject in &forbidden {
        a.violation(subject).await;
    }

    // What the forbidden subscriptions would have received, then the marker
    // on the agent's own subject, all from one connection.
    let scheduler = bus.scheduler().await;
    for subject in [
        bus::command_subject("node-b"),
        bus::heartbeat_subject("node-b"),
        b_control,
        b_input,
        format!("{}.x.1", bus::SCHEDULER_INBOX_PREFIX),
        format!("{}.x.1", bus::agent_inbox_prefix("node-b")),
    ] {
        scheduler
            .client
            .publish(subject, "secret".into())
            .await
            .unwrap();
    }
    scheduler
        .client
        .publish(own.clone(), "marker".into())
        .await
        .unwrap();
    scheduler.client.flush().await.unwrap();
    assert_eq!(until_marker(&mut own_sub, &own).await, Vec::<String>::new());
    for (subject, sub) in &mut subs {
        if let Some(Some(msg)) = sub.next().now_or_never() {
            panic!("subscription {subject} received {}", msg.subject);
        }
    }
}

#[tokio::test]
async fn a_removed_agent_is_disconnected_and_readmitted_one_connects() {
    let bus = Bus::start();
    let mut a = bus.agent("node-a").await;
    let dir = DataDir::new(&bus.data);
    let reloads = bus.nats.reloads();
    assert!(dir.remove_agent("node-a").unwrap(), "nats-server signalled");
    bus.nats.wait_reloaded(reloads);
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Event::Disconnected = a.events.recv().await.expect("client events") {
                return;
            }
        }
    })
    .await
    .expect("the removed agent is disconnected");
    let err = Conn::open(bus_options(&bus.agent_tls("node-a")), &bus.nats.url)
        .await
        .err()
        .expect("a removed agent cannot connect");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    // Node b is unaffected.
    bus.agent("node-b").await;

    let serial = devctl_proto::pki::Bundle::load(&bus.agent_tls("node-a"))
        .unwrap()
        .serial()
        .unwrap();
    let reloads = bus.nats.reloads();
    assert!(dir.admit_agent("node-a", &serial).unwrap());
    bus.nats.wait_reloaded(reloads);
    bus.agent("node-a").await;

    // Each certificate is a user of its own: a new certificate for node-a
    // (a re-issue, a re-join) shuts the old one out.
    let second = bus.tmp.path().join("node-a-second");
    let reloads = bus.nats.reloads();
    issue_cert_into(&bus.data, "node-a", "agent", &second).unwrap();
    bus.nats.wait_reloaded(reloads);
    Conn::open(
        bus_options(&second).custom_inbox_prefix(bus::agent_inbox_prefix("node-a")),
        &bus.nats.url,
    )
    .await
    .expect("the new certificate logs in");
    let err = Conn::open(bus_options(&bus.agent_tls("node-a")), &bus.nats.url)
        .await
        .err()
        .expect("the replaced certificate is shut out");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
}

fn agent_output(args: &[&str], dir: Option<&Path>) -> String {
    let mut cmd = Command::new(bin("devctl-agent"));
    cmd.args(args).env_remove("DEVCTL_DATA_DIR");
    if let Some(dir) = dir {
        cmd.arg("--data-dir").arg(dir);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agent_refuses_to_start_without_its_own_certificate() {
    let bus_dir = tempfile::tempdir().unwrap();
    let data = bus_dir.path().join("data");
    init_data_dir(&data).unwrap();
    let err = agent_output(&["--node", "node-a"], None);
    assert!(
        err.contains("--data-dir") && err.contains("issue-cert --role agent --name node-a"),
        "{err}"
    );
    let b = bus_dir.path().join("b");
    issue_cert_into(&data, "node-b", "agent", &b.join("tls")).unwrap();
    let err = agent_output(&["--node", "node-a"], Some(&b));
    assert!(
        err.contains("node-b") && err.contains("\"node-a\""),
        "{err}"
    );
    let admin = bus_dir.path().join("admin");
    issue_cert_into(&data, "node-a", "admin", &admin.join("tls")).unwrap();
    let err = agent_output(&["--node", "node-a"], Some(&admin));
    assert!(err.contains("(admin)"), "{err}");
}

#[test]
fn an_agent_with_its_certificate_joins_the_cluster() {
    let c = TestCluster::start(&["a"]);
    let node = c.node("a");
    let n = c.devctl(&["nodes", &node, "-o", "json"]).json();
    assert_eq!(n["state"], "NODE_STATE_READY");
    assert!(c.agent_tls("a").join("cert.pem").exists());
    assert!(c.nats_url().starts_with("tls://"));
}

/// The bus confines the subject an agent publishes on, not the reply
/// subject it names: the scheduler answers a renewal only into the asking
/// agent's own inbox, never where the request says (e.g. the audit log).
#[tokio::test]
async fn the_scheduler_answers_renewals_only_into_the_agents_inbox() {
    let c = tokio::task::spawn_blocking(|| TestCluster::start(&["a"]))
        .await
        .unwrap();
    let node = c.node("a");
    let agent = Conn::open(
        bus_options(&c.agent_tls("a")).custom_inbox_prefix(bus::agent_inbox_prefix(&node)),
        &c.nats.url,
    )
    .await
    .unwrap();
    let observer = Conn::open(
        bus_options(&c.data_dir().join("bus")).custom_inbox_prefix(bus::SCHEDULER_INBOX_PREFIX),
        &c.nats.url,
    )
    .await
    .unwrap();
    let marker = format!("devctl.test.{}", uuid::Uuid::new_v4().simple());
    let mut seen = observer.client.subscribe("devctl.>").await.unwrap();
    // Subscribed for sure once its own marker comes back.
    observer
        .client
        .publish(marker.clone(), "m".into())
        .await
        .unwrap();
    until_marker(&mut seen, &marker).await;

    // A forged reply subject, then a proper request: the scheduler answers
    // in order, so once the proper answer is in, the forged one was handled.
    let bad = devctl_proto::pb::RenewRequest {
        csr_pem: "not a request".into(),
        current_serial: String::new(),
    };
    use prost::Message as _;
    agent
        .client
        .publish_with_reply(
            bus::renew_subject(&node),
            "devctl.audit",
            bad.encode_to_vec().into(),
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        DEADLINE,
        agent
            .client
            .request(bus::renew_subject(&node), bad.encode_to_vec().into()),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = devctl_proto::pb::RenewReply::decode(answer.payload).unwrap();
    assert!(
        answer.certificate.is_none() && answer.error.contains("csr_pem"),
        "{answer:?}"
    );

    // Everything the server routed to the observer before its next marker.
    observer
        .client
        .publish(marker.clone(), "m".into())
        .await
        .unwrap();
    let before = until_marker(&mut seen, &marker).await;
    assert!(
        !before.iter().any(|s| s == "devctl.audit"),
        "the scheduler published the agent's chosen reply subject: {before:?}"
    );
    drop(c);
}
