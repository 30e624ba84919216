//! The scheduler's side of the bus: the only file of the scheduler that
//! speaks NATS. Commands go out as requests on `devctl.node.<node>.cmd`;
//! heartbeats come in on `devctl.node.*.heartbeat`.

use std::time::Duration;

use async_nats::{
    Client, ConnectOptions, RequestErrorKind, Subscriber,
    jetstream::{self, consumer, stream},
};
use devctl_proto::{bus, pb};
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
    /// Connects to `url`, retrying in the background if the server is not up
    /// yet.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let client = ConnectOptions::new()
            .name("devctl-scheduler")
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                tracing::info!(%event, "bus connection");
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(Self {
            jetstream: jetstream::new(client.clone()),
            client,
        })
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
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                "scheduler",
                consumer::pull::Config {
                    durable_name: Some("scheduler".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
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
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        let stream = self
            .jetstream
            .get_stream(bus::EVENTS_STREAM)
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
        Ok(EventReader { messages, pending })
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
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
}

impl EngineEvents {
    /// The next engine event; `None` when the consumer ends.
    pub async fn next(&mut self) -> Option<Result<EngineEventMsg, BusError>> {
        let msg = self.messages.next().await?;
        Some(
            msg.map(|msg| EngineEventMsg {
                event: pb::EngineEvent::decode(msg.payload.clone()),
                msg,
            })
            .map_err(|e| BusError::Nats(e.to_string())),
        )
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

impl EventReader {
    /// The next event with its sequence number, and how many matching
    /// events were stored after it when it was delivered.
    pub async fn next(&mut self) -> Option<Result<(pb::Event, u64), BusError>> {
        let msg = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(BusError::Nats(e.to_string()))),
        };
        let (seq, pending) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.pending),
            Err(e) => return Some(Err(BusError::Nats(e.to_string()))),
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
