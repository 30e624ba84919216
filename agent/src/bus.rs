//! The agent's side of the bus: the only file of the agent that speaks NATS.
//! Commands come in on `devctl.node.<node>.cmd` (request/reply); heartbeats
//! go out on `devctl.node.<node>.heartbeat`.

use async_nats::{Client, ConnectOptions, Subscriber};
use devctl_proto::{bus, pb};
use futures::StreamExt;
use prost::Message;
use thiserror::Error;

/// A bus failure.
#[derive(Debug, Error)]
#[error("NATS: {0}")]
pub struct BusError(String);

fn bus_err(e: impl std::fmt::Display) -> BusError {
    BusError(e.to_string())
}

/// One node's connection to the bus.
#[derive(Debug, Clone)]
pub struct Bus {
    client: Client,
    jetstream: async_nats::jetstream::Context,
    node: String,
}

/// A command received from the scheduler, with where to send the reply.
#[derive(Debug)]
pub struct Incoming {
    /// The decoded command, or why it could not be decoded.
    pub command: Result<pb::AgentCommand, prost::DecodeError>,
    reply_to: Option<async_nats::Subject>,
}

impl Bus {
    /// Connects to `url`. If the server is not reachable yet, the client keeps
    /// trying in the background (as it does after any later disconnect).
    pub async fn connect(url: &str, node: &str) -> Result<Self, BusError> {
        let client = ConnectOptions::new()
            .name(format!("devctl-agent/{node}"))
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                tracing::info!(%event, "bus connection");
            })
            .connect(url)
            .await
            .map_err(bus_err)?;
        Ok(Self {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            node: node.to_string(),
        })
    }

    /// Subscribes to this node's commands.
    pub async fn commands(&self) -> Result<Commands, BusError> {
        let sub = self
            .client
            .subscribe(bus::command_subject(&self.node))
            .await
            .map_err(bus_err)?;
        Ok(Commands { sub })
    }

    /// Answers a command.
    pub async fn reply(&self, incoming: &Incoming, reply: &pb::AgentReply) -> Result<(), BusError> {
        let Some(to) = incoming.reply_to.clone() else {
            return Ok(()); // fire-and-forget command
        };
        self.client
            .publish(to, reply.encode_to_vec().into())
            .await
            .map_err(bus_err)
    }

    /// Publishes a heartbeat.
    pub async fn heartbeat(&self, hb: &pb::Heartbeat) -> Result<(), BusError> {
        self.client
            .publish(
                bus::heartbeat_subject(&self.node),
                hb.encode_to_vec().into(),
            )
            .await
            .map_err(bus_err)
    }

    /// Stores an engine event in the node-events stream and waits for the
    /// server's acknowledgement (so a full stream slows the agent down
    /// instead of losing events).
    pub async fn engine_event(&self, ev: &pb::EngineEvent) -> Result<(), BusError> {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(ev.encode_to_vec().into())
            .message_id(&ev.event_id);
        self.jetstream
            .send_publish(bus::engine_events_subject(&self.node), msg)
            .await
            .map_err(bus_err)?
            .await
            .map_err(bus_err)?;
        Ok(())
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(bus_err)
    }
}

/// The stream of commands for this node.
#[derive(Debug)]
pub struct Commands {
    sub: Subscriber,
}

impl Commands {
    /// The next command; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Incoming> {
        let msg = self.sub.next().await?;
        Some(Incoming {
            command: pb::AgentCommand::decode(msg.payload),
            reply_to: msg.reply,
        })
    }

    /// Stops receiving commands. Commands already delivered are still
    /// returned by [`Commands::next`] until it yields `None`.
    pub async fn close(&mut self) {
        if let Err(e) = self.sub.unsubscribe().await {
            tracing::warn!(error = %e, "unsubscribing from commands");
        }
    }
}
