//! Duplex streams (tunnels, image builds and imports, workspace receives;
//! see `TunnelCommand`, `BuildCommand`, `ImportImageCommand` and
//! `ReceiveWorkspaceCommand` in bus.proto): a byte stream each way between the scheduler and an agent,
//! each one a flow-controlled pipe (`devctl_proto::pipe`). The scheduler
//! receives on the `up` pipe (`….stream.<id>.data`, credit on `….control`)
//! and sends on the `down` pipe (`….stream.<id>.down`, the agent's credit on
//! `….credit`).
//!
//! Both of the scheduler's ends exist before the agent hears of the
//! command, so nothing the agent sends (data, credit) is missed.

use std::time::Duration;

use devctl_proto::{
    bus,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    pipe::{PipeReceiver, PipeSender},
};

use super::{Bus, BusError};

/// The scheduler's ends of a duplex stream (`up`, `down`) and what the
/// agent said opening it, or why there are none: `Err(Ok(reply))`, the
/// agent refused with `reply`.
pub(crate) type Duplex =
    Result<(PipeReceiver, PipeSender, pb::StreamOpened), Result<Reply, BusError>>;

impl Bus {
    /// Opens tunnel `command` on `node`: `command.session` (a fresh id the
    /// caller made, safe in a subject) names its subjects; `up` and `down`
    /// are filled in here.
    pub async fn open_tunnel(
        &self,
        node: &str,
        command: pb::TunnelCommand,
        timeout: Duration,
    ) -> Duplex {
        let id = command.session.clone();
        self.open_duplex(node, &id, timeout, "the tunnel", |up, down| {
            Command::Tunnel(pb::TunnelCommand {
                up: Some(up),
                down: Some(down),
                ..command
            })
        })
        .await
    }

    /// Opens build `command` on `node` (named by `command.session`, as a
    /// tunnel): the build output (`up`) and the context's sink (`down`).
    pub async fn open_build(
        &self,
        node: &str,
        command: pb::BuildCommand,
        timeout: Duration,
    ) -> Duplex {
        let id = command.session.clone();
        self.open_duplex(node, &id, timeout, "the build", |up, down| {
            Command::Build(pb::BuildCommand {
                up: Some(up),
                down: Some(down),
                ..command
            })
        })
        .await
    }

    /// Sends image archive `command` to `node` (named by
    /// `command.session`): `down` carries the archive from the offset the
    /// agent answers with, `up` its progress and outcome.
    pub async fn open_import(
        &self,
        node: &str,
        command: pb::ImportImageCommand,
        timeout: Duration,
    ) -> Duplex {
        let id = command.session.clone();
        self.open_duplex(node, &id, timeout, "the image transfer", |up, down| {
            Command::ImportImage(pb::ImportImageCommand {
                up: Some(up),
                down: Some(down),
                ..command
            })
        })
        .await
    }

    /// Sends workspace `command` to `node`: `down` carries the archive, `up`
    /// only the agent's outcome.
    pub async fn open_receive(
        &self,
        node: &str,
        command: pb::ReceiveWorkspaceCommand,
        timeout: Duration,
    ) -> Duplex {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.open_duplex(node, &id, timeout, "sending the workspace", |up, down| {
            Command::ReceiveWorkspace(pb::ReceiveWorkspaceCommand {
                up: Some(up),
                down: Some(down),
                ..command
            })
        })
        .await
    }

    /// Opens both of the scheduler's ends of stream `id` on `node`, then
    /// sends the command `with(up, down)` builds: the ends once the agent
    /// replied that it holds its own. `what` names the stream for the agent
    /// when the scheduler gives up.
    async fn open_duplex(
        &self,
        node: &str,
        id: &str,
        timeout: Duration,
        what: &str,
        with: impl FnOnce(pb::StreamSetup, pb::StreamSetup) -> Command,
    ) -> Duplex {
        let failed = |e: devctl_proto::pipe::PipeError| Err(BusError::Nats(e.to_string()));
        let (up_data, up_control) = bus::stream_subjects(node, id);
        let (mut up, up_setup) = PipeReceiver::open(self.client.clone(), up_data, up_control)
            .await
            .map_err(failed)?;
        let (down_data, down_credit) = bus::down_subjects(node, id);
        let down_setup = pb::StreamSetup {
            data_subject: down_data,
            control_subject: down_credit,
            initial_credit: bus::STREAM_WINDOW,
        };
        let mut down = PipeSender::new(self.client.clone(), &down_setup)
            .await
            .map_err(failed)?;
        let reply = self
            .command(node, with(up_setup, down_setup), timeout)
            .await;
        if let Ok(Reply::Opened(opened)) = reply {
            return Ok((up, down, opened));
        }
        // An agent that answered after the deadline holds its ends: they
        // hear that this side is gone.
        up.cancel().await;
        down.finish(Some(&format!("the scheduler gave up opening {what}")))
            .await;
        Err(reply)
    }
}
