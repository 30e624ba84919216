//! devctl-agent: one per Docker host.
//!
//! - [`config`]: flags and environment; [`cli`]: run or `join`.
//! - [`join`]: enrolment with a join token; [`renew`]: the certificate
//!   renewed over the bus before it runs out.
//! - [`bus`]: the NATS connection (commands in, heartbeats out); the only
//!   module that speaks NATS.
//! - [`runtime`]: the container engine; [`runtime::docker`] is the only module
//!   that speaks Docker.
//! - [`dispatch`]: one command in, runtime calls, one reply out;
//!   [`limit`]: the bound on engine operations run at once.
//! - [`forward`]: engine events to the bus, through a bounded queue.
//! - [`stats`]: usage reports, from [`cgroup`] files (the engine's stats API
//!   only where those cannot be read); [`host`]: the node's own usage.
//! - [`tunnel`]: byte streams between a scheduler's client and a container
//!   (`devctl ssh`, `devctl port-forward`): to a port reached through
//!   [`netns`], or to the agent's own SSH server, [`ssh`].
//! - [`run`]: the agent's main loop.
//!
//! ```text
//! scheduler --cmd--> NATS --> Commands --> dispatch --> DockerRuntime --> engine
//!     ^                                       |
//!     +-------- reply / heartbeat <-----------+
//! ```
//!
//! One piece: the agent's wiring. It covers start-up, the command loop that
//! hands each reply's streams to their owners (logs, exec, tunnels, builds,
//! workspace receives), and the heartbeat and shutdown that own those tasks.
//! Its tests are in lib_tests.rs.

pub mod build;
pub mod bus;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod forward;
pub mod host;
pub mod images;
pub mod import;
pub mod join;
pub mod limit;
pub mod netns;
pub mod registry;
pub mod renew;
pub mod runtime;
pub mod ssh;
pub mod stats;
pub mod tunnel;
pub mod workspaces;

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use devctl_proto::pb;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;
use dispatch::Dispatcher;
use runtime::{ContainerRuntime, EngineInfo, RuntimeError};

/// Why the agent could not run.
#[derive(Debug, Error)]
pub enum Error {
    /// A flag is wrong.
    #[error("invalid configuration: {0}")]
    Config(#[from] devctl_proto::validate::InvalidField),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// The engine failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The bus certificate is missing or not this node's.
    #[error("{0}")]
    Certificate(String),
    /// The SSH host key could not be read or made.
    #[error("SSH host key: {0}")]
    SshHostKey(String),
}

/// The agent's SSH host key, `DATA_DIR/ssh/host_ed25519_key` (0600), made
/// on first start.
pub fn ssh_host_key(config: &Config) -> Result<devctl_proto::ssh::ssh_key::PrivateKey, Error> {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = &config.data_dir else {
        return Err(Error::SshHostKey(
            "--data-dir (DEVCTL_DATA_DIR) is required: the agent keeps its SSH host key there"
                .into(),
        ));
    };
    let path = dir.join("ssh").join("host_ed25519_key");
    let failed = |e: &dyn std::fmt::Display| Error::SshHostKey(format!("{}: {e}", path.display()));
    let key =
        devctl_proto::ssh::load_or_create_key(&path, &format!("devctl-agent@{}", config.node))
            .map_err(|e| failed(&e))?;
    if key.algorithm() != devctl_proto::ssh::ssh_key::Algorithm::Ed25519 {
        return Err(failed(&format!(
            "an {} key; only ed25519 is used (remove the file to have one made)",
            key.algorithm()
        )));
    }
    let mode = std::fs::metadata(&path)
        .map_err(|e| failed(&e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the SSH host key was readable by others; made private (0600)");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed(&e))?;
    }
    Ok(key)
}

/// Checks the agent's bus certificate (`--data-dir`/tls): present, key
/// private, issued to this node as an agent. Returns its directory.
pub fn check_certificate(config: &Config) -> Result<std::path::PathBuf, Error> {
    let how = |node: &str| {
        format!(
            "get one with `devctl-scheduler issue-cert --role agent --name {node} --out DIR/tls` on the scheduler's host (or `devctl-agent join`) and pass --data-dir DIR"
        )
    };
    let Some(dir) = config.tls_dir() else {
        return Err(Error::Certificate(format!(
            "--data-dir (DEVCTL_DATA_DIR) is required: the agent needs its bus certificate in DIR/tls; {}",
            how(&config.node)
        )));
    };
    let bundle = devctl_proto::pki::Bundle::load(&dir)
        .map_err(|e| Error::Certificate(format!("bus certificate: {e}; {}", how(&config.node))))?;
    let id = devctl_proto::identity::Identity::from_pem(&bundle.cert_pem)
        .map_err(|e| Error::Certificate(format!("{}: {e}", dir.join("cert.pem").display())))?;
    if id.name != config.node || id.role != devctl_proto::identity::Role::Agent {
        return Err(Error::Certificate(format!(
            "{} is issued to {id}, but this agent is node {:?} (role agent); {}",
            dir.join("cert.pem").display(),
            config.node,
            how(&config.node)
        )));
    }
    Ok(dir)
}

/// Connects to the engine and the bus and serves commands until `shutdown`
/// resolves, then drains commands in flight and tells the scheduler it is
/// leaving.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let labels = config.validate()?;
    let tls_dir = check_certificate(&config)?;
    let host_key = ssh_host_key(&config)?;
    let runtime = runtime::docker::DockerRuntime::connect(
        config.docker_host.as_deref(),
        &config.node,
        &runtime::docker::LogPolicy {
            max_size: config.log_max_size.clone(),
            max_files: config.log_max_files,
        },
    )
    .await?
    .with_pids_limit((config.pids_limit > 0).then_some(config.pids_limit))
    .with_allowed_binds(config.allow_binds.clone())
    .with_privilege_escalation(config.allow_privilege_escalation)
    .with_workspace_measure_interval(config.workspace_measure_interval);
    tokio::pin!(shutdown);
    let bus = tokio::select! {
        bus = bus::Bus::connect(&config.nats, &config.node, &tls_dir) => bus?,
        _ = &mut shutdown => return Ok(()),
    };
    let refused = bus.refused().clone();
    let stop = async {
        tokio::select! {
            _ = shutdown => {}
            _ = refused.cancelled() => {
                tracing::error!("the bus refused this node's certificate (it was removed from the bus or revoked); stopping");
            }
        }
    };
    let stop_renewal = CancellationToken::new();
    let renewal = tokio::spawn(renew::run(
        bus.clone(),
        config.node.clone(),
        tls_dir.clone(),
        stop_renewal.clone(),
    ));
    let served = serve(config, labels, runtime, bus, host_key, stop).await;
    stop_renewal.cancel();
    if let Err(e) = renewal.await {
        tracing::error!(error = %e, "certificate renewal task failed");
    }
    served?;
    if refused.is_cancelled() {
        return Err(Error::Bus(bus::BusError::refused()));
    }
    Ok(())
}

/// The main loop, over any runtime; `host_key` is the SSH host key
/// ([`ssh_host_key`]).
///
/// Shutdown order: stop taking commands; answer commands already delivered
/// but not started with SHUTTING_DOWN (the scheduler then knows nothing was
/// done); wait for commands in flight; then send the `leaving` heartbeat.
pub async fn serve<R: ContainerRuntime>(
    config: Config,
    labels: HashMap<String, String>,
    runtime: R,
    bus: bus::Bus,
    host_key: devctl_proto::ssh::ssh_key::PrivateKey,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let ssh_host_key = host_key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::SshHostKey(e.to_string()))?;
    let info = runtime.info().await?;
    let found = runtime.inventory().await?;
    tracing::info!(
        node = %config.node,
        engine = %info.version,
        cpus = info.cpus,
        memory_bytes = info.memory_bytes,
        containers = found.len(),
        "agent started"
    );
    for c in &found {
        tracing::info!(id = %c.id, name = %c.name, engine_status = %c.engine_status, "found devctl container");
    }

    // Listen before announcing ourselves: the scheduler asks for our
    // inventory as soon as it hears the first heartbeat.
    let mut commands = bus.commands().await?;
    // Pushed image archives are received here; a transfer cut by a restart
    // continues from what the directory holds.
    let imports = import::Imports::new(match &config.data_dir {
        Some(dir) => dir.join("imports"),
        None => std::env::temp_dir()
            .join(format!("devctl-agent-{}", config.node))
            .join("imports"),
    });
    imports.sweep();
    let dispatcher = Arc::new(
        Dispatcher::new(runtime, limit::EngineLimit::new(config.max_engine_ops))
            .with_settle(config.create_settle)
            .with_tunnels(dispatch::TunnelSettings {
                host_key: Some(Arc::new(host_key)),
                proc_root: config.proc_root.clone(),
            })
            .with_imports(imports),
    );
    let stop_heartbeats = CancellationToken::new();
    let stream_count = bus::StreamCount::default();
    let heartbeats = tokio::spawn(
        HeartbeatLoop {
            bus: bus.clone(),
            config: config.clone(),
            labels,
            info: info.clone(),
            boot_id: uuid::Uuid::new_v4().to_string(),
            streams: stream_count.clone(),
            ssh_host_key,
        }
        .run(Arc::clone(&dispatcher), stop_heartbeats.clone()),
    );

    let stop_stats = CancellationToken::new();
    let stats = tokio::spawn(stats::run(
        Arc::clone(&dispatcher),
        bus.clone(),
        config.node.clone(),
        info.data_root.clone(),
        stats::Options {
            interval: config.stats_interval,
            source: config.stats_source,
            cgroup_root: config.cgroup_root.clone(),
            proc_root: config.proc_root.clone(),
            node_memory_bytes: info.memory_bytes,
            memory_used_percent: config.test_memory_used_percent,
            clock_skew_secs: config.test_clock_skew_secs,
        },
        stop_stats.clone(),
    ));
    let stop_events = CancellationToken::new();
    let events = tokio::spawn(forward::run(
        Arc::clone(&dispatcher),
        bus.clone(),
        config.node.clone(),
        config.event_queue,
        stop_events.clone(),
    ));

    let in_flight = TaskTracker::new();
    let streams = TaskTracker::new();
    let stop_streams = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(config.max_concurrent_ops.max(1)));
    tokio::pin!(shutdown);
    loop {
        // Back-pressure: at capacity, take no command until one finishes.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore is never closed"),
        };
        let incoming = tokio::select! {
            _ = &mut shutdown => break,
            incoming = commands.next() => match incoming {
                Some(incoming) => incoming,
                None => {
                    tracing::warn!("command subscription ended");
                    break;
                }
            },
        };
        let dispatcher = Arc::clone(&dispatcher);
        let bus = bus.clone();
        let (streams, stop_streams, count) =
            (streams.clone(), stop_streams.clone(), stream_count.clone());
        in_flight.spawn(async move {
            let handled = dispatcher.handle(incoming.command.clone()).await;
            let mut reply = handled.reply;
            // Listen for the reader (and an exec's input) before announcing
            // the stream.
            let stream = match handled.stream {
                Some(s) => match listen(&bus, s).await {
                    Ok(listening) => Some(listening),
                    Err(e) => {
                        reply = dispatch::error_reply(pb::AgentErrorCode::Engine, e.to_string());
                        None
                    }
                },
                None => None,
            };
            // A tunnel's pipes, likewise, before it is announced.
            let tunnel = match handled.tunnel {
                Some(t) => match bus.tunnel_pipes(&t.up, &t.down).await {
                    Ok(pipes) => Some((t, pipes)),
                    Err(e) => {
                        reply = dispatch::error_reply(pb::AgentErrorCode::Engine, e.to_string());
                        None
                    }
                },
                None => None,
            };
            // A build's pipes, likewise.
            let build = match handled.build {
                Some(b) => match bus.tunnel_pipes(&b.up, &b.down).await {
                    Ok(pipes) => Some((b, pipes)),
                    Err(e) => {
                        reply = dispatch::error_reply(pb::AgentErrorCode::Engine, e.to_string());
                        None
                    }
                },
                None => None,
            };
            // An image archive to receive, likewise.
            let import = match handled.import {
                Some(i) => match bus.tunnel_pipes(&i.up, &i.down).await {
                    Ok(pipes) => Some((i, pipes)),
                    Err(e) => {
                        reply = dispatch::error_reply(pb::AgentErrorCode::Engine, e.to_string());
                        None
                    }
                },
                None => None,
            };
            // A workspace to receive, likewise.
            let receive = match handled.receive {
                Some(r) => {
                    let (up, down) = (
                        r.up.clone().unwrap_or_default(),
                        r.down.clone().unwrap_or_default(),
                    );
                    match bus.tunnel_pipes(&up, &down).await {
                        Ok(pipes) => Some((r, pipes)),
                        Err(e) => {
                            reply =
                                dispatch::error_reply(pb::AgentErrorCode::Engine, e.to_string());
                            None
                        }
                    }
                }
                None => None,
            };
            if let Err(e) = bus.reply(&incoming, &reply).await {
                tracing::error!(error = %e, "could not send reply");
            }
            if let Some((r, pipes)) = receive {
                streams.spawn(workspaces::serve_receive(
                    Arc::clone(&dispatcher),
                    r,
                    pipes,
                    stop_streams.clone(),
                    count.clone(),
                ));
            }
            if let Some(listening) = stream {
                let bus = bus.clone();
                streams.spawn(serve_stream(
                    bus,
                    listening,
                    stop_streams.clone(),
                    count.clone(),
                ));
            }
            if let Some((i, pipes)) = import {
                streams.spawn(import::serve(
                    i,
                    pipes,
                    Arc::clone(&dispatcher),
                    stop_streams.clone(),
                    count.clone(),
                ));
            }
            if let Some((b, pipes)) = build {
                streams.spawn(build::serve(
                    b,
                    pipes,
                    Arc::clone(&dispatcher),
                    stop_streams.clone(),
                    count.clone(),
                ));
            }
            if let Some((t, pipes)) = tunnel {
                let container = Arc::new(dispatch::TunnelContainer::new(
                    Arc::clone(&dispatcher),
                    t.id.clone(),
                ));
                streams.spawn(tunnel::serve(t, pipes, container, stop_streams, count));
            }
            drop(permit);
        });
    }

    commands.close().await;
    let refused = tokio::time::timeout(Duration::from_secs(2), async {
        let mut n = 0;
        while let Some(incoming) = commands.next().await {
            if let Err(e) = bus.reply(&incoming, &dispatch::shutting_down()).await {
                tracing::warn!(error = %e, "could not refuse a command");
            }
            n += 1;
        }
        n
    })
    .await;
    if let Ok(n) = refused
        && n > 0
    {
        tracing::info!(commands = n, "refused commands delivered during shutdown");
    }
    in_flight.close();
    if tokio::time::timeout(config.shutdown_timeout, in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.shutdown_timeout, "commands still running at shutdown were abandoned");
    }
    // Events of the last commands are on the engine's stream by now; give
    // the forwarder a moment to pass them on, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_stats.cancel();
    if let Err(e) = stats.await {
        tracing::error!(error = %e, "stats task failed");
    }
    stop_streams.cancel();
    streams.close();
    if tokio::time::timeout(Duration::from_secs(10), streams.wait())
        .await
        .is_err()
    {
        tracing::warn!("streams still open at shutdown were abandoned");
    }
    stop_events.cancel();
    if let Err(e) = events.await {
        tracing::error!(error = %e, "event forwarder failed");
    }
    stop_heartbeats.cancel();
    if let Err(e) = heartbeats.await {
        tracing::error!(error = %e, "heartbeat task failed");
    }
    // A bus that is gone (refused, unreachable) must not hold the stop.
    match tokio::time::timeout(Duration::from_secs(5), bus.flush()).await {
        Ok(flushed) => flushed?,
        Err(_) => {
            tracing::warn!("the bus did not take the last messages within 5s (disconnected?)")
        }
    }
    tracing::info!(node = %config.node, "agent stopped");
    Ok(())
}

/// A stream whose reader (and input, for an exec) is being listened to.
struct Listening {
    control: bus::StreamControl,
    chunks: runtime::OutputChunks,
    exec: Option<(bus::ExecInput, dispatch::ExecParts)>,
}

async fn listen(bus: &bus::Bus, s: dispatch::OpenedStream) -> Result<Listening, bus::BusError> {
    let control = bus.stream_control(s.setup).await?;
    let exec = match s.exec {
        Some(parts) => Some((bus.exec_input(&parts.input_subject).await?, parts)),
        None => None,
    };
    Ok(Listening {
        control,
        chunks: s.chunks,
        exec,
    })
}

/// Serves one stream; for an exec, also feeds its input until the output
/// ends.
async fn serve_stream(
    bus: bus::Bus,
    s: Listening,
    stop: CancellationToken,
    count: bus::StreamCount,
) {
    let Some((input, parts)) = s.exec else {
        bus.pump(s.control, s.chunks, stop, count, None).await;
        return;
    };
    let done = CancellationToken::new();
    let control = Arc::clone(&parts.control);
    let feeder = tokio::spawn(feed_exec_input(input, parts, done.clone()));
    bus.pump(s.control, s.chunks, stop, count, Some(control.exit_code()))
        .await;
    done.cancel();
    let _ = feeder.await;
    // The session ended (the command exited, or its reader cancelled, fell
    // silent or the agent is stopping): nothing of it may keep running.
    control.end().await;
}

/// Writes an exec's input to its stdin and applies resizes, until `done`;
/// answers each input message once carried out (back-pressure: the
/// scheduler sends the next only then).
async fn feed_exec_input(
    mut input: bus::ExecInput,
    parts: dispatch::ExecParts,
    done: CancellationToken,
) {
    use tokio::io::AsyncWriteExt;
    let mut stdin = parts.input;
    loop {
        let msg = tokio::select! {
            _ = done.cancelled() => break,
            msg = input.next() => match msg {
                Some(m) => m,
                None => break,
            },
        };
        match msg.input {
            Some(pb::exec_input::Input::Stdin(bytes)) => {
                // A command that does not read its stdin must not keep this
                // task (and the agent's shutdown) waiting.
                if let Some(w) = stdin.as_mut() {
                    let written = tokio::select! {
                        _ = done.cancelled() => break,
                        r = w.write_all(&bytes) => r.is_ok(),
                    };
                    if !written {
                        stdin = None;
                    }
                }
            }
            Some(pb::exec_input::Input::Resize(size)) => {
                let rows = size.rows.min(u32::from(u16::MAX)) as u16;
                let cols = size.cols.min(u32::from(u16::MAX)) as u16;
                if let Err(e) = parts.control.resize(rows, cols).await {
                    tracing::debug!(error = %e, "exec resize");
                }
            }
            Some(pb::exec_input::Input::CloseStdin(_)) => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            _ => {}
        }
        input.done().await;
    }
}

struct HeartbeatLoop {
    bus: bus::Bus,
    config: Config,
    labels: HashMap<String, String>,
    info: EngineInfo,
    boot_id: String,
    streams: bus::StreamCount,
    ssh_host_key: String,
}

impl HeartbeatLoop {
    fn heartbeat(&self, running: i32, leaving: bool, images_digest: &str) -> pb::Heartbeat {
        pb::Heartbeat {
            node: self.config.node.clone(),
            boot_id: self.boot_id.clone(),
            labels: self.labels.clone(),
            cpus: self.info.cpus,
            memory_bytes: self.info.memory_bytes,
            docker_version: self.info.version.clone(),
            agent_version: devctl_proto::VERSION.to_string(),
            platform: self.info.platform.clone(),
            time: Some(SystemTime::now().into()),
            running_containers: running,
            open_streams: self.streams.get(),
            leaving,
            ssh_host_key: self.ssh_host_key.clone(),
            workspaces: true,
            images_digest: images_digest.to_string(),
        }
    }

    /// Sends a heartbeat every interval while the engine answers, and a
    /// final `leaving` one when `stop` is cancelled.
    async fn run<R: ContainerRuntime>(
        self,
        dispatcher: Arc<Dispatcher<R>>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut engine_ok = true;
        // The last digest of the engine's images (kept when a listing
        // fails: the scheduler's copy is then as good as any).
        let mut images_digest = String::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // A node whose engine does not answer is not healthy: skip the
            // heartbeat so the scheduler marks it down.
            match dispatcher.runtime().running_count().await {
                Ok(running) => {
                    if !engine_ok {
                        tracing::info!("engine answers again");
                        engine_ok = true;
                    }
                    match dispatcher.runtime().images().await {
                        Ok(list) => images_digest = images::digest(&list),
                        Err(e) => tracing::debug!(error = %e, "listing images"),
                    }
                    let hb = self.heartbeat(running, false, &images_digest);
                    if let Err(e) = self.bus.heartbeat(&hb).await {
                        tracing::warn!(error = %e, "heartbeat not sent");
                    }
                }
                Err(e) if engine_ok => {
                    tracing::error!(error = %e, "engine does not answer; heartbeats paused");
                    engine_ok = false;
                }
                Err(_) => {}
            }
        }
        if let Err(e) = self
            .bus
            .heartbeat(&self.heartbeat(0, true, &images_digest))
            .await
        {
            tracing::warn!(error = %e, "leaving heartbeat not sent");
        }
    }
}

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
