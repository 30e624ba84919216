//! The container runtime an agent drives. [`docker::DockerRuntime`] is the
//! real one; the trait exists so the command dispatcher can be unit-tested.

pub mod docker;

use std::future::Future;

use devctl_proto::pb;
use thiserror::Error;

/// What the node's engine reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineInfo {
    /// CPUs available to containers.
    pub cpus: i32,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Engine version.
    pub version: String,
    /// `os/arch`.
    pub platform: String,
    /// Where the engine keeps its data (for disk usage).
    pub data_root: String,
}

/// A running devctl container of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// devctl id.
    pub id: String,
    /// devctl name.
    pub name: String,
    /// Engine id.
    pub runtime_id: String,
}

/// Usage samples of one container, about one a second, until it stops.
pub type StatsSamples =
    futures::stream::BoxStream<'static, Result<pb::ContainerStats, RuntimeError>>;

/// Why a runtime operation failed.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The image is not present on this engine.
    #[error(
        "image {image:?} is not present on node {node:?}; create with --pull missing to pull it from its registry, or build or load it there"
    )]
    ImageNotFound {
        /// The image reference.
        image: String,
        /// This node.
        node: String,
    },
    /// No devctl container with this id on this node.
    #[error("no container with devctl id {0} on this node")]
    NotFound(String),
    /// The engine refused the request as invalid.
    #[error("the engine refused the container: {0}")]
    Invalid(String),
    /// The request conflicts with the container's state.
    #[error("{0}")]
    Conflict(String),
    /// The engine failed or could not be reached.
    #[error("container engine: {0}")]
    Engine(String),
    /// A workspace that must exist has no volume here.
    #[error("{0}")]
    WorkspaceMissing(String),
    /// A mount this agent does not allow.
    #[error("{0}")]
    MountRefused(String),
    /// A pull: the registry refused the credentials (or wanted some).
    #[error("{0}")]
    RegistryAuth(String),
    /// A pull: the registry could not be reached.
    #[error("{0}")]
    RegistryUnreachable(String),
    /// A pull: the registry has no such image or tag.
    #[error("{0}")]
    NotInRegistry(String),
}

impl RuntimeError {
    /// The bus error code for this error.
    pub fn code(&self) -> pb::AgentErrorCode {
        match self {
            RuntimeError::ImageNotFound { .. } => pb::AgentErrorCode::ImageNotFound,
            RuntimeError::NotFound(_) => pb::AgentErrorCode::ContainerNotFound,
            RuntimeError::Invalid(_) => pb::AgentErrorCode::Invalid,
            RuntimeError::Conflict(_) => pb::AgentErrorCode::Conflict,
            RuntimeError::Engine(_) => pb::AgentErrorCode::Engine,
            RuntimeError::WorkspaceMissing(_) => pb::AgentErrorCode::WorkspaceMissing,
            RuntimeError::MountRefused(_) => pb::AgentErrorCode::MountRefused,
            RuntimeError::RegistryAuth(_) => pb::AgentErrorCode::RegistryAuthFailed,
            RuntimeError::RegistryUnreachable(_) => pb::AgentErrorCode::RegistryUnreachable,
            RuntimeError::NotInRegistry(_) => pb::AgentErrorCode::ImageNotFound,
        }
    }
}

/// Container operations on one node's engine. Every method only ever
/// touches containers labelled with this node's name.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Capacity and version of the engine.
    fn info(&self) -> impl Future<Output = Result<EngineInfo, RuntimeError>> + Send;

    /// Creates and starts the container `spec` describes (its id, name,
    /// owner and spec). Idempotent on `spec.id`: if the container
    /// already exists it is started and returned. If creation succeeds and
    /// start fails, the created container is removed before the error is
    /// returned.
    fn create_and_start(
        &self,
        spec: &pb::CreateCommand,
    ) -> impl Future<Output = Result<pb::EngineContainer, RuntimeError>> + Send;

    /// The current state of the container with devctl id `id`.
    fn inspect(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<pb::EngineContainer, RuntimeError>> + Send;

    /// Starts the container with devctl id `id`.
    fn start(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<pb::EngineContainer, RuntimeError>> + Send;

    /// Stops it, waiting `timeout_seconds` before killing.
    fn stop(
        &self,
        id: &str,
        timeout_seconds: i32,
    ) -> impl Future<Output = Result<pb::EngineContainer, RuntimeError>> + Send;

    /// Restarts it.
    fn restart(
        &self,
        id: &str,
        timeout_seconds: i32,
    ) -> impl Future<Output = Result<pb::EngineContainer, RuntimeError>> + Send;

    /// Waits up to `within` for the container with engine id `runtime_id`
    /// to stop running: its status once it has, `None` if it still runs.
    fn wait_exit(
        &self,
        runtime_id: &str,
        within: std::time::Duration,
    ) -> impl Future<Output = Result<Option<pb::EngineContainer>, RuntimeError>> + Send;

    /// Removes it; a running container only with `force`.
    fn remove(
        &self,
        id: &str,
        force: bool,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Deletes workspace `name`'s volume ([`RuntimeError::NotFound`]: it
    /// has none).
    fn remove_workspace(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let name = name.to_string();
        async move { Err(RuntimeError::NotFound(format!("workspace {name}"))) }
    }

    /// Workspace `name`'s data as a tar archive.
    fn send_workspace(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<OutputChunks, RuntimeError>> + Send {
        let name = name.to_string();
        async move { Err(RuntimeError::NotFound(format!("workspace {name}"))) }
    }

    /// Makes workspace `w`'s volume and unpacks the archive `data` into it
    /// (deleting it again on failure).
    fn receive_workspace(
        &self,
        w: &pb::WorkspaceAttach,
        data: WorkspaceData,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = (w, data);
        async {
            Err(RuntimeError::Engine(
                "this runtime keeps no workspaces".into(),
            ))
        }
    }

    /// Every devctl workspace volume of this node, with its size.
    fn workspaces(
        &self,
    ) -> impl Future<Output = Result<Vec<pb::EngineWorkspace>, RuntimeError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Every devctl container of this node.
    fn inventory(
        &self,
    ) -> impl Future<Output = Result<Vec<pb::EngineContainer>, RuntimeError>> + Send;

    /// Every image on the engine, ordered by id. (Fakes have none.)
    fn images(&self) -> impl Future<Output = Result<Vec<pb::Image>, RuntimeError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Removes an image as `docker rmi` (never forced). (Fakes have none.)
    fn remove_image(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<pb::ImageRemoval, RuntimeError>> + Send {
        let image = image.to_string();
        async move {
            Err(RuntimeError::ImageNotFound {
                image,
                node: String::new(),
            })
        }
    }

    /// How many devctl containers of this node are running.
    fn running_count(&self) -> impl Future<Output = Result<i32, RuntimeError>> + Send;

    /// The devctl containers of this node that are running.
    fn running(&self) -> impl Future<Output = Result<Vec<Running>, RuntimeError>> + Send;

    /// A long-lived stream of usage samples of `container` (one engine
    /// stream, not one call per sample).
    fn stats(&self, container: &Running) -> StatsSamples;

    /// The engine's events for this node's devctl containers, from
    /// `since_nanos` (Unix time in nanoseconds) on, as they happen. The
    /// stream ends or fails when the engine connection does.
    fn engine_events(&self, since_nanos: i64) -> EngineEvents;

    /// Runs a command in the container with devctl id `id`.
    fn exec(
        &self,
        id: &str,
        start: &pb::ExecStart,
    ) -> impl Future<Output = Result<ExecSession, RuntimeError>> + Send;

    /// The first process of the running container with devctl id `id`,
    /// as this host sees it (its network namespace is the container's):
    /// [`RuntimeError::Conflict`] when the container does not run.
    fn init_process(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<InitProcess, RuntimeError>> + Send;

    /// The output of the container with devctl id `id`.
    fn logs(
        &self,
        id: &str,
        options: LogOptions,
    ) -> impl Future<Output = Result<OutputChunks, RuntimeError>> + Send;

    /// Builds an image from `build`'s context (a tar archive): the
    /// engine's output as it comes; the stream ends with an error when the
    /// build failed. Runtimes that cannot build (test fakes) refuse.
    fn build_image(&self, build: ImageBuild) -> BuildOutput {
        let _ = build;
        Box::pin(futures::stream::once(async {
            Err(RuntimeError::Engine(
                "this runtime cannot build images".into(),
            ))
        }))
    }

    /// Loads the image archive in file `archive` (as `docker load`): the
    /// engine's output as it comes; the stream ends with an error when the
    /// load failed. Runtimes that cannot load (test fakes) refuse.
    fn load_image(&self, archive: std::path::PathBuf) -> BuildOutput {
        let _ = archive;
        Box::pin(futures::stream::once(async {
            Err(RuntimeError::Engine(
                "this runtime cannot load images".into(),
            ))
        }))
    }

    /// Whether the engine has an image tagged `tag`.
    fn image_present(&self, tag: &str) -> impl Future<Output = Result<bool, RuntimeError>> + Send {
        let _ = tag;
        async { Ok(false) }
    }

    /// Pulls `image` (with `auth`, if any) when `policy` asks for it
    /// (ALWAYS; MISSING when the engine lacks it): its progress, each item
    /// the whole pull so far (never `done`: the caller adds the end). A
    /// runtime that cannot pull says so.
    fn pull(
        &self,
        image: &str,
        policy: pb::PullPolicy,
        auth: Option<pb::RegistryAuth>,
    ) -> PullProgress {
        let _ = (policy, auth);
        let image = image.to_string();
        Box::pin(futures::stream::once(async move {
            Err(RuntimeError::Engine(format!(
                "this runtime cannot pull images ({image})"
            )))
        }))
    }
}

/// One image build (see [`ContainerRuntime::build_image`]).
#[derive(Debug, Clone, Default)]
pub struct ImageBuild {
    /// The image reference to tag.
    pub tag: String,
    /// The Dockerfile's path in the context; empty: "Dockerfile".
    pub dockerfile: String,
    /// Build arguments.
    pub build_args: std::collections::HashMap<String, String>,
    /// The context, a tar archive.
    pub context: Vec<u8>,
}

/// A build's output, as the engine prints it.
pub type BuildOutput = futures::stream::BoxStream<'static, Result<Vec<u8>, RuntimeError>>;

/// The progress of a pull (see [`ContainerRuntime::pull`]).
pub type PullProgress = futures::stream::BoxStream<'static, Result<pb::PullProgress, RuntimeError>>;

/// A running container's first process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProcess {
    /// The container's devctl name (for messages).
    pub name: String,
    /// The container's engine id (its processes' cgroups name it).
    pub runtime_id: String,
    /// Its PID in the host's PID namespace.
    pub pid: u32,
}

/// What to read of a container's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep reading new output until the container stops.
    pub follow: bool,
    /// Only the last lines.
    pub tail: Option<i32>,
    /// Only output at or after this Unix time (seconds).
    pub since: Option<i64>,
    /// Prefix lines with the engine's timestamps.
    pub timestamps: bool,
}

/// A workspace archive arriving from the scheduler.
pub type WorkspaceData = futures::stream::BoxStream<'static, Result<Vec<u8>, std::io::Error>>;

/// A container's output: (which stream, bytes).
pub type OutputChunks =
    futures::stream::BoxStream<'static, Result<(pb::OutputStream, Vec<u8>), RuntimeError>>;

/// A running exec: its output, its stdin (when asked for), and control.
pub struct ExecSession {
    /// What the command writes.
    pub output: OutputChunks,
    /// The command's stdin, if it was asked for.
    pub input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    /// Resize and exit code.
    pub control: std::sync::Arc<dyn ExecControl>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession").finish_non_exhaustive()
    }
}

/// Control of a running exec.
pub trait ExecControl: Send + Sync {
    /// Resizes its terminal.
    fn resize(
        &self,
        rows: u16,
        cols: u16,
    ) -> futures::future::BoxFuture<'static, Result<(), RuntimeError>>;
    /// Delivers `signal` to the command's own process (not to what it
    /// started); nothing when it has already ended.
    fn signal(
        &self,
        signal: nix::sys::signal::Signal,
    ) -> futures::future::BoxFuture<'static, Result<(), RuntimeError>>;
    /// Its exit code, once it has ended.
    fn exit_code(&self) -> futures::future::BoxFuture<'static, Option<i32>>;
    /// Ends the command (and what it started) if it still runs: called when
    /// its session ends, so a cancelled exec leaves nothing behind.
    fn end(&self) -> futures::future::BoxFuture<'static, ()>;
}

/// A stream of engine events.
pub type EngineEvents = futures::stream::BoxStream<'static, Result<pb::EngineEvent, RuntimeError>>;
