//! Image builds (see `BuildCommand` in bus.proto): as a tunnel, a pipe each
//! way between the scheduler and an agent. The scheduler sends the build
//! context on the `down` pipe (`….stream.<id>.down`, the agent's credit on
//! `….credit`) and reads the engine's build output on the `up` pipe
//! (`….stream.<id>.data`, credit on `….control`). Both of the scheduler's
//! ends exist before the agent hears of the build.

use std::time::Duration;

use devctl_proto::{
    bus,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    pipe::{PipeReceiver, PipeSender},
};

use super::{Bus, BusError};

impl Bus {
    /// Opens build `command` on `node`: `command.session` (a fresh id safe
    /// in a subject) names its subjects; `up` and `down` are filled in
    /// here. The scheduler's ends (output, context) once the agent replied
    /// that it holds its own; `Err(Ok(reply))`: the agent refused.
    pub async fn open_build(
        &self,
        node: &str,
        mut command: pb::BuildCommand,
        timeout: Duration,
    ) -> Result<(PipeReceiver, PipeSender), Result<Reply, BusError>> {
        let failed = |e: devctl_proto::pipe::PipeError| Err(BusError::Nats(e.to_string()));
        let id = command.session.clone();
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
        let reply = self.command(node, Command::Build(command), timeout).await;
        if let Ok(Reply::Opened(_)) = reply {
            return Ok((up, down));
        }
        up.cancel().await;
        down.finish(Some("the scheduler gave up opening the build"))
            .await;
        Err(reply)
    }
}
