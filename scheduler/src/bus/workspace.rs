//! Receiving a moved workspace (ReceiveWorkspaceCommand): as a tunnel, a
//! pipe each way, both of the scheduler's ends open before the agent hears
//! of it. `down` carries the archive, `up` only the agent's outcome.

use std::time::Duration;

use devctl_proto::{
    bus,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    pipe::{PipeReceiver, PipeSender},
};

use super::{Bus, BusError};

impl Bus {
    /// Sends `command` (its `up` and `down` filled in here) to `node`: the
    /// scheduler's ends once the agent replied that it holds its own;
    /// `Err(Ok(reply))`: the agent refused with `reply`.
    pub async fn open_receive(
        &self,
        node: &str,
        mut command: pb::ReceiveWorkspaceCommand,
        timeout: Duration,
    ) -> Result<(PipeReceiver, PipeSender), Result<Reply, BusError>> {
        let failed = |e: devctl_proto::pipe::PipeError| Err(BusError::Nats(e.to_string()));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (up_data, up_control) = bus::stream_subjects(node, &id);
        let (mut up, up_setup) = PipeReceiver::open(self.client.clone(), up_data, up_control)
            .await
            .map_err(failed)?;
        let (down_data, down_credit) = bus::down_subjects(node, &id);
        let down_setup = pb::StreamSetup {
            data_subject: down_data,
            control_subject: down_credit,
            initial_credit: bus::STREAM_WINDOW,
        };
        let mut down = PipeSender::new(self.client.clone(), &down_setup)
            .await
            .map_err(failed)?;
        command.up = Some(up_setup);
        command.down = Some(down_setup);
        let reply = self
            .command(node, Command::ReceiveWorkspace(command), timeout)
            .await;
        if let Ok(Reply::Opened(_)) = reply {
            return Ok((up, down));
        }
        up.cancel().await;
        down.finish(Some("the scheduler gave up sending the workspace"))
            .await;
        Err(reply)
    }
}
