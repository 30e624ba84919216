//! The scheduler's side of the bus: the only file of the scheduler that
//! speaks NATS. Commands go out as requests on `devctl.node.<node>.cmd`;
//! heartbeats come in on `devctl.node.*.heartbeat`.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, RequestErrorKind, Subscriber};
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
        Ok(Self { client })
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

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
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
