//! Agents' certificate renewal requests, and the answers sent back only
//! into the asking agent's own inbox.

use async_nats::{Client, Subscriber};
use devctl_proto::{bus, pb};
use futures::StreamExt;
use prost::Message;

use super::{Bus, BusError};

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
