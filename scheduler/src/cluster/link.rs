//! [`AgentLink`]: everything the cluster sends over the bus, behind one
//! trait, and its implementation by [`Bus`]. Unit tests put a scripted fake
//! (`fake_link`) in its place; the end-to-end tests use the real bus.
//!
//! The trait lives here, in `cluster/`, rather than in `bus/`: it is the
//! cluster's view of its agents (the calls its operations make, in their
//! terms), and `bus/` stays the NATS code that one implementation wraps.
//!
//! It covers agent talk (commands with a deadline, output streams, exec
//! sessions, tunnels) and the event history the operations append to and
//! read. A tunnel's two pipe ends are traits here too ([`TunnelSource`],
//! [`TunnelSink`]), implemented by the bus's pipes and, in unit tests, by
//! in-memory ones.
//! The history is not agent talk, but it is the one other thing the cluster
//! uses the bus for: on the same seam, a [`super::Cluster`] can be built
//! without NATS. What the server alone uses the bus for (heartbeat, stats,
//! engine-event and renewal subscriptions, the audit stream) stays on
//! [`Bus`].

use std::time::Duration;

use devctl_proto::{
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    pipe::{PipeError, PipeReceiver, PipeSender},
};
use futures::future::BoxFuture;

use crate::bus::{Bus, BusError, EventReader, EventStart, ExecInputSender, StreamReader};

/// Makes a stream's opening command from the stream's setup and id.
pub(crate) type StreamBuild<'a> = Box<dyn FnOnce(pb::StreamSetup, &str) -> Command + Send + 'a>;

/// Why a stream was not opened: `Ok(reply)`, the agent refused with
/// `reply`; `Err`, no usable reply.
pub(crate) type NotOpened = Result<Reply, BusError>;

/// The bytes a tunnel's agent end sends the scheduler.
pub(crate) trait TunnelSource: std::fmt::Debug + Send {
    /// The next bytes; `None` once the agent end finished cleanly (it
    /// sends no more). Drop the future only to end the tunnel: one dropped
    /// while it grants credit loses the bytes it had read.
    fn recv(&mut self) -> BoxFuture<'_, Option<Result<Vec<u8>, PipeError>>>;

    /// Tells the agent end to stop sending (unless its stream ended);
    /// later reads return `None`. Keep the source until the whole tunnel is
    /// over, even once its stream ended: while it lives it tells the agent
    /// end that the scheduler does (a keepalive), and dropping it stops
    /// that.
    fn cancel(&mut self) -> BoxFuture<'_, ()>;
}

/// The bytes the scheduler sends a tunnel's agent end.
pub(crate) trait TunnelSink: std::fmt::Debug + Send {
    /// Sends `data` once the agent end has room for it (its credit): a
    /// reader that stops reading stops this.
    fn send<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, Result<(), PipeError>>;

    /// Waits until the agent end's reader cancels (told once) or falls
    /// silent (handling its credit meanwhile), also after
    /// [`TunnelSink::finish`]: how the scheduler learns of the agent's
    /// loss while only the other direction flows. Cancel-safe: wait on it
    /// beside what to send.
    fn closed(&mut self) -> BoxFuture<'_, PipeError>;

    /// Ends the stream (once): the agent end reads its end (with `error`,
    /// when the tunnel failed). Nothing can be sent after it.
    fn finish(&mut self, error: Option<String>) -> BoxFuture<'_, ()>;
}

/// The scheduler's ends of an open tunnel.
#[derive(Debug)]
pub(crate) struct TunnelPipes {
    /// Agent -> scheduler.
    pub(crate) up: Box<dyn TunnelSource>,
    /// Scheduler -> agent.
    pub(crate) down: Box<dyn TunnelSink>,
    /// What the agent answered opening them (an import's offset).
    pub(crate) opened: pb::StreamOpened,
}

/// What the cluster needs from the bus: its agents, and the event history.
pub(crate) trait AgentLink: std::fmt::Debug + Send + Sync {
    /// Sends `command` to `node`'s agent and waits up to `timeout` for the
    /// reply.
    fn command<'a>(
        &'a self,
        node: &'a str,
        command: Command,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Reply, BusError>>;

    /// Opens a flow-controlled output stream from `node` (logs): `build`
    /// makes the command from the stream's setup and id.
    fn open_stream<'a>(
        &'a self,
        node: &'a str,
        build: StreamBuild<'a>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<StreamReader, NotOpened>>;

    /// Opens an exec session on `node`: its output stream, as
    /// [`AgentLink::open_stream`], and the sender of its input. One call
    /// gives both: an input sender exists only for a session its agent
    /// opened.
    fn open_exec<'a>(
        &'a self,
        node: &'a str,
        build: StreamBuild<'a>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(StreamReader, ExecInputSender), NotOpened>>;

    /// Opens tunnel `command` on `node` (its `session` names it on the bus;
    /// the link sets up both pipes and fills in `up` and `down`): the
    /// scheduler's ends once the agent holds its own.
    fn open_tunnel<'a>(
        &'a self,
        node: &'a str,
        command: pb::TunnelCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>>;

    /// Opens build `command` on `node` (its `session` names it on the bus;
    /// the link fills in `up` and `down`): the build output (`up`) and the
    /// context's sink (`down`) once the agent holds its ends. Links that
    /// carry no builds (unit-test fakes) refuse.
    fn open_build<'a>(
        &'a self,
        node: &'a str,
        command: pb::BuildCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>> {
        let _ = (command, timeout);
        Box::pin(async move {
            Err(Err(BusError::Nats(format!(
                "this link cannot build on node {node:?}"
            ))))
        })
    }

    /// Sends an image archive to `node` (ImportImageCommand `command`, its
    /// `session` naming it; the link sets up both pipes): the scheduler's
    /// ends once the agent holds its own, `opened.offset` the bytes it
    /// holds already. Links that carry no archives (unit-test fakes)
    /// refuse.
    fn open_import<'a>(
        &'a self,
        node: &'a str,
        command: pb::ImportImageCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>> {
        let _ = (command, timeout);
        Box::pin(async move {
            Err(Err(BusError::Nats(format!(
                "this link cannot send images to node {node:?}"
            ))))
        })
    }

    /// Sends a workspace to `node` (ReceiveWorkspaceCommand `command`; the
    /// link sets up both pipes): the scheduler's ends once the agent holds
    /// its own. `up` carries only the agent's outcome.
    fn open_receive<'a>(
        &'a self,
        node: &'a str,
        command: pb::ReceiveWorkspaceCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>> {
        let _ = (node, command, timeout);
        Box::pin(async {
            Err(Err(BusError::Nats(
                "this link cannot send workspaces".into(),
            )))
        })
    }
    /// Starts pull `command` on `node` (the link sets its stream): its
    /// progress, once the agent has started it.
    fn open_pull<'a>(
        &'a self,
        node: &'a str,
        command: pb::PullCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Box<dyn super::registry::PullSource>, NotOpened>>;

    /// Appends `event` to the history on `subject`; `id` de-duplicates
    /// retries. The event's sequence number.
    fn publish_event<'a>(
        &'a self,
        subject: String,
        event: &'a pb::Event,
        id: &'a str,
    ) -> BoxFuture<'a, Result<u64, BusError>>;

    /// Reads the event history matching `filter` from `start`.
    fn watch_events(
        &self,
        filter: String,
        start: EventStart,
    ) -> BoxFuture<'_, Result<EventReader, BusError>>;
}

impl AgentLink for Bus {
    fn command<'a>(
        &'a self,
        node: &'a str,
        command: Command,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Reply, BusError>> {
        Box::pin(Bus::command(self, node, command, timeout))
    }

    fn open_stream<'a>(
        &'a self,
        node: &'a str,
        build: StreamBuild<'a>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<StreamReader, NotOpened>> {
        Box::pin(Bus::open_stream(self, node, build, timeout))
    }

    fn open_exec<'a>(
        &'a self,
        node: &'a str,
        build: StreamBuild<'a>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(StreamReader, ExecInputSender), NotOpened>> {
        Box::pin(async move {
            let mut id = String::new();
            let build = |setup, stream_id: &str| {
                id = stream_id.to_string();
                build(setup, stream_id)
            };
            let reader = Bus::open_stream(self, node, build, timeout).await?;
            Ok((reader, self.exec_input(node, &id)))
        })
    }

    fn open_tunnel<'a>(
        &'a self,
        node: &'a str,
        command: pb::TunnelCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>> {
        Box::pin(async move {
            Bus::open_tunnel(self, node, command, timeout)
                .await
                .map(boxed)
        })
    }

    fn open_build<'a>(
        &'a self,
        node: &'a str,
        command: pb::BuildCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>> {
        Box::pin(async move {
            Bus::open_build(self, node, command, timeout)
                .await
                .map(boxed)
        })
    }

    fn open_import<'a>(
        &'a self,
        node: &'a str,
        command: pb::ImportImageCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>> {
        Box::pin(async move {
            Bus::open_import(self, node, command, timeout)
                .await
                .map(boxed)
        })
    }

    fn open_receive<'a>(
        &'a self,
        node: &'a str,
        command: pb::ReceiveWorkspaceCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>> {
        Box::pin(async move {
            Bus::open_receive(self, node, command, timeout)
                .await
                .map(boxed)
        })
    }

    fn open_pull<'a>(
        &'a self,
        node: &'a str,
        command: pb::PullCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Box<dyn super::registry::PullSource>, NotOpened>> {
        Box::pin(super::registry::open_pull_on_bus(
            self, node, command, timeout,
        ))
    }

    fn publish_event<'a>(
        &'a self,
        subject: String,
        event: &'a pb::Event,
        id: &'a str,
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        Box::pin(Bus::publish_event(self, subject, event, id))
    }

    fn watch_events(
        &self,
        filter: String,
        start: EventStart,
    ) -> BoxFuture<'_, Result<EventReader, BusError>> {
        Box::pin(Bus::watch_events(self, filter, start))
    }
}

impl TunnelSource for PipeReceiver {
    fn recv(&mut self) -> BoxFuture<'_, Option<Result<Vec<u8>, PipeError>>> {
        Box::pin(PipeReceiver::recv(self))
    }

    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(PipeReceiver::cancel(self))
    }
}

impl TunnelSink for PipeSender {
    fn send<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, Result<(), PipeError>> {
        Box::pin(PipeSender::send(self, data))
    }

    fn closed(&mut self) -> BoxFuture<'_, PipeError> {
        Box::pin(PipeSender::closed(self))
    }

    fn finish(&mut self, error: Option<String>) -> BoxFuture<'_, ()> {
        Box::pin(async move { PipeSender::finish(self, error.as_deref()).await })
    }
}

/// The bus's ends of a duplex stream, as the cluster holds them.
fn boxed(
    (up, down, opened): (
        devctl_proto::pipe::PipeReceiver,
        devctl_proto::pipe::PipeSender,
        pb::StreamOpened,
    ),
) -> TunnelPipes {
    TunnelPipes {
        up: Box::new(up),
        down: Box::new(down),
        opened,
    }
}
