//! Turns one bus command into runtime calls and one reply.
//!
//! Commands for one container run one at a time, in arrival order (a
//! scheduler's clean-up `remove` after a timed-out `create` waits for that
//! create to finish). An inventory waits for every command in flight, so it
//! never reports a container halfway through an operation. Whatever the
//! command, at most [`EngineLimit`]'s bound of engine operations run at once.
//!
//! One piece on purpose: the single dispatcher every bus command passes
//! through (the per-container lock, the engine bound, the upgrade barrier)
//! and the match from command to runtime call, the opening of tunnels
//! included (what they then carry lives in `tunnel.rs`, `netns.rs` and
//! `ssh/`). Splitting the match would spread one locking discipline over
//! several files. Its tests are in dispatch_tests.rs.

use std::{path::PathBuf, sync::Arc, time::Duration};

use devctl_proto::{
    keyed::KeyedLocks,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    ssh::ssh_key::{HashAlg, PrivateKey},
};
use futures::future::BoxFuture;
use tokio::sync::RwLock;

use crate::{
    limit::EngineLimit,
    netns,
    runtime::{ContainerRuntime, ExecSession, RuntimeError},
    ssh,
    tunnel::{OpenedTunnel, Target, TunnelError},
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
    /// A tunnel to serve once its pipes are open and the reply is sent.
    pub tunnel: Option<OpenedTunnel>,
    /// An image build to serve once its pipes are open and the reply is
    /// sent.
    pub build: Option<crate::build::OpenedBuild>,
    /// A workspace to receive once its pipes are open and the reply is
    /// sent.
    pub receive: Option<pb::ReceiveWorkspaceCommand>,
    /// An image archive to receive and load once its pipes are open and
    /// the reply is sent.
    pub import: Option<crate::import::OpenedImport>,
}

impl From<pb::AgentReply> for Handled {
    fn from(reply: pb::AgentReply) -> Self {
        Self {
            reply,
            stream: None,
            tunnel: None,
            build: None,
            receive: None,
            import: None,
        }
    }
}

/// What tunnels need from the agent.
#[derive(Clone)]
pub struct TunnelSettings {
    /// The SSH host key; without one, SSH tunnels are refused.
    pub host_key: Option<Arc<PrivateKey>>,
    /// The host's `/proc` (containers' network namespaces are found
    /// there).
    pub proc_root: PathBuf,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            host_key: None,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl std::fmt::Debug for TunnelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelSettings")
            .field(
                "host_key",
                &self
                    .host_key
                    .as_ref()
                    .map(|k| k.public_key().fingerprint(HashAlg::Sha256).to_string()),
            )
            .field("proc_root", &self.proc_root)
            .finish()
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
    tunnels: TunnelSettings,
    imports: crate::import::Imports,
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
            tunnels: TunnelSettings::default(),
            imports: crate::import::Imports::default(),
        }
    }

    /// Receives pushed image archives in `imports`' directory.
    pub fn with_imports(mut self, imports: crate::import::Imports) -> Self {
        self.imports = imports;
        self
    }

    /// Gives tunnels their host key and `/proc`.
    pub fn with_tunnels(mut self, tunnels: TunnelSettings) -> Self {
        self.tunnels = tunnels;
        self
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
            Ok(pb::AgentCommand {
                command: Some(Command::Tunnel(tunnel)),
            }) => self.open_tunnel(tunnel).await,
            Ok(pb::AgentCommand {
                command: Some(Command::Build(build)),
            }) => match crate::build::accept(build) {
                Ok(build) => {
                    tracing::info!(tag = %build.command.tag, session = %build.command.session, bytes = build.command.context_size, "build");
                    Handled {
                        reply: pb::AgentReply {
                            result: Some(Reply::Opened(pb::StreamOpened::default())),
                        },
                        stream: None,
                        tunnel: None,
                        build: Some(build),
                        receive: None,
                        import: None,
                    }
                }
                Err(e) => error_reply(pb::AgentErrorCode::BadCommand, e).into(),
            },
            Ok(pb::AgentCommand {
                command: Some(Command::SendWorkspace(send)),
            }) => self.open_send_workspace(send).await,
            Ok(pb::AgentCommand {
                command: Some(Command::ReceiveWorkspace(receive)),
            }) => accept_receive(receive),
            Ok(pb::AgentCommand {
                command: Some(Command::Pull(pull)),
            }) => self.open_pull(pull),
            Ok(pb::AgentCommand {
                command: Some(Command::ImportImage(import)),
            }) => match self.imports.accept(import) {
                Ok(import) => {
                    tracing::info!(sha256 = %import.command.sha256, image = %import.command.image_id, bytes = import.command.size_bytes, offset = import.offset, "import image");
                    Handled {
                        reply: pb::AgentReply {
                            result: Some(Reply::Opened(pb::StreamOpened {
                                offset: import.offset,
                            })),
                        },
                        stream: None,
                        tunnel: None,
                        build: None,
                        receive: None,
                        import: Some(import),
                    }
                }
                Err((code, e)) => error_reply(code, e).into(),
            },
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
                    result: Some(Reply::Opened(pb::StreamOpened::default())),
                },
                stream: Some(OpenedStream {
                    setup,
                    chunks,
                    exec: None,
                }),
                tunnel: None,
                build: None,
                receive: None,
                import: None,
            },
            Err(e) => error_reply(e.code(), e.to_string()).into(),
        }
    }

    /// Opens a workspace's data as a stream (a tar archive). Takes no
    /// lock: the scheduler marks the workspace as moving meanwhile.
    async fn open_send_workspace(&self, cmd: pb::SendWorkspaceCommand) -> Handled {
        let Some(setup) = cmd.stream else {
            return error_reply(
                pb::AgentErrorCode::BadCommand,
                "send workspace: no stream setup".into(),
            )
            .into();
        };
        match self.runtime.send_workspace(&cmd.name).await {
            Ok(chunks) => Handled {
                reply: pb::AgentReply {
                    result: Some(Reply::Opened(pb::StreamOpened::default())),
                },
                stream: Some(OpenedStream {
                    setup,
                    chunks,
                    exec: None,
                }),
                tunnel: None,
                receive: None,
                import: None,
                build: None,
            },
            Err(e) => error_reply(e.code(), e.to_string()).into(),
        }
    }

    /// Receives workspace `w` from `data` (see
    /// [`ContainerRuntime::receive_workspace`]), within the engine bound
    /// and the workspace's own lock.
    pub async fn receive_workspace(
        &self,
        w: &pb::WorkspaceAttach,
        data: crate::runtime::WorkspaceData,
    ) -> Result<(), RuntimeError> {
        let _shared = self.barrier.read().await;
        let _one = self
            .per_container
            .lock(&format!("workspace/{}", w.name))
            .await;
        self.limit
            .run(self.runtime.receive_workspace(w, data))
            .await
    }

    /// Starts a pull (see [`crate::registry`]). Takes no container lock:
    /// the container does not exist yet. The credentials go to the runtime
    /// for this pull only; they are not logged.
    fn open_pull(&self, mut cmd: pb::PullCommand) -> Handled {
        let Some(setup) = cmd.stream.take() else {
            return error_reply(
                pb::AgentErrorCode::BadCommand,
                "pull: no stream setup".into(),
            )
            .into();
        };
        let policy = match cmd.policy() {
            pb::PullPolicy::Never => {
                return error_reply(
                    pb::AgentErrorCode::BadCommand,
                    "pull: policy NEVER pulls nothing".into(),
                )
                .into();
            }
            pb::PullPolicy::Unspecified => pb::PullPolicy::Missing,
            p => p,
        };
        tracing::info!(id = %cmd.id, image = %cmd.image, ?policy, credentials = cmd.auth.is_some(), "pull");
        let progress = self.runtime.pull(&cmd.image, policy, cmd.auth);
        Handled {
            reply: pb::AgentReply {
                result: Some(Reply::Opened(pb::StreamOpened::default())),
            },
            stream: Some(OpenedStream {
                setup,
                chunks: crate::registry::pull_chunks(progress),
                exec: None,
            }),
            tunnel: None,
            receive: None,
            import: None,
            build: None,
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
                    result: Some(Reply::Opened(pb::StreamOpened::default())),
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
                tunnel: None,
                build: None,
                receive: None,
                import: None,
            },
            Err(e) => error_reply(e.code(), e.to_string()).into(),
        }
    }

    /// Prepares a tunnel into a running container: connects to its port,
    /// or readies an SSH server for it. Takes no container lock, as an
    /// exec: a tunnel must not hold up a stop.
    async fn open_tunnel(&self, cmd: pb::TunnelCommand) -> Handled {
        let (Some(up), Some(down)) = (cmd.up.clone(), cmd.down.clone()) else {
            return error_reply(
                pb::AgentErrorCode::BadCommand,
                "tunnel: no stream setup".into(),
            )
            .into();
        };
        let target = match self.tunnel_target(&cmd).await {
            Ok(target) => target,
            Err(e) => {
                tracing::info!(id = %cmd.id, session = %cmd.session, error = %e, "tunnel refused");
                return error_reply(e.code(), e.to_string()).into();
            }
        };
        tracing::info!(id = %cmd.id, session = %cmd.session, kind = ?cmd.kind(), port = cmd.port, "tunnel");
        Handled {
            reply: pb::AgentReply {
                result: Some(Reply::Opened(pb::StreamOpened::default())),
            },
            stream: None,
            tunnel: Some(OpenedTunnel {
                id: cmd.id,
                session: cmd.session,
                up,
                down,
                target,
            }),
            build: None,
            receive: None,
            import: None,
        }
    }

    async fn tunnel_target(&self, cmd: &pb::TunnelCommand) -> Result<Target, TunnelError> {
        match cmd.kind() {
            pb::TunnelKind::Tcp => {
                let port = u16::try_from(cmd.port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        TunnelError::BadCommand(format!("tunnel: port {} is not 1-65535", cmd.port))
                    })?;
                Ok(Target::Tcp(
                    self.connect_in(&cmd.id, "localhost", port).await?,
                ))
            }
            pb::TunnelKind::Ssh => {
                let Some(access) = &cmd.ssh else {
                    return Err(TunnelError::BadCommand("tunnel: SSH without access".into()));
                };
                let Some(host_key) = &self.tunnels.host_key else {
                    return Err(TunnelError::Failed("this agent has no SSH host key".into()));
                };
                // Running? (An SSH session reaches it only then.)
                self.limit.run(self.runtime.init_process(&cmd.id)).await?;
                let setup =
                    ssh::ServerSetup::new(host_key, access).map_err(TunnelError::Invalid)?;
                Ok(Target::Ssh(Arc::new(setup)))
            }
            pb::TunnelKind::Unspecified => Err(TunnelError::BadCommand("tunnel: no kind".into())),
        }
    }

    /// Connects to `host` port `port` inside the network namespace of the
    /// running container with devctl id `id` (see [`netns`]).
    pub async fn connect_in(
        &self,
        id: &str,
        host: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, TunnelError> {
        let addrs = netns::target_addrs(host, port).map_err(TunnelError::Invalid)?;
        let process = self.limit.run(self.runtime.init_process(id)).await?;
        let name = &process.name;
        let proc_root = &self.tunnels.proc_root;
        let ns = netns::NetNs::of_process(proc_root, process.pid).map_err(|e| {
            TunnelError::Failed(format!(
                "the network namespace of container {name} (process {} under {}): {e}",
                process.pid,
                proc_root.display()
            ))
        })?;
        // Opened first, checked after: the namespace held is that of a
        // process of this container, not of whatever took its PID (or of a
        // process of this host, when the engine runs on another).
        if !netns::in_cgroup_of(proc_root, process.pid, &process.runtime_id) {
            return Err(TunnelError::Failed(format!(
                "process {} is not container {name}'s here: tunnels need the agent on the engine's host (and its /proc: --proc-root)",
                process.pid
            )));
        }
        ns.connect(addrs, netns::CONNECT_TIMEOUT)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused if netns::is_loopback(host) => {
                    TunnelError::Invalid(format!(
                        "nothing listens on port {port} in container {name}"
                    ))
                }
                std::io::ErrorKind::ConnectionRefused => TunnelError::Invalid(format!(
                    "{host} port {port} refused the connection (from container {name})"
                )),
                std::io::ErrorKind::TimedOut => TunnelError::Failed(format!(
                    "connecting to {host} port {port} from container {name} timed out"
                )),
                _ => TunnelError::Failed(format!(
                    "connecting to {host} port {port} from container {name}: {e}"
                )),
            })
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

/// Accepts a workspace to receive: its pipes are opened and it is served
/// after the reply (by `serve_receive`).
fn accept_receive(cmd: pb::ReceiveWorkspaceCommand) -> Handled {
    if cmd.workspace.is_none() || cmd.up.is_none() || cmd.down.is_none() {
        return error_reply(
            pb::AgentErrorCode::BadCommand,
            "receive workspace: incomplete command".into(),
        )
        .into();
    }
    Handled {
        reply: pb::AgentReply {
            result: Some(Reply::Opened(pb::StreamOpened::default())),
        },
        stream: None,
        tunnel: None,
        receive: Some(cmd),
        import: None,
        build: None,
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
        Command::Tunnel(c) => Some(c.id.clone()),
        Command::Inventory(_) | Command::Build(_) | Command::ImportImage(_) => None,
        // A workspace's commands are serialized under a key no container
        // id can be.
        Command::RemoveWorkspace(c) => Some(format!("workspace/{}", c.name)),
        Command::SendWorkspace(c) => Some(format!("workspace/{}", c.name)),
        Command::ReceiveWorkspace(c) => Some(format!(
            "workspace/{}",
            c.workspace
                .as_ref()
                .map(|w| w.name.as_str())
                .unwrap_or_default()
        )),
        Command::Pull(c) => Some(c.id.clone()),
        Command::ListImages(_) | Command::RemoveImage(_) => None,
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
            // Volumes are listed after the containers: one made meanwhile
            // is reported, never one removed meanwhile as present.
            workspaces: match runtime.workspaces().await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "listing workspace volumes failed; the inventory fails with it");
                    return Err(e);
                }
            },
        }),
        Command::RemoveWorkspace(c) => {
            tracing::info!(workspace = %c.name, "remove workspace");
            runtime.remove_workspace(&c.name).await?;
            Reply::Removed(pb::RemovedReply { id: c.name })
        }
        // Routed to open_send_workspace/accept_receive before it gets here.
        Command::SendWorkspace(_) | Command::ReceiveWorkspace(_) => Reply::Error(pb::AgentError {
            code: pb::AgentErrorCode::BadCommand as i32,
            message: "streams are opened elsewhere".into(),
        }),
        Command::ListImages(_) => {
            let images = runtime.images().await?;
            Reply::Images(pb::ImageList {
                digest: crate::images::digest(&images),
                images,
            })
        }
        Command::RemoveImage(c) => {
            tracing::info!(image = %c.image, "remove image");
            Reply::ImageRemoved(runtime.remove_image(&c.image).await?)
        }
        // Routed to open_logs/open_exec/open_tunnel/open_pull before it
        // gets here.
        Command::Logs(_)
        | Command::Exec(_)
        | Command::Tunnel(_)
        | Command::Pull(_)
        | Command::Build(_)
        | Command::ImportImage(_) => Reply::Error(pb::AgentError {
            code: pb::AgentErrorCode::BadCommand as i32,
            message: "streams are opened elsewhere".into(),
        }),
    })
}

/// The container of one tunnel, as its SSH sessions reach it: commands
/// and connections go through the dispatcher's engine bound and checks.
#[derive(Debug)]
pub struct TunnelContainer<R> {
    dispatcher: Arc<Dispatcher<R>>,
    id: String,
}

impl<R> TunnelContainer<R> {
    /// Container `id`, reached through `dispatcher`.
    pub fn new(dispatcher: Arc<Dispatcher<R>>, id: String) -> Self {
        Self { dispatcher, id }
    }
}

impl<R: ContainerRuntime> ssh::Container for TunnelContainer<R> {
    fn exec(&self, start: pb::ExecStart) -> BoxFuture<'static, Result<ExecSession, RuntimeError>> {
        let (d, id) = (Arc::clone(&self.dispatcher), self.id.clone());
        Box::pin(async move {
            tracing::info!(id = %id, tty = start.tty, "exec (SSH)");
            d.limit.run(d.runtime.exec(&id, &start)).await
        })
    }

    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, TunnelError>> {
        let (d, id) = (Arc::clone(&self.dispatcher), self.id.clone());
        Box::pin(async move { d.connect_in(&id, &host, port).await })
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
