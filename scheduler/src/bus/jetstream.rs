//! JetStream: the node-events work queue (engine events, read through the
//! scheduler's durable consumer and acknowledged once handled) and the
//! event history, with the ordered read the audit log shares.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use devctl_proto::{bus, pb};
use futures::StreamExt;
use prost::Message;

use super::{Bus, BusError};

impl Bus {
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

    /// The event history's first and last sequence numbers now, and when
    /// the stream was created (a stream made again starts its numbers
    /// again).
    pub async fn event_history_bounds(
        &self,
    ) -> Result<(u64, u64, std::time::SystemTime), BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        let mut stream = self
            .jetstream
            .get_stream(bus::EVENTS_STREAM)
            .await
            .map_err(|e| nats(&e))?;
        let info = stream.info().await.map_err(|e| nats(&e))?;
        Ok((
            info.state.first_sequence,
            info.state.last_sequence,
            info.created.into(),
        ))
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
    pub(super) async fn ordered_read(
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
pub(super) async fn next_ordered(
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
