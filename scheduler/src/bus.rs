//! The scheduler's side of the bus: the only file of the scheduler that
//! speaks NATS. Commands go out as requests on `devctl.node.<node>.cmd`;
//! heartbeats come in on `devctl.node.*.heartbeat`.
//!
//! One file on purpose: it is the only module that speaks NATS (the house
//! rule for outside systems): subjects, JetStream streams and consumers,
//! and the request/stream plumbing live together.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    Client, ClientError, ConnectOptions, Event, RequestErrorKind, Subscriber,
    jetstream::{self, consumer, stream},
};
use devctl_proto::{
    bus, pb,
    pki::{self, Bundle},
};
use futures::StreamExt;
use prost::Message;
use thiserror::Error;

/// Why a command got no usable reply.
#[derive(Debug, Error)]
pub enum BusError {
    /// Nobody listens on the node's command subject: its agent is not
    /// connected.
    #[error("the agent of node {0:?} is not connected to the bus")]
    NoResponders(String),
    /// The agent did not answer in time.
    #[error("the agent of node {node:?} did not answer within {timeout:?}")]
    Timeout {
        /// The node.
        node: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The reply could not be decoded.
    #[error("the agent of node {0:?} sent an undecodable reply")]
    BadReply(String),
    /// Any other NATS failure.
    #[error("NATS: {0}")]
    Nats(String),
}

/// The scheduler's bus connection; clones share it.
#[derive(Debug, Clone)]
pub struct Bus {
    client: Client,
    jetstream: jetstream::Context,
}

impl Bus {
    /// Connects to `url` over TLS with the bundle in `tls_dir` (`ca.pem`,
    /// `cert.pem`, `key.pem`: the data directory's `bus/`), retrying in the
    /// background if the server is not up yet. The files are read again
    /// at every reconnect.
    pub async fn connect(url: &str, tls_dir: &Path) -> Result<Self, BusError> {
        // Fails early, with the file's name, on a missing file or an
        // unprotected key.
        Bundle::load(tls_dir).map_err(|e| BusError::Nats(format!("bus certificate: {e}")))?;
        // What was last said about failed attempts: 0 nothing, 1 plain
        // text server, 2 unreachable.
        let told = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let url_owned = url.to_string();
        let conf = tls_dir
            .parent()
            .unwrap_or(tls_dir)
            .join("nats")
            .join("nats.conf");
        let client = ConnectOptions::new()
            .name("devctl-scheduler")
            .require_tls(true)
            .add_root_certificates(tls_dir.join(pki::CA_FILE))
            .add_client_certificate(tls_dir.join(pki::CERT_FILE), tls_dir.join(pki::KEY_FILE))
            .custom_inbox_prefix(bus::SCHEDULER_INBOX_PREFIX)
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let told = Arc::clone(&told);
                let (url, conf) = (url_owned.clone(), conf.clone());
                async move {
                    // async-nats says only "IO error" for each failed
                    // attempt (it retries with backoff, up to 4 s): say once
                    // what is wrong, and again only when that changes.
                    let Event::ClientError(ClientError::Other(kind)) = &event else {
                        told.store(0, Ordering::Relaxed);
                        tracing::info!(%event, "bus connection");
                        return;
                    };
                    let probe = bus::probe_transport(&url, Duration::from_secs(2)).await;
                    let condition = match probe {
                        Some(bus::Transport::Plain) => 1,
                        _ => 2,
                    };
                    if told.swap(condition, Ordering::Relaxed) == condition {
                        tracing::debug!(%event, "bus connection attempt failed; retrying");
                    } else if condition == 1 {
                        tracing::error!(
                            "the bus at {url} does not speak TLS; start nats-server with {}; retrying",
                            conf.display()
                        );
                    } else {
                        tracing::warn!(error = %kind, "the bus at {url} is not reachable; retrying with backoff");
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(Self {
            jetstream: jetstream::new(client.clone()),
            client,
        })
    }

    /// Subscribes to every node's stats reports.
    pub async fn stats_reports(&self) -> Result<StatsReports, BusError> {
        let sub = self
            .client
            .subscribe(bus::ALL_STATS)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(StatsReports { sub })
    }

    /// Subscribes to every node's heartbeats.
    pub async fn heartbeats(&self) -> Result<Heartbeats, BusError> {
        let sub = self
            .client
            .subscribe(bus::ALL_HEARTBEATS)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(Heartbeats { sub })
    }

    /// Sends `command` to `node`'s agent and waits up to `timeout` for the
    /// reply.
    pub async fn command(
        &self,
        node: &str,
        command: pb::agent_command::Command,
        timeout: Duration,
    ) -> Result<pb::agent_reply::Result, BusError> {
        let payload = pb::AgentCommand {
            command: Some(command),
        }
        .encode_to_vec();
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        let reply = self
            .client
            .send_request(bus::command_subject(node), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders(node.to_string()),
                RequestErrorKind::TimedOut => BusError::Timeout {
                    node: node.to_string(),
                    timeout,
                },
                _ => BusError::Nats(e.to_string()),
            })?;
        pb::AgentReply::decode(reply.payload)
            .ok()
            .and_then(|r| r.result)
            .ok_or_else(|| BusError::BadReply(node.to_string()))
    }

    /// Creates the JetStream streams if missing: the node-events work queue
    /// and the event history, kept for `retention`.
    pub async fn ensure_streams(&self, retention: Duration) -> Result<(), BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: bus::NODE_EVENTS_STREAM.into(),
                subjects: vec![bus::ALL_ENGINE_EVENTS.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                max_age: Duration::from_secs(24 * 3600),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| nats(&e))?;
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: bus::EVENTS_STREAM.into(),
                subjects: vec![bus::ALL_EVENTS.into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: retention,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| nats(&e))?;
        Ok(())
    }

    /// The engine events of every node, through the scheduler's durable
    /// consumer: each must be acknowledged once handled, or it comes again.
    pub async fn engine_events(&self) -> Result<EngineEvents, BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        let stream = self
            .jetstream
            .get_stream(bus::NODE_EVENTS_STREAM)
            .await
            .map_err(|e| nats(&e))?;
        // Created, or updated to this configuration (a consumer made by an
        // older scheduler gets the delivery bound).
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("scheduler".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: ENGINE_EVENT_MAX_DELIVER,
                max_ack_pending: ENGINE_EVENTS_IN_FLIGHT,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(&e))?;
        let messages = consumer.messages().await.map_err(|e| nats(&e))?;
        Ok(EngineEvents { messages })
    }

    /// Appends `event` to the history under `subject`; `id` de-duplicates
    /// retries. Returns its sequence number.
    pub async fn publish_event(
        &self,
        subject: String,
        event: &pb::Event,
        id: &str,
    ) -> Result<u64, BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        let msg = jetstream::message::PublishMessage::build()
            .payload(event.encode_to_vec().into())
            .message_id(id);
        let ack = self
            .jetstream
            .send_publish(subject, msg)
            .await
            .map_err(|e| nats(&e))?
            .await
            .map_err(|e| nats(&e))?;
        Ok(ack.sequence)
    }

    /// Reads the event history matching `filter` (a subject filter) from
    /// `start`, in order.
    pub async fn watch_events(
        &self,
        filter: String,
        start: EventStart,
    ) -> Result<EventReader, BusError> {
        let (messages, pending) = self.ordered_read(bus::EVENTS_STREAM, filter, start).await?;
        Ok(EventReader { messages, pending })
    }

    /// An ordered read of `stream` (subjects matching `filter`; empty:
    /// all) from `start`, and how many messages it held when it began.
    async fn ordered_read(
        &self,
        stream: &str,
        filter: String,
        start: EventStart,
    ) -> Result<(consumer::pull::Ordered, u64), BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        let stream = self
            .jetstream
            .get_stream(stream)
            .await
            .map_err(|e| nats(&e))?;
        let deliver_policy = match start {
            EventStart::All => consumer::DeliverPolicy::All,
            EventStart::Sequence(start_sequence) => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            }
            EventStart::Time(t) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(t),
            },
        };
        let mut consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(&e))?;
        let pending = consumer.info().await.map_err(|e| nats(&e))?.num_pending;
        let messages = consumer.messages().await.map_err(|e| nats(&e))?;
        Ok((messages, pending))
    }

    /// Opens a stream from `node` (see the stream protocol in bus.proto):
    /// `build` makes the command from the stream's setup and id.
    /// `Err(Ok(reply))`: the agent refused with `reply`.
    pub async fn open_stream(
        &self,
        node: &str,
        build: impl FnOnce(pb::StreamSetup, &str) -> pb::agent_command::Command,
        timeout: Duration,
    ) -> Result<StreamReader, Result<pb::agent_reply::Result, BusError>> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (data_subject, control_subject) = bus::stream_subjects(node, &id);
        let sub = self
            .client
            .subscribe(data_subject.clone())
            .await
            .map_err(|e| Err(BusError::Nats(e.to_string())))?;
        let setup = pb::StreamSetup {
            data_subject,
            control_subject: control_subject.clone(),
            initial_credit: bus::STREAM_WINDOW,
        };
        match self.command(node, build(setup, &id), timeout).await {
            Ok(pb::agent_reply::Result::Opened(_)) => {}
            Ok(other) => return Err(Ok(other)),
            Err(e) => return Err(Err(e)),
        }
        let window_end = Arc::new(AtomicU64::new(u64::from(bus::STREAM_WINDOW)));
        // Repeats the window end on a timer, whether or not the reader is
        // being read: a reader held up by a slow client must not look dead
        // to the agent, and a lost window message is healed.
        let keepalive = tokio::spawn({
            let (client, subject, window_end) = (
                self.client.clone(),
                control_subject.clone(),
                Arc::clone(&window_end),
            );
            async move {
                let mut tick = tokio::time::interval(bus::STREAM_KEEPALIVE);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let ctl = pb::StreamControl {
                        window_end: window_end.load(Ordering::Relaxed),
                        cancel: false,
                    };
                    let _ = client
                        .publish(subject.clone(), ctl.encode_to_vec().into())
                        .await;
                }
            }
        });
        Ok(StreamReader {
            node: node.to_string(),
            client: self.client.clone(),
            sub,
            control_subject,
            next_seq: 0,
            granted: u64::from(bus::STREAM_WINDOW),
            window_end,
            done: false,
            exit_code: None,
            keepalive,
        })
    }

    /// Sends input to exec session `id` on `node`.
    pub fn exec_input(&self, node: &str, id: &str) -> ExecInputSender {
        ExecInputSender {
            client: self.client.clone(),
            subject: bus::exec_input_subject(node, id),
        }
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
    }
}

/// The reading end of an agent's output stream. Credit is granted as chunks
/// are read, so an unread stream stops its agent; call
/// [`StreamReader::close`] when done.
#[derive(Debug)]
pub struct StreamReader {
    node: String,
    client: Client,
    sub: Subscriber,
    control_subject: String,
    next_seq: u64,
    // The window end last sent, and the one the keepalive repeats.
    granted: u64,
    window_end: Arc<AtomicU64>,
    done: bool,
    exit_code: Option<i32>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Sends an exec's input to its agent.
#[derive(Debug, Clone)]
pub struct ExecInputSender {
    client: Client,
    subject: String,
}

impl ExecInputSender {
    /// Sends one input message and waits until the agent has carried it out
    /// (written its bytes to the command's stdin): one message in flight per
    /// session, so a fast client is slowed to the command's pace (through
    /// the gRPC stream's flow control) instead of filling the agent's
    /// buffers. No timeout: a command may leave its stdin unread for long;
    /// the caller stops waiting when the session ends.
    pub async fn send(&self, input: pb::ExecInput) -> Result<(), BusError> {
        let request = async_nats::Request::new()
            .payload(input.encode_to_vec().into())
            .timeout(None);
        self.client
            .send_request(self.subject.clone(), request)
            .await
            .map(drop)
            .map_err(|e| BusError::Nats(e.to_string()))
    }
}

impl StreamReader {
    async fn control(&self, ctl: pb::StreamControl) {
        if let Err(e) = self
            .client
            .publish(self.control_subject.clone(), ctl.encode_to_vec().into())
            .await
        {
            tracing::warn!(error = %e, "stream control not sent");
        }
    }

    /// The next piece of output; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Result<(pb::OutputStream, Vec<u8>), BusError>> {
        if self.done {
            return None;
        }
        {
            let msg = self.sub.next().await;
            let Some(msg) = msg else {
                self.done = true;
                return Some(Err(BusError::Nats("stream subscription ended".into())));
            };
            let chunk = match pb::StreamChunk::decode(msg.payload) {
                Ok(c) => c,
                Err(e) => {
                    self.done = true;
                    return Some(Err(BusError::Nats(format!(
                        "undecodable stream chunk: {e}"
                    ))));
                }
            };
            if chunk.seq != self.next_seq {
                self.done = true;
                return Some(Err(BusError::Nats(format!(
                    "stream lost data: chunk {} arrived, {} expected",
                    chunk.seq, self.next_seq
                ))));
            }
            self.next_seq += 1;
            if chunk.end {
                self.done = true;
                self.exit_code = chunk.exit_code;
                return (!chunk.error.is_empty()).then_some(Err(BusError::Nats(chunk.error)));
            }
            // Move the window once half of it has been read.
            let wanted = self.next_seq + u64::from(bus::STREAM_WINDOW);
            if wanted - self.granted >= u64::from(bus::STREAM_WINDOW / 2) {
                self.granted = wanted;
                self.window_end.store(wanted, Ordering::Relaxed);
                self.control(pb::StreamControl {
                    window_end: wanted,
                    cancel: false,
                })
                .await;
            }
            Some(Ok((chunk.stream(), chunk.data)))
        }
    }

    /// The node the stream comes from.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The exit code the last chunk carried (exec streams).
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    /// Tells the agent to stop (unless the stream already ended).
    pub async fn close(mut self) {
        if !self.done {
            self.control(pb::StreamControl {
                window_end: 0,
                cancel: true,
            })
            .await;
        }
        let _ = self.sub.unsubscribe().await;
    }
}

/// Where a history read starts.
#[derive(Debug, Clone, Copy)]
pub enum EventStart {
    /// The oldest retained event.
    All,
    /// This sequence number.
    Sequence(u64),
    /// The first event at or after this time.
    Time(std::time::SystemTime),
}

/// How many times an engine event is delivered before it is given up.
pub const ENGINE_EVENT_MAX_DELIVER: i64 = 10;
/// Engine events delivered and not yet acknowledged, at most (the server
/// holds the rest back).
pub const ENGINE_EVENTS_IN_FLIGHT: i64 = 1024;

/// Engine events to handle, each acknowledged after handling.
pub struct EngineEvents {
    messages: consumer::pull::Stream,
}

impl std::fmt::Debug for EngineEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineEvents").finish_non_exhaustive()
    }
}

/// One engine event and its acknowledgement handle.
#[derive(Debug)]
pub struct EngineEventMsg {
    /// The node it is about: the one of the subject it came on (the bus
    /// lets an agent publish only on its own node's subjects).
    pub node: String,
    /// The event, or why it could not be decoded.
    pub event: Result<pb::EngineEvent, prost::DecodeError>,
    msg: jetstream::Message,
}

impl EngineEventMsg {
    /// Marks it handled.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.msg
            .ack()
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
    }

    /// Asks for it again after `delay` (its handling failed).
    pub async fn retry_after(&self, delay: Duration) -> Result<(), BusError> {
        self.msg
            .ack_with(jetstream::AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
    }

    /// Gives it up: it is not delivered again.
    pub async fn give_up(&self) -> Result<(), BusError> {
        self.msg
            .ack_with(jetstream::AckKind::Term)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
    }

    /// How many times it has been delivered, this time included.
    pub fn deliveries(&self) -> i64 {
        self.msg.info().map(|i| i.delivered).unwrap_or(1)
    }
}

impl EngineEvents {
    /// The next engine event about the node whose subject it came on;
    /// `None` when the consumer ends. One claiming another node is
    /// acknowledged (so it does not come again) and dropped.
    pub async fn next(&mut self) -> Option<Result<EngineEventMsg, BusError>> {
        loop {
            let msg = match self.messages.next().await? {
                Ok(msg) => msg,
                Err(e) => return Some(Err(BusError::Nats(e.to_string()))),
            };
            let Some(node) = bus::node_of_subject(&msg.subject).map(str::to_string) else {
                tracing::warn!(subject = %msg.subject, "engine event on a subject without a node dropped");
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "dropped engine event not acknowledged");
                }
                continue;
            };
            let event = pb::EngineEvent::decode(msg.payload.clone());
            if let Ok(ev) = &event
                && ev.node != node
            {
                tracing::warn!(subject = %msg.subject, claimed = %ev.node, "engine event for another node dropped");
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "dropped engine event not acknowledged");
                }
                continue;
            }
            return Some(Ok(EngineEventMsg { node, event, msg }));
        }
    }
}

/// An ordered read of the event history.
pub struct EventReader {
    messages: consumer::pull::Ordered,
    /// Matching events stored when the read began.
    pub pending: u64,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// The next message of an ordered read, with its stream sequence and how
/// many matching messages were stored after it when it was delivered.
async fn next_ordered(
    messages: &mut consumer::pull::Ordered,
) -> Option<Result<(jetstream::Message, u64, u64), BusError>> {
    let msg = match messages.next().await? {
        Ok(m) => m,
        Err(e) => return Some(Err(BusError::Nats(e.to_string()))),
    };
    Some(match msg.info() {
        Ok(i) => {
            let (seq, pending) = (i.stream_sequence, i.pending);
            Ok((msg, seq, pending))
        }
        Err(e) => Err(BusError::Nats(e.to_string())),
    })
}

impl EventReader {
    /// The next event with its sequence number, and how many matching
    /// events were stored after it when it was delivered.
    pub async fn next(&mut self) -> Option<Result<(pb::Event, u64), BusError>> {
        let (msg, seq, pending) = match next_ordered(&mut self.messages).await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        Some(match pb::Event::decode(msg.payload.clone()) {
            Ok(mut ev) => {
                ev.sequence = seq;
                Ok((ev, pending))
            }
            Err(e) => Err(BusError::Nats(format!("undecodable event {seq}: {e}"))),
        })
    }
}

/// The stream of stats reports.
#[derive(Debug)]
pub struct StatsReports {
    sub: Subscriber,
}

impl StatsReports {
    /// The next report with the node of the subject it came on (which
    /// its contents must name, if they name one); `None` once the
    /// subscription ends.
    pub async fn next(&mut self) -> Option<(String, pb::StatsReport)> {
        loop {
            let msg = self.sub.next().await?;
            let Some(node) = bus::node_of_subject(&msg.subject) else {
                continue;
            };
            let about = |n: &str| n.is_empty() || n == node;
            match pb::StatsReport::decode(msg.payload) {
                Ok(r)
                    if r.node.as_ref().is_some_and(|n| about(&n.node))
                        && r.containers.iter().all(|c| about(&c.node)) =>
                {
                    return Some((node.to_string(), r));
                }
                Ok(_) => tracing::warn!(node, "stats report about another node ignored"),
                Err(e) => tracing::warn!(node, error = %e, "undecodable stats report"),
            }
        }
    }
}

/// The stream of heartbeats.
#[derive(Debug)]
pub struct Heartbeats {
    sub: Subscriber,
}

impl Heartbeats {
    /// The next well-formed heartbeat whose node name matches its subject;
    /// `None` once the subscription ends.
    pub async fn next(&mut self) -> Option<pb::Heartbeat> {
        loop {
            let msg = self.sub.next().await?;
            let Some(node) = bus::node_of_subject(&msg.subject) else {
                continue;
            };
            match pb::Heartbeat::decode(msg.payload) {
                Ok(hb) if hb.node == node => return Some(hb),
                Ok(hb) => {
                    tracing::warn!(subject = %msg.subject, claimed = %hb.node, "heartbeat for another node ignored")
                }
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "undecodable heartbeat")
                }
            }
        }
    }
}

/// The JetStream stream of the audit log (one message per entry).
pub const AUDIT_STREAM: &str = "DEVCTL_AUDIT";
/// The subject audit entries are published on.
pub const AUDIT_SUBJECT: &str = "devctl.audit";

// The audit log (see `api::audit`): written by the scheduler alone.
impl Bus {
    /// Creates the audit stream if missing (file storage, entries kept for
    /// `retention`), or applies `retention` to the existing one.
    pub async fn ensure_audit_stream(
        &self,
        retention: Duration,
        max_bytes: i64,
    ) -> Result<(), BusError> {
        self.jetstream
            .create_or_update_stream(stream::Config {
                name: AUDIT_STREAM.into(),
                subjects: vec![AUDIT_SUBJECT.into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: retention,
                // 0: no size cap (JetStream's -1).
                max_bytes: if max_bytes > 0 { max_bytes } else { -1 },
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Nats(format!("JetStream: {e}")))?;
        Ok(())
    }

    /// The audit stream's configuration and state.
    async fn audit_info(&self) -> Result<stream::Info, BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        let mut stream = self
            .jetstream
            .get_stream(AUDIT_STREAM)
            .await
            .map_err(|e| nats(&e))?;
        stream.info().await.cloned().map_err(|e| nats(&e))
    }

    /// The audit log's size in bytes and its cap (`None`: no cap).
    pub async fn audit_usage(&self) -> Result<(u64, Option<u64>), BusError> {
        let info = self.audit_info().await?;
        let cap = u64::try_from(info.config.max_bytes).ok().filter(|c| *c > 0);
        Ok((info.state.bytes, cap))
    }

    /// Appends one entry to the audit log and waits for the server to
    /// store it.
    pub async fn publish_audit(&self, entry: &pb::AuditEntry) -> Result<(), BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        self.jetstream
            .publish(AUDIT_SUBJECT, entry.encode_to_vec().into())
            .await
            .map_err(|e| nats(&e))?
            .await
            .map_err(|e| nats(&e))?;
        Ok(())
    }

    /// Reads the audit log from `since` (or the oldest retained entry), in
    /// order, up to the entries stored when the read began; `last` (if
    /// not 0): from the `last`-th newest entry instead (a start sequence:
    /// the server seeks to it), and the caller skips any before `since`.
    pub async fn read_audit(
        &self,
        since: Option<std::time::SystemTime>,
        last: u64,
    ) -> Result<AuditReader, BusError> {
        let start = if last > 0 {
            let state = self.audit_info().await?.state;
            EventStart::Sequence(
                state
                    .last_sequence
                    .saturating_sub(last - 1)
                    .max(state.first_sequence)
                    .max(1),
            )
        } else {
            since.map_or(EventStart::All, EventStart::Time)
        };
        let (messages, pending) = self
            .ordered_read(AUDIT_STREAM, String::new(), start)
            .await?;
        Ok(AuditReader {
            messages,
            done: pending == 0,
        })
    }
}

/// A read of the audit log up to its end when the read began.
pub struct AuditReader {
    messages: consumer::pull::Ordered,
    done: bool,
}

impl std::fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl AuditReader {
    /// The next entry; `None` once caught up.
    pub async fn next(&mut self) -> Option<Result<pb::AuditEntry, BusError>> {
        if self.done {
            return None;
        }
        let (msg, _, pending) = match next_ordered(&mut self.messages).await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        self.done = pending == 0;
        Some(
            pb::AuditEntry::decode(msg.payload.clone())
                .map_err(|e| BusError::Nats(format!("undecodable audit entry: {e}"))),
        )
    }
}

/// Agents' certificate renewal requests.
#[derive(Debug)]
pub struct RenewRequests {
    client: Client,
    sub: Subscriber,
}

/// One renewal request: the node is the one of the subject it came on.
#[derive(Debug)]
pub struct RenewRequestMsg {
    /// The node whose agent asks.
    pub node: String,
    /// The request, or why it could not be decoded.
    pub request: Result<pb::RenewRequest, prost::DecodeError>,
    reply: Option<async_nats::Subject>,
}

impl Bus {
    /// Subscribes to every node's renewal requests.
    pub async fn renew_requests(&self) -> Result<RenewRequests, BusError> {
        let sub = self
            .client
            .subscribe(bus::ALL_RENEW)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(RenewRequests {
            client: self.client.clone(),
            sub,
        })
    }
}

impl RenewRequests {
    /// The next request with a node name in its subject; `None` once the
    /// subscription ends.
    pub async fn next(&mut self) -> Option<RenewRequestMsg> {
        loop {
            let msg = self.sub.next().await?;
            let Some(node) = bus::node_of_subject(&msg.subject) else {
                continue;
            };
            return Some(RenewRequestMsg {
                node: node.to_string(),
                request: pb::RenewRequest::decode(msg.payload),
                reply: msg.reply,
            });
        }
    }

    /// Answers `msg`, only into the asking agent's own inbox: the bus
    /// confines the subject an agent publishes on, not the reply subject it
    /// names, and the scheduler may publish almost anywhere.
    pub async fn answer(&self, msg: &RenewRequestMsg, reply: &pb::RenewReply) {
        let Some(to) = msg.reply.clone() else { return };
        if !to.starts_with(&format!("{}.", bus::agent_inbox_prefix(&msg.node))) {
            tracing::warn!(node = %msg.node, reply_to = %to, "renewal request with a reply subject outside its node's inbox dropped");
            return;
        }
        if let Err(e) = self.client.publish(to, reply.encode_to_vec().into()).await {
            tracing::warn!(node = %msg.node, error = %e, "renewal reply not sent");
        }
    }
}
