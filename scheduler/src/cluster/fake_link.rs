//! A scripted [`AgentLink`] for unit tests: the agents answer from a
//! script, per command kind and optionally per container; the fake records
//! every command and event it got and keeps each node's inventory.
//!
//! What an answer does on the node follows the agent: a create answered
//! with a status (at once or late) adds the container to its node's
//! inventory, a remove answered `removed` takes it out. A late answer
//! reaches nobody, as on NATS, where the caller's reply inbox is gone once
//! its deadline passed. The fake carries no stream data: a stream or exec
//! the script lets open fails as a broken bus would; refusals come back as
//! scripted. Tunnels are the exception: one the script lets open gets
//! in-memory pipes whose agent end ([`FakeAgentEnd`]) the test drives.
//!
//! One piece: the fake stands in for the whole agent link (one trait impl),
//! and its parts (commands, streams, tunnels) share one scripted state: the
//! script it answers from and the record of what it was sent.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use devctl_proto::{
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    pipe::PipeError,
};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::{AgentLink, NotOpened, StreamBuild, TunnelPipes, TunnelSink, TunnelSource};
use crate::bus::{BusError, EventReader, EventStart, ExecInputSender, StreamReader};

/// The kind of an agent command, as the script names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Create,
    Start,
    Stop,
    Restart,
    Remove,
    Inventory,
    Logs,
    Exec,
    Inspect,
    Tunnel,
    Build,
    Workspace,
    Pull,
    ListImages,
    RemoveImage,
}

impl Kind {
    fn of(command: &Command) -> Self {
        match command {
            Command::Create(_) => Kind::Create,
            Command::Start(_) => Kind::Start,
            Command::Stop(_) => Kind::Stop,
            Command::Restart(_) => Kind::Restart,
            Command::Remove(_) => Kind::Remove,
            Command::Inventory(_) => Kind::Inventory,
            Command::Logs(_) => Kind::Logs,
            Command::Exec(_) => Kind::Exec,
            Command::Inspect(_) => Kind::Inspect,
            Command::Tunnel(_) => Kind::Tunnel,
            Command::Build(_) | Command::ImportImage(_) => Kind::Build,
            Command::RemoveWorkspace(_)
            | Command::SendWorkspace(_)
            | Command::ReceiveWorkspace(_) => Kind::Workspace,
            Command::Pull(_) => Kind::Pull,
            Command::ListImages(_) => Kind::ListImages,
            Command::RemoveImage(_) => Kind::RemoveImage,
        }
    }
}

/// The container ids and names `command` is about.
fn targets(command: &Command) -> Vec<&str> {
    match command {
        Command::Create(c) => vec![&c.id, &c.name],
        Command::Start(c) => vec![&c.id],
        Command::Stop(c) => vec![&c.id],
        Command::Restart(c) => vec![&c.id],
        Command::Remove(c) => vec![&c.id],
        Command::Logs(c) => vec![&c.id],
        Command::Exec(c) => vec![&c.id],
        Command::Inspect(c) => vec![&c.id],
        Command::Tunnel(c) => vec![&c.id],
        Command::RemoveWorkspace(c) => vec![&c.name],
        Command::SendWorkspace(c) => vec![&c.name],
        Command::ReceiveWorkspace(c) => c.workspace.iter().map(|w| w.name.as_str()).collect(),
        Command::Pull(c) => vec![&c.id],
        Command::Inventory(_)
        | Command::Build(_)
        | Command::ImportImage(_)
        | Command::ListImages(_)
        | Command::RemoveImage(_) => vec![],
    }
}

/// How the fake agent answers one command.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// Replies within the deadline.
    Reply(Reply),
    /// Nobody listens on the node's command subject.
    NoResponders,
    /// Never answers: the caller's deadline passes.
    Silence,
    /// Carries the command out, but replies after the caller's deadline.
    Late(Reply),
}

/// A status reply: the container in `state`.
pub(crate) fn status(state: pb::ContainerState, exit_code: Option<i32>) -> Reply {
    Reply::Status(pb::EngineContainer {
        state: state as i32,
        exit_code,
        runtime_id: "engine-1".into(),
        ..Default::default()
    })
}

/// An error reply with `code`.
pub(crate) fn refusal(code: pb::AgentErrorCode, message: &str) -> Reply {
    Reply::Error(pb::AgentError {
        code: code as i32,
        message: message.into(),
    })
}

/// The reply to a remove that was carried out.
pub(crate) fn removed() -> Reply {
    Reply::Removed(pb::RemovedReply::default())
}

/// The scripted agents of a cluster under test.
#[derive(Debug, Default)]
pub(crate) struct FakeLink {
    // std lock: map and list operations only, never held across an await.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    // Answers not used yet, in order: the first matching one answers.
    script: Vec<Scripted>,
    commands: Vec<(String, Command)>,
    late: Vec<(String, Reply)>,
    inventories: HashMap<String, Vec<pb::EngineContainer>>,
    // Workspace volumes each node's engine has (made by creates).
    volumes: HashMap<String, Vec<pb::EngineWorkspace>>,
    events: Vec<pb::Event>,
    tunnels: Vec<FakeAgentEnd>,
    // What the next pull the script lets open reports (empty: the image
    // is present).
    pull_progress: Vec<pb::PullProgress>,
    // How long the agent takes for each of those reports.
    pull_pace: Duration,
}

#[derive(Debug)]
struct Scripted {
    kind: Kind,
    container: Option<String>,
    answer: Answer,
}

impl FakeLink {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake link lock")
    }

    /// The next `kind` command, whatever its container, gets `answer`.
    pub(crate) fn answer(&self, kind: Kind, answer: Answer) {
        self.inner().script.push(Scripted {
            kind,
            container: None,
            answer,
        });
    }

    /// The next `kind` command about `container` (a name or an id) gets
    /// `answer`.
    pub(crate) fn answer_for(&self, kind: Kind, container: &str, answer: Answer) {
        self.inner().script.push(Scripted {
            kind,
            container: Some(container.into()),
            answer,
        });
    }

    /// What the next pull that opens reports, in order (the last one
    /// should be `done`).
    pub(crate) fn pull_reports(&self, progress: Vec<pb::PullProgress>) {
        self.inner().pull_progress = progress;
    }

    /// Each report of a pull comes this long after the one before.
    pub(crate) fn pull_pace(&self, pace: Duration) {
        self.inner().pull_pace = pace;
    }

    /// What `node`'s engine has (served to inventory commands).
    pub(crate) fn set_inventory(&self, node: &str, containers: Vec<pb::EngineContainer>) {
        self.inner().inventories.insert(node.into(), containers);
    }

    /// What `node`'s engine has now.
    pub(crate) fn inventory(&self, node: &str) -> Vec<pb::EngineContainer> {
        self.inner()
            .inventories
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    /// The kinds of the commands received so far, in order, but pulls
    /// (every create pulls first unless its policy is NEVER; see
    /// [`FakeLink::pulls`]).
    pub(crate) fn kinds(&self) -> Vec<Kind> {
        self.inner()
            .commands
            .iter()
            .map(|(_, c)| Kind::of(c))
            .filter(|k| *k != Kind::Pull)
            .collect()
    }

    /// The pull commands received so far, in order.
    pub(crate) fn pulls(&self) -> Vec<pb::PullCommand> {
        self.inner()
            .commands
            .iter()
            .filter_map(|(_, c)| match c {
                Command::Pull(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// The workspace attach of each create received so far, in order.
    pub(crate) fn create_attaches(&self) -> Vec<Option<pb::WorkspaceAttach>> {
        self.inner()
            .commands
            .iter()
            .filter_map(|(_, c)| match c {
                Command::Create(c) => Some(c.workspace.clone()),
                _ => None,
            })
            .collect()
    }

    /// The answers given after their caller's deadline, by node.
    pub(crate) fn late_answers(&self) -> Vec<(String, Reply)> {
        self.inner().late.clone()
    }

    /// The events appended to the history so far.
    pub(crate) fn events(&self) -> Vec<pb::Event> {
        self.inner().events.clone()
    }

    /// The agent end of the oldest tunnel opened and not taken yet.
    pub(crate) fn take_tunnel(&self) -> Option<FakeAgentEnd> {
        let mut inner = self.inner();
        (!inner.tunnels.is_empty()).then(|| inner.tunnels.remove(0))
    }

    /// Records `command` to `node` and answers it as scripted.
    fn receive(&self, node: &str, command: Command, timeout: Duration) -> Result<Reply, BusError> {
        let mut inner = self.inner();
        let kind = Kind::of(&command);
        let wanted = inner.script.iter().position(|s| {
            s.kind == kind
                && s.container
                    .as_deref()
                    .is_none_or(|c| targets(&command).contains(&c))
        });
        let answer = match wanted {
            Some(i) => inner.script.remove(i).answer,
            // Unscripted pulls find the image present (see `open_pull`).
            None if kind == Kind::Pull => Answer::Reply(Reply::Opened(pb::StreamOpened::default())),
            // Fake agents have no images.
            None if kind == Kind::ListImages => Answer::Reply(Reply::Images(pb::ImageList {
                images: vec![],
                digest: "none".into(),
            })),
            None if kind == Kind::Inventory => {
                let containers = inner.inventories.get(node).cloned().unwrap_or_default();
                let workspaces = inner.volumes.get(node).cloned().unwrap_or_default();
                Answer::Reply(Reply::Inventory(pb::Inventory {
                    containers,
                    workspaces,
                }))
            }
            // Deleting a volume succeeds unless scripted otherwise.
            None if matches!(command, Command::RemoveWorkspace(_)) => {
                let Command::RemoveWorkspace(c) = &command else {
                    unreachable!()
                };
                Answer::Reply(Reply::Removed(pb::RemovedReply { id: c.name.clone() }))
            }
            None => {
                inner.commands.push((node.into(), command));
                return Err(BusError::Nats(format!(
                    "the fake link has no answer scripted for a {kind:?} command"
                )));
            }
        };
        let timed_out = || BusError::Timeout {
            node: node.into(),
            timeout,
        };
        let result = match answer {
            Answer::Reply(reply) => {
                inner.carry_out(node, &command, &reply);
                Ok(reply)
            }
            Answer::NoResponders => Err(BusError::NoResponders(node.into())),
            Answer::Silence => Err(timed_out()),
            Answer::Late(reply) => {
                inner.carry_out(node, &command, &reply);
                inner.late.push((node.into(), reply));
                Err(timed_out())
            }
        };
        inner.commands.push((node.into(), command));
        result
    }
}

impl Inner {
    /// What the agent did on its node when it answered `command` so.
    fn carry_out(&mut self, node: &str, command: &Command, reply: &Reply) {
        let volumes = self.volumes.entry(node.into()).or_default();
        match (command, reply) {
            (Command::Create(c), Reply::Status(_)) => {
                if let Some(w) = &c.workspace
                    && !volumes.iter().any(|v| v.name == w.name)
                {
                    volumes.push(pb::EngineWorkspace {
                        name: w.name.clone(),
                        id: w.id.clone(),
                        size_bytes: -1,
                        ..Default::default()
                    });
                }
            }
            (Command::RemoveWorkspace(c), Reply::Removed(_)) => {
                volumes.retain(|v| v.name != c.name)
            }
            _ => {}
        }
        let engine = self.inventories.entry(node.into()).or_default();
        match (command, reply) {
            (Command::Create(c), Reply::Status(s)) => {
                engine.push(pb::EngineContainer {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    image: c.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
                    ..s.clone()
                });
            }
            (Command::Remove(c), Reply::Removed(_)) => engine.retain(|s| s.id != c.id),
            _ => {}
        }
    }
}

/// The setup of a stream the fake is asked to open.
fn setup() -> pb::StreamSetup {
    pb::StreamSetup {
        data_subject: "fake.data".into(),
        control_subject: "fake.control".into(),
        initial_credit: devctl_proto::bus::STREAM_WINDOW,
    }
}

impl FakeLink {
    /// Answers a stream opening as scripted: a refusal, or no usable reply.
    fn open(&self, node: &str, build: StreamBuild<'_>, timeout: Duration) -> NotOpened {
        match self.receive(node, build(setup(), "fake-stream"), timeout) {
            Ok(pb::agent_reply::Result::Opened(_)) => Err(BusError::Nats(
                "the fake link carries no stream data".into(),
            )),
            other => other,
        }
    }
}

/// What the scheduler sent down a fake tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Down {
    /// Bytes.
    Data(Vec<u8>),
    /// The end of the stream, with the scheduler's error if it failed.
    End(Option<String>),
}

/// The agent's end of a tunnel the fake opened, driven by the test.
#[derive(Debug)]
pub(crate) struct FakeAgentEnd {
    /// The command that opened it.
    pub(crate) command: pb::TunnelCommand,
    /// Sends bytes up to the scheduler (an `Err` fails the pipe); dropping
    /// it ends the pipe cleanly.
    pub(crate) up: Option<mpsc::Sender<Result<Vec<u8>, PipeError>>>,
    /// What the scheduler sent down, in order.
    pub(crate) down: mpsc::UnboundedReceiver<Down>,
    /// Cancelled once the scheduler cancelled the up pipe.
    pub(crate) up_cancelled: CancellationToken,
    /// Cancelled once the scheduler dropped its end of the up pipe (as a
    /// real one, it then stops its keepalive).
    pub(crate) up_dropped: CancellationToken,
    /// Cancel it to make the down pipe's reader cancel (the container's
    /// side reads no more, or the agent ended the tunnel).
    pub(crate) reader_gone: CancellationToken,
    /// Cancel it to make the down pipe's reader fall silent (as a dead
    /// agent's).
    pub(crate) reader_silent: CancellationToken,
}

impl FakeAgentEnd {
    /// The next thing the scheduler sent down (waits up to 5 s).
    pub(crate) async fn next_down(&mut self) -> Option<Down> {
        tokio::time::timeout(Duration::from_secs(5), self.down.recv())
            .await
            .expect("the scheduler sent nothing down within 5 s")
    }
}

#[derive(Debug)]
struct FakeSource {
    rx: mpsc::Receiver<Result<Vec<u8>, PipeError>>,
    cancelled: CancellationToken,
    dropped: CancellationToken,
}

impl TunnelSource for FakeSource {
    fn recv(&mut self) -> BoxFuture<'_, Option<Result<Vec<u8>, PipeError>>> {
        Box::pin(async move {
            if self.cancelled.is_cancelled() {
                return None;
            }
            self.rx.recv().await
        })
    }

    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        self.cancelled.cancel();
        Box::pin(async {})
    }
}

impl Drop for FakeSource {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

/// The idle limit a fake sink's reader falls silent for.
const SILENCE: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct FakeSink {
    tx: mpsc::UnboundedSender<Down>,
    reader_gone: CancellationToken,
    reader_silent: CancellationToken,
    // As a real sink: the reader's cancel is told once, then only its
    // silence.
    cancel_told: bool,
    finished: bool,
}

impl TunnelSink for FakeSink {
    fn send<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, Result<(), PipeError>> {
        Box::pin(async move {
            if self.finished {
                return Err(PipeError::Bus("the stream was already finished".into()));
            }
            if self.reader_silent.is_cancelled() {
                return Err(PipeError::Silent(SILENCE));
            }
            if self.reader_gone.is_cancelled() && !self.cancel_told {
                self.cancel_told = true;
                return Err(PipeError::Cancelled);
            }
            let _ = self.tx.send(Down::Data(data.to_vec()));
            Ok(())
        })
    }

    fn closed(&mut self) -> BoxFuture<'_, PipeError> {
        let (gone, silent) = (self.reader_gone.clone(), self.reader_silent.clone());
        Box::pin(async move {
            tokio::select! {
                _ = gone.cancelled(), if !self.cancel_told => {
                    self.cancel_told = true;
                    PipeError::Cancelled
                }
                _ = silent.cancelled() => PipeError::Silent(SILENCE),
            }
        })
    }

    fn finish(&mut self, error: Option<String>) -> BoxFuture<'_, ()> {
        if !self.finished {
            self.finished = true;
            let _ = self.tx.send(Down::End(error));
        }
        Box::pin(async {})
    }
}

impl FakeLink {
    /// Answers a tunnel opening as scripted: `None` if the script let it
    /// open (its agent end is kept for [`FakeLink::take_tunnel`]), else the
    /// refusal or the failure.
    fn tunnel(
        &self,
        node: &str,
        command: &pb::TunnelCommand,
        timeout: Duration,
    ) -> Option<NotOpened> {
        match self.receive(node, Command::Tunnel(command.clone()), timeout) {
            Ok(Reply::Opened(_)) => None,
            other => Some(other),
        }
    }

    /// The pipes of a tunnel the script let open; the agent's end is kept
    /// for [`FakeLink::take_tunnel`].
    fn pipes(&self, command: pb::TunnelCommand) -> TunnelPipes {
        let (up_tx, up_rx) = mpsc::channel(4);
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        let token = CancellationToken::new;
        let (up_cancelled, up_dropped) = (token(), token());
        let (reader_gone, reader_silent) = (token(), token());
        self.inner().tunnels.push(FakeAgentEnd {
            command,
            up: Some(up_tx),
            down: down_rx,
            up_cancelled: up_cancelled.clone(),
            up_dropped: up_dropped.clone(),
            reader_gone: reader_gone.clone(),
            reader_silent: reader_silent.clone(),
        });
        TunnelPipes {
            up: Box::new(FakeSource {
                rx: up_rx,
                cancelled: up_cancelled,
                dropped: up_dropped,
            }),
            down: Box::new(FakeSink {
                tx: down_tx,
                reader_gone,
                reader_silent,
                cancel_told: false,
                finished: false,
            }),
            opened: pb::StreamOpened::default(),
        }
    }
}

/// The reply of an agent that opened a stream or a tunnel.
pub(crate) fn opened() -> Reply {
    Reply::Opened(pb::StreamOpened::default())
}

impl AgentLink for FakeLink {
    fn command<'a>(
        &'a self,
        node: &'a str,
        command: Command,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Reply, BusError>> {
        Box::pin(async move { self.receive(node, command, timeout) })
    }

    fn open_stream<'a>(
        &'a self,
        node: &'a str,
        build: StreamBuild<'a>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<StreamReader, NotOpened>> {
        Box::pin(async move { Err(self.open(node, build, timeout)) })
    }

    fn open_exec<'a>(
        &'a self,
        node: &'a str,
        build: StreamBuild<'a>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(StreamReader, ExecInputSender), NotOpened>> {
        Box::pin(async move { Err(self.open(node, build, timeout)) })
    }

    fn open_tunnel<'a>(
        &'a self,
        node: &'a str,
        command: pb::TunnelCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<TunnelPipes, NotOpened>> {
        Box::pin(async move {
            match self.tunnel(node, &command, timeout) {
                Some(not_opened) => Err(not_opened),
                None => Ok(self.pipes(command)),
            }
        })
    }

    fn open_pull<'a>(
        &'a self,
        node: &'a str,
        command: pb::PullCommand,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Box<dyn super::registry::PullSource>, NotOpened>> {
        Box::pin(async move {
            match self.receive(node, Command::Pull(command), timeout) {
                Ok(Reply::Opened(_)) => {
                    let progress = std::mem::take(&mut self.inner().pull_progress);
                    let pace = self.inner().pull_pace;
                    let progress = if progress.is_empty() {
                        vec![pb::PullProgress {
                            status: "present".into(),
                            done: true,
                            ..Default::default()
                        }]
                    } else {
                        progress
                    };
                    Ok(Box::new(FakePull(progress.into(), pace))
                        as Box<dyn super::registry::PullSource>)
                }
                Ok(other) => Err(Ok(other)),
                Err(e) => Err(Err(e)),
            }
        })
    }

    fn publish_event<'a>(
        &'a self,
        _subject: String,
        event: &'a pb::Event,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        Box::pin(async move {
            let mut inner = self.inner();
            inner.events.push(event.clone());
            Ok(inner.events.len() as u64)
        })
    }

    fn watch_events(
        &self,
        _filter: String,
        _start: EventStart,
    ) -> BoxFuture<'_, Result<EventReader, BusError>> {
        Box::pin(async { Err(BusError::Nats("the fake link keeps no history".into())) })
    }
}

/// The node every fixture's cluster has, ready.
pub(crate) const NODE: &str = "node-1";

/// A cluster under test: a real store in a temporary directory and a real
/// registry with [`NODE`] ready; only its agents are [`FakeLink`]'s.
#[derive(Debug)]
pub(crate) struct Fixture {
    pub(crate) cluster: super::Cluster,
    pub(crate) link: std::sync::Arc<FakeLink>,
    _dir: tempfile::TempDir,
}

/// The heartbeat of [`NODE`]'s agent.
fn heartbeat() -> pb::Heartbeat {
    pb::Heartbeat {
        node: NODE.into(),
        boot_id: "boot-1".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        workspaces: true,
        ..Default::default()
    }
}

impl Fixture {
    /// [`NODE`]'s agent reports `line` as its SSH host key.
    pub(crate) fn report_host_key(&self, line: &str) {
        self.cluster.shared.nodes.observe(&pb::Heartbeat {
            ssh_host_key: line.into(),
            ..heartbeat()
        });
    }

    /// A container `name` of `owner` recorded in `state` on [`NODE`] (as a
    /// create the agent answered so).
    pub(crate) async fn container(&self, name: &str, owner: &str, state: pb::ContainerState) {
        self.link
            .answer_for(Kind::Create, name, Answer::Reply(status(state, None)));
        self.cluster
            .create(spec(name), owner, super::CreateOptions::default())
            .await
            .expect("created");
    }
}

/// A cluster under test with the default settings.
pub(crate) fn cluster() -> Fixture {
    cluster_with(super::Settings::default())
}

/// A cluster under test with `settings`.
pub(crate) fn cluster_with(settings: super::Settings) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = crate::store::Store::open(&dir.path().join("state.redb")).expect("store");
    let nodes = crate::nodes::Registry::new(
        vec![],
        Duration::from_secs(3600),
        crate::nodes::Caps::default(),
    );
    nodes.observe(&heartbeat());
    let link = std::sync::Arc::new(FakeLink::default());
    let ssh_ca = devctl_proto::ssh::SshCa::from_key(
        devctl_proto::ssh::new_key("test-ssh-ca").expect("an ed25519 key"),
    );
    let cluster = super::Cluster::with_link(store, nodes, link.clone(), settings, ssh_ca);
    Fixture {
        cluster,
        link,
        _dir: dir,
    }
}

/// The spec of a container named `name`.
pub(crate) fn spec(name: &str) -> pb::Container {
    pb::Container {
        name: name.into(),
        spec: Some(pb::ContainerSpec {
            image: "devctl/dev:latest".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pull's scripted progress.
#[derive(Debug)]
struct FakePull(std::collections::VecDeque<pb::PullProgress>, Duration);

impl super::registry::PullSource for FakePull {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<pb::PullProgress, BusError>>> {
        Box::pin(async move {
            tokio::time::sleep(self.1).await;
            self.0.pop_front().map(Ok)
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
