//! Turns one bus command into runtime calls and one reply.
//!
//! Commands for one container run one at a time, in arrival order (a
//! scheduler's clean-up `remove` after a timed-out `create` waits for that
//! create to finish). An inventory waits for every command in flight, so it
//! never reports a container halfway through an operation. Whatever the
//! command, at most [`EngineLimit`]'s bound of engine operations run at once.

use std::{sync::Arc, time::Duration};

use devctl_proto::{
    keyed::KeyedLocks,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
};
use tokio::sync::RwLock;

use crate::{
    limit::EngineLimit,
    runtime::{ContainerRuntime, RuntimeError},
};

/// A stream the agent is to serve after replying to its command.
pub struct OpenedStream {
    /// Where the reader wants it.
    pub setup: pb::StreamSetup,
    /// What to send.
    pub chunks: crate::runtime::OutputChunks,
    /// For an exec: its input side and control.
    pub exec: Option<ExecParts>,
}

/// The input side of an exec.
#[allow(missing_debug_implementations)] // holds an engine writer
pub struct ExecParts {
    /// Where its input arrives.
    pub input_subject: String,
    /// Its stdin, if attached.
    pub input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    /// Resize and exit code.
    pub control: Arc<dyn crate::runtime::ExecControl>,
}

impl std::fmt::Debug for OpenedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStream")
            .field("setup", &self.setup)
            .finish_non_exhaustive()
    }
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Handled {
    /// The reply to send.
    pub reply: pb::AgentReply,
    /// A stream to serve once the reply is sent.
    pub stream: Option<OpenedStream>,
}

impl From<pb::AgentReply> for Handled {
    fn from(reply: pb::AgentReply) -> Self {
        Self {
            reply,
            stream: None,
        }
    }
}

/// Executes commands on a runtime.
#[derive(Debug)]
pub struct Dispatcher<R> {
    runtime: R,
    per_container: Arc<KeyedLocks>,
    // Commands hold it shared; an inventory holds it exclusively.
    barrier: RwLock<()>,
    limit: EngineLimit,
    settle: Duration,
}

pub(crate) fn error_reply(code: pb::AgentErrorCode, message: String) -> pb::AgentReply {
    pb::AgentReply {
        result: Some(Reply::Error(pb::AgentError {
            code: code as i32,
            message,
        })),
    }
}

/// The reply to a command the agent will not execute because it is
/// stopping.
pub fn shutting_down() -> pb::AgentReply {
    error_reply(
        pb::AgentErrorCode::ShuttingDown,
        "the agent is shutting down and did not execute the command".into(),
    )
}

impl<R: ContainerRuntime> Dispatcher<R> {
    /// A dispatcher over `runtime`, running engine operations within
    /// `limit`.
    pub fn new(runtime: R, limit: EngineLimit) -> Self {
        Self {
            runtime,
            per_container: KeyedLocks::new(),
            barrier: RwLock::new(()),
            limit,
            settle: Duration::ZERO,
        }
    }

    /// Makes a create answer only once its container has stayed up for
    /// `settle` (or has exited); zero answers as soon as it started.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// Executes `command`: the reply to send, and any stream to serve.
    pub async fn handle(&self, command: Result<pb::AgentCommand, prost::DecodeError>) -> Handled {
        match command {
            Ok(pb::AgentCommand {
                command: Some(Command::Logs(logs)),
            }) => self.open_logs(logs).await,
            Ok(pb::AgentCommand {
                command: Some(Command::Exec(exec)),
            }) => self.open_exec(exec).await,
            other => self.execute_one(other).await.into(),
        }
    }

    /// Opens a container's output. Takes no container lock: a stream must
    /// not hold up a stop.
    async fn open_logs(&self, cmd: pb::LogsCommand) -> Handled {
        let Some(setup) = cmd.stream else {
            return error_reply(
                pb::AgentErrorCode::BadCommand,
                "logs: no stream setup".into(),
            )
            .into();
        };
        let options = crate::runtime::LogOptions {
            follow: cmd.follow,
            tail: cmd.tail,
            since: cmd.since.map(|t| t.seconds),
            timestamps: cmd.timestamps,
        };
        match self.limit.run(self.runtime.logs(&cmd.id, options)).await {
            Ok(chunks) => Handled {
                reply: pb::AgentReply {
                    result: Some(Reply::Opened(pb::StreamOpened {})),
                },
                stream: Some(OpenedStream {
                    setup,
                    chunks,
                    exec: None,
                }),
            },
            Err(e) => error_reply(e.code(), e.to_string()).into(),
        }
    }

    /// Starts a command in a container. Takes no container lock.
    async fn open_exec(&self, cmd: pb::ExecCommand) -> Handled {
        let (Some(setup), Some(start)) = (cmd.stream, cmd.start) else {
            return error_reply(
                pb::AgentErrorCode::BadCommand,
                "exec: incomplete command".into(),
            )
            .into();
        };
        tracing::info!(id = %cmd.id, tty = start.tty, "exec");
        match self.limit.run(self.runtime.exec(&cmd.id, &start)).await {
            Ok(session) => Handled {
                reply: pb::AgentReply {
                    result: Some(Reply::Opened(pb::StreamOpened {})),
                },
                stream: Some(OpenedStream {
                    setup,
                    chunks: session.output,
                    exec: Some(ExecParts {
                        input_subject: cmd.input_subject,
                        input: session.input,
                        control: session.control,
                    }),
                }),
            },
            Err(e) => error_reply(e.code(), e.to_string()).into(),
        }
    }

    /// After a create: waits (holding no engine permit) until the container
    /// has stayed up for the settle time, so a command that exits at once is
    /// reported as stopped with its exit code, not as running.
    async fn settle(&self, s: pb::EngineContainer) -> Result<pb::EngineContainer, RuntimeError> {
        if self.settle.is_zero() || s.state != pb::ContainerState::Running as i32 {
            return Ok(s);
        }
        match self.runtime.wait_exit(&s.runtime_id, self.settle).await? {
            Some(exited) => {
                tracing::info!(id = %exited.id, exit_code = ?exited.exit_code, "the container exited right after it started");
                Ok(exited)
            }
            None => Ok(s),
        }
    }

    async fn execute_one(
        &self,
        command: Result<pb::AgentCommand, prost::DecodeError>,
    ) -> pb::AgentReply {
        let cmd = match command.map(|c| c.command) {
            Err(e) => {
                return error_reply(
                    pb::AgentErrorCode::BadCommand,
                    format!("undecodable command: {e}"),
                );
            }
            Ok(None) => {
                return error_reply(pb::AgentErrorCode::BadCommand, "empty command".into());
            }
            Ok(Some(cmd)) => cmd,
        };
        let result = match container_id(&cmd) {
            // A permit is taken only once the command's turn came, so
            // commands queued behind a container's lock hold none.
            None => {
                let _all = self.barrier.write().await;
                self.limit.run(execute(&self.runtime, cmd)).await
            }
            Some(id) => {
                let _shared = self.barrier.read().await;
                let _one = self.per_container.lock(&id).await;
                let create = matches!(cmd, Command::Create(_));
                let done = self.limit.run(execute(&self.runtime, cmd)).await;
                match done {
                    Ok(Reply::Status(s)) if create => self.settle(s).await.map(Reply::Status),
                    other => other,
                }
            }
        };
        match result {
            Ok(reply) => pb::AgentReply {
                result: Some(reply),
            },
            Err(e) => error_reply(e.code(), e.to_string()),
        }
    }
}

/// The container a command is about; `None` for node-wide commands.
fn container_id(cmd: &Command) -> Option<String> {
    match cmd {
        Command::Create(c) => Some(c.id.clone()),
        Command::Start(c) => Some(c.id.clone()),
        Command::Stop(c) => Some(c.id.clone()),
        Command::Restart(c) => Some(c.id.clone()),
        Command::Remove(c) => Some(c.id.clone()),
        Command::Logs(c) => Some(c.id.clone()),
        Command::Exec(c) => Some(c.id.clone()),
        Command::Inspect(c) => Some(c.id.clone()),
        Command::Inventory(_) => None,
    }
}

async fn execute<R: ContainerRuntime>(runtime: &R, cmd: Command) -> Result<Reply, RuntimeError> {
    Ok(match cmd {
        Command::Create(c) => {
            let image = c
                .spec
                .as_ref()
                .map(|s| s.image.as_str())
                .unwrap_or_default();
            tracing::info!(id = %c.id, name = %c.name, image, "create");
            Reply::Status(runtime.create_and_start(&c).await?)
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
        Command::Inspect(c) => Reply::Status(runtime.inspect(&c.id).await?),
        Command::Inventory(_) => Reply::Inventory(pb::Inventory {
            containers: runtime.inventory().await?,
        }),
        // Routed to open_logs/open_exec before it gets here.
        Command::Logs(_) | Command::Exec(_) => Reply::Error(pb::AgentError {
            code: pb::AgentErrorCode::BadCommand as i32,
            message: "logs are a stream".into(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;
    use crate::runtime::EngineInfo;

    /// Records calls; `create` waits until the gate opens.
    #[derive(Default)]
    struct Gated {
        log: Mutex<Vec<String>>,
        gate: Notify,
    }

    impl Gated {
        fn log(&self, s: String) -> Result<pb::EngineContainer, RuntimeError> {
            self.log.lock().unwrap().push(s);
            Ok(pb::EngineContainer::default())
        }
        fn calls(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl ContainerRuntime for Arc<Gated> {
        async fn info(&self) -> Result<EngineInfo, RuntimeError> {
            Ok(EngineInfo::default())
        }
        async fn create_and_start(
            &self,
            spec: &pb::CreateCommand,
        ) -> Result<pb::EngineContainer, RuntimeError> {
            self.gate.notified().await;
            self.log(format!("create {}", spec.id))
        }
        async fn start(&self, id: &str) -> Result<pb::EngineContainer, RuntimeError> {
            self.log(format!("start {id}"))
        }
        async fn inspect(&self, id: &str) -> Result<pb::EngineContainer, RuntimeError> {
            self.log(format!("inspect {id}"))
        }
        async fn stop(&self, id: &str, _: i32) -> Result<pb::EngineContainer, RuntimeError> {
            self.log(format!("stop {id}"))
        }
        async fn restart(&self, id: &str, _: i32) -> Result<pb::EngineContainer, RuntimeError> {
            self.log(format!("restart {id}"))
        }
        async fn remove(&self, id: &str, _: bool) -> Result<(), RuntimeError> {
            self.log(format!("remove {id}")).map(|_| ())
        }
        async fn inventory(&self) -> Result<Vec<pb::EngineContainer>, RuntimeError> {
            self.log("inventory".into()).map(|_| vec![])
        }
        async fn running_count(&self) -> Result<i32, RuntimeError> {
            Ok(0)
        }
        async fn wait_exit(
            &self,
            id: &str,
            _: Duration,
        ) -> Result<Option<pb::EngineContainer>, RuntimeError> {
            self.log(format!("wait {id}")).map(Some)
        }
        fn engine_events(&self, _: i64) -> crate::runtime::EngineEvents {
            Box::pin(futures::stream::empty())
        }
        async fn running(&self) -> Result<Vec<crate::runtime::Running>, RuntimeError> {
            Ok(vec![])
        }
        async fn exec(
            &self,
            id: &str,
            _: &pb::ExecStart,
        ) -> Result<crate::runtime::ExecSession, RuntimeError> {
            Err(RuntimeError::NotFound(id.to_string()))
        }
        fn stats(&self, _: &crate::runtime::Running) -> crate::runtime::StatsSamples {
            Box::pin(futures::stream::empty())
        }
        async fn logs(
            &self,
            id: &str,
            _: crate::runtime::LogOptions,
        ) -> Result<crate::runtime::OutputChunks, RuntimeError> {
            self.log(format!("logs {id}"))?;
            Ok(Box::pin(futures::stream::empty()))
        }
    }

    fn cmd(c: Command) -> Result<pb::AgentCommand, prost::DecodeError> {
        Ok(pb::AgentCommand { command: Some(c) })
    }

    fn create(id: &str) -> Command {
        Command::Create(pb::CreateCommand {
            id: id.into(),
            ..Default::default()
        })
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Handles `c` on a task of its own.
    fn spawn_on(d: &Arc<Dispatcher<Arc<Gated>>>, c: Command) -> tokio::task::JoinHandle<Handled> {
        let d = Arc::clone(d);
        tokio::spawn(async move { d.handle(cmd(c)).await })
    }

    #[tokio::test]
    async fn commands_for_one_container_run_in_order_others_do_not_wait() {
        let rt = Arc::new(Gated::default());
        let d = Arc::new(Dispatcher::new(Arc::clone(&rt), EngineLimit::new(8)));
        let spawn = |c: Command| spawn_on(&d, c);
        let create_a = spawn(create("a"));
        settle().await;
        let remove_a = spawn(Command::Remove(pb::RemoveCommand {
            id: "a".into(),
            force: true,
        }));
        let start_b = spawn(Command::Start(pb::StartCommand { id: "b".into() }));
        start_b.await.unwrap();
        settle().await;
        assert!(
            !remove_a.is_finished(),
            "remove waits for the create of the same container"
        );
        assert_eq!(rt.calls(), ["start b"]);
        rt.gate.notify_one();
        create_a.await.unwrap();
        remove_a.await.unwrap();
        assert_eq!(rt.calls(), ["start b", "create a", "remove a"]);
    }

    #[tokio::test]
    async fn an_inventory_waits_for_commands_in_flight() {
        let rt = Arc::new(Gated::default());
        let d = Arc::new(Dispatcher::new(Arc::clone(&rt), EngineLimit::new(8)));
        let create_a = spawn_on(&d, create("a"));
        settle().await;
        let inventory = spawn_on(&d, Command::Inventory(pb::InventoryCommand {}));
        settle().await;
        assert!(!inventory.is_finished());
        rt.gate.notify_one();
        create_a.await.unwrap();
        inventory.await.unwrap();
        assert_eq!(rt.calls(), ["create a", "inventory"]);
    }

    #[tokio::test]
    async fn opening_logs_does_not_wait_for_the_containers_operations() {
        let rt = Arc::new(Gated::default());
        let d = Arc::new(Dispatcher::new(Arc::clone(&rt), EngineLimit::new(8)));
        let create_a = spawn_on(&d, create("a"));
        settle().await;
        let logs = d
            .handle(cmd(Command::Logs(pb::LogsCommand {
                id: "a".into(),
                stream: Some(pb::StreamSetup::default()),
                ..Default::default()
            })))
            .await;
        assert!(matches!(logs.reply.result, Some(Reply::Opened(_))));
        assert!(logs.stream.is_some());
        assert!(!create_a.is_finished());
        rt.gate.notify_one();
        create_a.await.unwrap();
        assert_eq!(rt.calls(), ["logs a", "create a"]);
    }

    #[tokio::test]
    async fn undecodable_and_empty_commands_are_refused() {
        let d = Dispatcher::new(Arc::new(Gated::default()), EngineLimit::new(8));
        let r = d.handle(Ok(pb::AgentCommand { command: None })).await;
        let Some(Reply::Error(e)) = r.reply.result else {
            panic!("{r:?}")
        };
        assert_eq!(e.code, pb::AgentErrorCode::BadCommand as i32);
    }
}
