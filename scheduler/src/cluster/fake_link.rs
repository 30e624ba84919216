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
//! scripted.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use devctl_proto::pb::{self, agent_command::Command, agent_reply::Result as Reply};
use futures::future::BoxFuture;

use super::link::{AgentLink, NotOpened, StreamBuild};
use crate::bus::{BusError, EventReader, EventStart, ExecInputSender, StreamReader};

/// The kind of an agent command, as the script names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Create,
    Start,
    Stop,
    Restart,
    Remove,
    Inventory,
    Logs,
    Exec,
    Inspect,
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
        Command::Inventory(_) => vec![],
    }
}

/// How the fake agent answers one command.
#[derive(Debug, Clone)]
pub(super) enum Answer {
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
pub(super) fn status(state: pb::ContainerState, exit_code: Option<i32>) -> Reply {
    Reply::Status(pb::EngineContainer {
        state: state as i32,
        exit_code,
        runtime_id: "engine-1".into(),
        ..Default::default()
    })
}

/// An error reply with `code`.
pub(super) fn refusal(code: pb::AgentErrorCode, message: &str) -> Reply {
    Reply::Error(pb::AgentError {
        code: code as i32,
        message: message.into(),
    })
}

/// The reply to a remove that was carried out.
pub(super) fn removed() -> Reply {
    Reply::Removed(pb::RemovedReply::default())
}

/// The scripted agents of a cluster under test.
#[derive(Debug, Default)]
pub(super) struct FakeLink {
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
    events: Vec<pb::Event>,
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
    pub(super) fn answer(&self, kind: Kind, answer: Answer) {
        self.inner().script.push(Scripted {
            kind,
            container: None,
            answer,
        });
    }

    /// The next `kind` command about `container` (a name or an id) gets
    /// `answer`.
    pub(super) fn answer_for(&self, kind: Kind, container: &str, answer: Answer) {
        self.inner().script.push(Scripted {
            kind,
            container: Some(container.into()),
            answer,
        });
    }

    /// What `node`'s engine has (served to inventory commands).
    pub(super) fn set_inventory(&self, node: &str, containers: Vec<pb::EngineContainer>) {
        self.inner().inventories.insert(node.into(), containers);
    }

    /// What `node`'s engine has now.
    pub(super) fn inventory(&self, node: &str) -> Vec<pb::EngineContainer> {
        self.inner()
            .inventories
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    /// The kinds of the commands received so far, in order.
    pub(super) fn kinds(&self) -> Vec<Kind> {
        self.inner()
            .commands
            .iter()
            .map(|(_, c)| Kind::of(c))
            .collect()
    }

    /// The answers given after their caller's deadline, by node.
    pub(super) fn late_answers(&self) -> Vec<(String, Reply)> {
        self.inner().late.clone()
    }

    /// The events appended to the history so far.
    pub(super) fn events(&self) -> Vec<pb::Event> {
        self.inner().events.clone()
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
            None if kind == Kind::Inventory => {
                let containers = inner.inventories.get(node).cloned().unwrap_or_default();
                Answer::Reply(Reply::Inventory(pb::Inventory { containers }))
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
pub(super) const NODE: &str = "node-1";

/// A cluster under test: a real store in a temporary directory and a real
/// registry with [`NODE`] ready; only its agents are [`FakeLink`]'s.
#[derive(Debug)]
pub(super) struct Fixture {
    pub(super) cluster: super::Cluster,
    pub(super) link: std::sync::Arc<FakeLink>,
    _dir: tempfile::TempDir,
}

/// A cluster under test with the default settings.
pub(super) fn cluster() -> Fixture {
    cluster_with(super::Settings::default())
}

/// A cluster under test with `settings`.
pub(super) fn cluster_with(settings: super::Settings) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = crate::store::Store::open(&dir.path().join("state.redb")).expect("store");
    let nodes = crate::nodes::Registry::new(
        vec![],
        Duration::from_secs(3600),
        crate::nodes::Caps::default(),
    );
    nodes.observe(&pb::Heartbeat {
        node: NODE.into(),
        boot_id: "boot-1".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        ..Default::default()
    });
    let link = std::sync::Arc::new(FakeLink::default());
    let cluster = super::Cluster::with_link(store, nodes, link.clone(), settings);
    Fixture {
        cluster,
        link,
        _dir: dir,
    }
}

/// The spec of a container named `name`.
pub(super) fn spec(name: &str) -> pb::Container {
    pb::Container {
        name: name.into(),
        spec: Some(pb::ContainerSpec {
            image: "devctl/dev:latest".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
