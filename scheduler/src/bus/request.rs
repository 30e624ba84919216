//! Request/reply commands to an agent: one `AgentCommand` out on the node's
//! command subject, one `AgentReply` back.

use std::time::Duration;

use async_nats::RequestErrorKind;
use devctl_proto::{bus, pb};
use prost::Message;

use super::{Bus, BusError};

impl Bus {
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
}
