//! Turns one bus command into runtime calls and one reply.

use devctl_proto::pb::{self, agent_command::Command, agent_reply::Result as Reply};

use crate::runtime::{ContainerRuntime, RuntimeError};

/// Executes `command` on `runtime` and returns the reply to send.
pub async fn handle<R: ContainerRuntime>(
    runtime: &R,
    command: Result<pb::AgentCommand, prost::DecodeError>,
) -> pb::AgentReply {
    let result = match command.map(|c| c.command) {
        Err(e) => Err((
            pb::AgentErrorCode::BadCommand,
            format!("undecodable command: {e}"),
        )),
        Ok(None) => Err((pb::AgentErrorCode::BadCommand, "empty command".to_string())),
        Ok(Some(cmd)) => execute(runtime, cmd)
            .await
            .map_err(|e| (e.code(), e.to_string())),
    };
    pb::AgentReply {
        result: Some(match result {
            Ok(reply) => reply,
            Err((code, message)) => Reply::Error(pb::AgentError {
                code: code as i32,
                message,
            }),
        }),
    }
}

async fn execute<R: ContainerRuntime>(runtime: &R, cmd: Command) -> Result<Reply, RuntimeError> {
    Ok(match cmd {
        Command::Create(c) => {
            let spec = c.container.unwrap_or_default();
            tracing::info!(id = %spec.id, name = %spec.name, image = %spec.image, "create");
            Reply::Status(runtime.create_and_start(&spec).await?)
        }
        Command::Start(c) => {
            tracing::info!(id = %c.id, "start");
            Reply::Status(runtime.start(&c.id).await?)
        }
        Command::Stop(c) => {
            tracing::info!(id = %c.id, "stop");
            Reply::Status(runtime.stop(&c.id, c.timeout_seconds).await?)
        }
        Command::Restart(c) => {
            tracing::info!(id = %c.id, "restart");
            Reply::Status(runtime.restart(&c.id, c.timeout_seconds).await?)
        }
        Command::Remove(c) => {
            tracing::info!(id = %c.id, force = c.force, "remove");
            runtime.remove(&c.id, c.force).await?;
            Reply::Removed(pb::RemovedReply { id: c.id })
        }
        Command::Inventory(_) => Reply::Inventory(pb::Inventory {
            containers: runtime.inventory().await?,
        }),
    })
}
