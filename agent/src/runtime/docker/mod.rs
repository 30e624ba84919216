//! The Docker engine, through bollard. The only module of the agent that
//! speaks to Docker (this file and its submodules).
//!
//! Each engine container devctl creates is named `devctl-<name>-<id8>` and
//! labelled with [`devctl_proto::labels`]; lookups always filter on this
//! node's label, so several agents may share one engine without touching
//! each other's containers.
//!
//! Containers join their owner's network on this node (`networks.rs`),
//! never the default bridge.
//!
//! One piece for now: the Docker `ContainerRuntime` impl (one trait impl
//! block), so every engine call and its error mapping stay in one place.
//! Concerns that keep their own state live in submodules (networks,
//! workspaces, images, build, registry), and the impl delegates to them.
//! Known debt: the create/inspect/exec bodies should move into submodules of
//! their own the same way.

use std::{collections::HashMap, time::SystemTime};

use bollard::{
    Docker,
    container::LogOutput,
    errors::Error as BollardError,
    exec::{ResizeExecOptions, StartExecOptions, StartExecResults},
    models::{
        ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
        ContainerStatsResponse, ContainerSummary, EndpointSettings, EventMessage, ExecConfig,
        HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig, NetworkingConfig,
    },
    query_parameters::{
        CreateContainerOptions, EventsOptions, InspectContainerOptions, ListContainersOptions,
        LogsOptions, RemoveContainerOptions, RestartContainerOptions, StartContainerOptions,
        StatsOptions, StopContainerOptions, WaitContainerOptions,
    },
};
use devctl_proto::{labels, pb};
use futures::StreamExt;

use super::{ContainerRuntime, EngineInfo, PullProgress, RuntimeError};

mod build;
mod images;
mod networks;
mod registry;
mod workspaces;
use networks::OwnerNetworks;
use workspaces::Workspaces;

/// A Docker engine, seen from one node.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    node: String,
    log_policy: Option<HostConfigLogConfig>,
    pids_limit: Option<i64>,
    networks: OwnerNetworks,
    workspaces: Workspaces,
    // Host paths containers may bind-mount (spec.mounts), from
    // --allow-bind; empty: none.
    allowed_binds: Vec<std::path::PathBuf>,
    // Containers may gain privileges through setuid binaries (sudo): no
    // `no-new-privileges`, from --allow-privilege-escalation.
    privilege_escalation: bool,
}

/// Capabilities a dev container keeps; every other one is dropped. Enough
/// to own and change files, manage its own processes and users, and bind
/// ports below 1024 — not raw sockets, device nodes or chroot (docker's
/// default set adds MKNOD, NET_RAW, SETFCAP, SETPCAP, SYS_CHROOT and
/// AUDIT_WRITE).
pub const CAPABILITIES: [&str; 8] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// How much output the engine keeps per container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPolicy {
    /// Size of one log file, in the engine's notation (`64m`).
    pub max_size: String,
    /// Files kept.
    pub max_files: u32,
}

impl DockerRuntime {
    /// Connects to the engine at `host` (`unix:///…`, `tcp://…`), or to the
    /// local default (`DOCKER_HOST`, then `/var/run/docker.sock`), and
    /// negotiates the API version, so older engines work.
    ///
    /// When the engine logs to json-file, containers get `logs` as their own
    /// rotation policy: an engine default as small as a few MiB would drop
    /// output a reader has not caught up with (and Docker's follow mode
    /// stalls across a rotation).
    pub async fn connect(
        host: Option<&str>,
        node: &str,
        logs: &LogPolicy,
    ) -> Result<Self, RuntimeError> {
        let docker = match host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(engine)?
        .negotiate_version()
        .await
        .map_err(engine)?;
        let driver = docker.info().await.map_err(engine)?.logging_driver;
        let log_policy = (driver.as_deref() == Some("json-file")).then(|| HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), logs.max_size.clone()),
                ("max-file".to_string(), logs.max_files.to_string()),
            ])),
        });
        Ok(Self {
            networks: OwnerNetworks::new(docker.clone(), node),
            workspaces: Workspaces::new(docker.clone(), node),
            allowed_binds: Vec::new(),
            privilege_escalation: false,
            docker,
            node: node.to_string(),
            log_policy,
            pids_limit: None,
        })
    }

    /// Measures each workspace volume's size at most once per `every`.
    pub fn with_workspace_measure_interval(mut self, every: std::time::Duration) -> Self {
        self.workspaces = self.workspaces.measure_every(every);
        self
    }

    /// Lets containers gain privileges through setuid binaries such as
    /// sudo (their processes start without `no-new-privileges`); the
    /// capability set stays the minimal one.
    pub fn with_privilege_escalation(mut self, allow: bool) -> Self {
        self.privilege_escalation = allow;
        self
    }

    /// Lets containers bind-mount these host paths (and what is below
    /// them); every other host path is refused.
    pub fn with_allowed_binds(mut self, paths: Vec<std::path::PathBuf>) -> Self {
        self.allowed_binds = paths;
        self
    }

    /// The engine mounts of `cmd`: its workspace volume (`workspace`), its
    /// named volumes and the host paths this agent allows.
    fn mounts(
        &self,
        spec: &pb::ContainerSpec,
        workspace: Option<&str>,
    ) -> Result<Vec<bollard::models::Mount>, RuntimeError> {
        use bollard::models::{Mount, MountType};
        let mut out = Vec::new();
        if let Some(volume) = workspace {
            out.push(Mount {
                target: Some(spec.workspace_path.clone()),
                source: Some(volume.to_string()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            });
        }
        for m in &spec.mounts {
            let (source, typ) = match &m.source {
                Some(pb::mount::Source::Volume(v)) => (v.clone(), MountType::VOLUME),
                Some(pb::mount::Source::HostPath(p)) => {
                    let path = std::path::Path::new(p);
                    if !self.allowed_binds.iter().any(|a| path.starts_with(a)) {
                        return Err(RuntimeError::MountRefused(format!(
                            "host path {p} may not be mounted on node {}: its agent allows {} (devctl-agent --allow-bind)",
                            self.node,
                            if self.allowed_binds.is_empty() {
                                "no host paths".to_string()
                            } else {
                                self.allowed_binds
                                    .iter()
                                    .map(|a| a.display().to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }
                        )));
                    }
                    (p.clone(), MountType::BIND)
                }
                None => continue,
            };
            // A volume the engine makes for this mount carries the node's
            // label (as every devctl object on the engine does); an
            // existing volume keeps its own.
            let volume_options =
                (typ == MountType::VOLUME).then(|| bollard::models::MountVolumeOptions {
                    labels: Some(HashMap::from([(
                        labels::NODE.to_string(),
                        self.node.clone(),
                    )])),
                    ..Default::default()
                });
            out.push(Mount {
                target: Some(m.target.clone()),
                source: Some(source),
                typ: Some(typ),
                read_only: Some(m.read_only),
                volume_options,
                ..Default::default()
            });
        }
        Ok(out)
    }

    /// Caps the processes of each container it creates (`None`: no cap).
    pub fn with_pids_limit(mut self, limit: Option<i64>) -> Self {
        self.pids_limit = limit;
        self
    }

    fn node_filter(&self, extra: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut label = vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={}", labels::NODE, self.node),
        ];
        label.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        HashMap::from([("label".to_string(), label)])
    }

    /// This node's devctl containers (`all`: also those not running) that
    /// carry the `extra` labels too.
    async fn list(
        &self,
        all: bool,
        extra: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.docker
            .list_containers(Some(ListContainersOptions {
                all,
                filters: Some(self.node_filter(extra)),
                ..Default::default()
            }))
            .await
            .map_err(engine)
    }

    /// The engine id of the devctl container `id` of this node, if any.
    async fn find(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self
            .find_with_owner(id)
            .await?
            .map(|(runtime_id, _)| runtime_id))
    }

    /// The engine id and owner of the devctl container `id`, if any.
    async fn find_with_owner(&self, id: &str) -> Result<Option<(String, String)>, RuntimeError> {
        let list = self.list(true, &[(labels::ID, id)]).await?;
        Ok(list.into_iter().find_map(|c| {
            let owner = c.labels?.get(labels::OWNER).cloned().unwrap_or_default();
            Some((c.id?, owner))
        }))
    }

    async fn find_required(&self, id: &str) -> Result<String, RuntimeError> {
        self.find(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    async fn status(&self, runtime_id: &str) -> Result<pb::EngineContainer, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(runtime_id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err(e, runtime_id))?;
        Ok(status_of(&inspect))
    }

    async fn create_new(
        &self,
        cmd: &pb::CreateCommand,
        workspace: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let spec = cmd.spec.clone().unwrap_or_default();
        let mounts = self.mounts(&spec, workspace)?;
        match self.docker.inspect_image(&spec.image).await {
            Ok(_) => {}
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(RuntimeError::ImageNotFound {
                    image: spec.image.clone(),
                    node: self.node.clone(),
                });
            }
            Err(e) => return Err(engine(e)),
        }
        let mut all_labels = spec.labels.clone();
        all_labels.extend([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::NAME.to_string(), cmd.name.clone()),
            (labels::ID.to_string(), cmd.id.clone()),
            (labels::OWNER.to_string(), cmd.owner.clone()),
            (labels::NODE.to_string(), self.node.clone()),
        ]);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        let res = spec.resources.unwrap_or_default();
        let memory = (res.memory_bytes > 0).then_some(res.memory_bytes);
        // The owner's network, held until the container exists (see
        // networks.rs); the container's devctl name resolves there.
        let (network, _network_lock) = self.networks.ensure(&cmd.owner).await?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env),
            labels: Some(all_labels),
            hostname: Some(cmd.name.clone()),
            healthcheck: spec.health_check.as_ref().map(health_config),
            host_config: Some(HostConfig {
                nano_cpus: (res.milli_cpus > 0).then_some(res.milli_cpus * 1_000_000),
                memory,
                // No swap beyond the memory limit.
                memory_swap: memory,
                // An init process as PID 1 forwards signals and reaps
                // zombies, so `stop` does not wait out its timeout.
                init: Some(true),
                // Hardened by default: no privilege gain through setuid
                // binaries (unless this node's admin allows it, for sudo), a
                // minimal capability set, a process cap. devctl offers no
                // privileged mode, host network, or host paths beyond the
                // agent's --allow-bind list.
                security_opt: Some(if self.privilege_escalation {
                    Vec::new()
                } else {
                    vec!["no-new-privileges:true".into()]
                }),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(CAPABILITIES.map(String::from).to_vec()),
                pids_limit: self.pids_limit,
                log_config: self.log_policy.clone(),
                // The owner's network only: never the default bridge that
                // every container of the engine shares.
                network_mode: Some(network.clone()),
                mounts: (!mounts.is_empty()).then_some(mounts),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network,
                    EndpointSettings {
                        aliases: Some(vec![cmd.name.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let short: String = cmd.id.chars().filter(|c| *c != '-').take(8).collect();
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(format!("devctl-{}-{short}", cmd.name)),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| map_err(e, &cmd.id))?;
        Ok(created.id)
    }
}

impl DockerRuntime {
    /// Deletes the workspace volume a failed create made, if any.
    async fn drop_made_workspace(&self, made: Option<String>) {
        if let Some(name) = made
            && let Err(e) = self.workspaces.remove(&name).await
        {
            tracing::warn!(error = %e, workspace = name, "deleting the volume a failed create made");
        }
    }

    /// Removes `owner`'s network if it is no longer used. A failure only
    /// leaves the network for the next inventory to collect.
    async fn collect_network(&self, owner: &str) {
        if let Err(e) = self.networks.collect(owner).await {
            tracing::warn!(error = %e, owner, "removing the owner's network; the next inventory retries");
        }
    }
}

impl ContainerRuntime for DockerRuntime {
    fn pull(
        &self,
        image: &str,
        policy: pb::PullPolicy,
        auth: Option<pb::RegistryAuth>,
    ) -> PullProgress {
        registry::pull(&self.docker, &self.node, image, policy, auth)
    }

    async fn info(&self) -> Result<EngineInfo, RuntimeError> {
        let info = self.docker.info().await.map_err(engine)?;
        Ok(EngineInfo {
            cpus: info.ncpu.unwrap_or_default() as i32,
            memory_bytes: info.mem_total.unwrap_or_default(),
            version: info.server_version.unwrap_or_default(),
            platform: format!(
                "{}/{}",
                info.os_type.unwrap_or_else(|| "linux".into()),
                info.architecture.unwrap_or_default()
            ),
            data_root: info.docker_root_dir.unwrap_or_else(|| "/".into()),
        })
    }

    async fn create_and_start(
        &self,
        spec: &pb::CreateCommand,
    ) -> Result<pb::EngineContainer, RuntimeError> {
        // A workspace volume this call made is deleted again if the
        // container does not come up (nothing is left half-made).
        let mut made = None;
        let runtime_id = match self.find(&spec.id).await? {
            Some(existing) => existing,
            None => {
                let volume = match &spec.workspace {
                    Some(w) => {
                        let (volume, new) = self.workspaces.ensure(w).await?;
                        made = new.then(|| w.name.clone());
                        Some(volume)
                    }
                    None => None,
                };
                match self.create_new(spec, volume.as_deref()).await {
                    Ok(id) => id,
                    Err(e) => {
                        self.drop_made_workspace(made).await;
                        return Err(e);
                    }
                }
            }
        };
        let started = async {
            self.docker
                .start_container(&runtime_id, None::<StartContainerOptions>)
                .await
                .map_err(|e| map_err(e, &spec.id))?;
            self.status(&runtime_id).await
        }
        .await;
        let Err(err) = started else { return started };
        // Leave nothing behind. If even that fails, say so as an engine
        // error: the scheduler then keeps a record of the container.
        let removed = self
            .docker
            .remove_container(
                &runtime_id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
        match removed {
            Ok(()) => {
                self.collect_network(&spec.owner).await;
                self.drop_made_workspace(made).await;
                Err(err)
            }
            Err(e) => Err(RuntimeError::Engine(format!(
                "{err}; removing the container afterwards also failed: {e}"
            ))),
        }
    }

    async fn inspect(&self, id: &str) -> Result<pb::EngineContainer, RuntimeError> {
        let runtime_id = self.find_required(id).await?;
        self.status(&runtime_id).await
    }

    async fn start(&self, id: &str) -> Result<pb::EngineContainer, RuntimeError> {
        let runtime_id = self.find_required(id).await?;
        self.docker
            .start_container(&runtime_id, None::<StartContainerOptions>)
            .await
            .map_err(|e| map_err(e, id))?;
        self.status(&runtime_id).await
    }

    async fn stop(
        &self,
        id: &str,
        timeout_seconds: i32,
    ) -> Result<pb::EngineContainer, RuntimeError> {
        let runtime_id = self.find_required(id).await?;
        self.docker
            .stop_container(
                &runtime_id,
                Some(StopContainerOptions {
                    t: Some(timeout_seconds),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| map_err(e, id))?;
        self.status(&runtime_id).await
    }

    async fn restart(
        &self,
        id: &str,
        timeout_seconds: i32,
    ) -> Result<pb::EngineContainer, RuntimeError> {
        let runtime_id = self.find_required(id).await?;
        self.docker
            .restart_container(
                &runtime_id,
                Some(RestartContainerOptions {
                    t: Some(timeout_seconds),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| map_err(e, id))?;
        self.status(&runtime_id).await
    }

    async fn wait_exit(
        &self,
        runtime_id: &str,
        within: std::time::Duration,
    ) -> Result<Option<pb::EngineContainer>, RuntimeError> {
        // One waiting request, not a poll; dropping it stops the wait.
        let mut wait = self.docker.wait_container(
            runtime_id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        match tokio::time::timeout(within, wait.next()).await {
            Err(_) => Ok(None),
            // Any answer (an exit code, or an error such as a non-zero
            // exit): look at the container itself.
            Ok(_) => self.status(runtime_id).await.map(Some),
        }
    }

    async fn remove(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let (runtime_id, owner) = self
            .find_with_owner(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if !force {
            let status = self.status(&runtime_id).await?;
            if status.state == pb::ContainerState::Running as i32 {
                return Err(RuntimeError::Conflict(
                    "container is running; stop it first or remove with force".into(),
                ));
            }
        }
        self.docker
            .remove_container(
                &runtime_id,
                Some(RemoveContainerOptions {
                    force,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| map_err(e, id))?;
        self.collect_network(&owner).await;
        Ok(())
    }

    async fn remove_workspace(&self, name: &str) -> Result<(), RuntimeError> {
        self.workspaces.remove(name).await
    }

    async fn send_workspace(&self, name: &str) -> Result<super::OutputChunks, RuntimeError> {
        self.workspaces.send(name).await
    }

    async fn receive_workspace(
        &self,
        w: &pb::WorkspaceAttach,
        data: super::WorkspaceData,
    ) -> Result<(), RuntimeError> {
        self.workspaces.receive(w, data).await
    }

    async fn workspaces(&self) -> Result<Vec<pb::EngineWorkspace>, RuntimeError> {
        self.workspaces.list().await
    }

    async fn images(&self) -> Result<Vec<pb::Image>, RuntimeError> {
        images::list(&self.docker).await
    }

    async fn remove_image(&self, image: &str) -> Result<pb::ImageRemoval, RuntimeError> {
        images::remove(&self.docker, &self.node, image).await
    }

    async fn inventory(&self) -> Result<Vec<pb::EngineContainer>, RuntimeError> {
        // Networks whose last container went while nobody looked.
        if let Err(e) = self.networks.collect_all().await {
            tracing::warn!(error = %e, "collecting unused owner networks");
        }
        let list = self.list(true, &[]).await?;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let Some(runtime_id) = c.id else { continue };
            match self.status(&runtime_id).await {
                Ok(s) => out.push(s),
                // Removed between list and inspect.
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn engine_events(&self, since_nanos: i64) -> super::EngineEvents {
        let mut filters = self.node_filter(&[]);
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            [
                "create",
                "start",
                "die",
                "stop",
                "oom",
                "restart",
                "destroy",
                // Matches "health_status: healthy" and ": unhealthy".
                "health_status",
            ]
            .map(String::from)
            .to_vec(),
        );
        // The engine takes seconds with a fraction.
        let since = format!(
            "{}.{:09}",
            since_nanos / 1_000_000_000,
            since_nanos % 1_000_000_000
        );
        let node = self.node.clone();
        self.docker
            .events(Some(EventsOptions {
                since: Some(since),
                until: None,
                filters: Some(filters),
            }))
            .filter_map(move |e| {
                let out = match e {
                    Ok(msg) => engine_event(&node, msg).map(Ok),
                    Err(e) => Some(Err(engine(e))),
                };
                std::future::ready(out)
            })
            .boxed()
    }

    async fn exec(
        &self,
        id: &str,
        start: &pb::ExecStart,
    ) -> Result<super::ExecSession, RuntimeError> {
        let runtime_id = self.find_required(id).await?;
        let size = start.size.unwrap_or_default();
        let created = self
            .docker
            .create_exec(
                &runtime_id,
                ExecConfig {
                    attach_stdin: Some(start.stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(start.tty),
                    cmd: Some(start.command.clone()),
                    env: (!start.env.is_empty()).then(|| start.env.clone()),
                    working_dir: (!start.workdir.is_empty()).then(|| start.workdir.clone()),
                    user: (!start.user.is_empty()).then(|| start.user.clone()),
                    console_size: (start.tty && size.rows > 0 && size.cols > 0)
                        .then(|| vec![size.rows as usize, size.cols as usize]),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| map_err(e, id))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: start.tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| map_err(e, id))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(RuntimeError::Engine("the exec did not attach".into()));
        };
        // Engines before API 1.42 (Docker 23) ignore ConsoleSize: set the
        // size once the exec runs, as the docker CLI does.
        if start.tty && size.rows > 0 && size.cols > 0 {
            let resize = ResizeExecOptions {
                height: size.rows.min(u32::from(u16::MAX)) as u16,
                width: size.cols.min(u32::from(u16::MAX)) as u16,
            };
            if let Err(e) = self.docker.resize_exec(&created.id, resize).await {
                tracing::debug!(error = %e, "initial exec size");
            }
        }
        Ok(super::ExecSession {
            output: output_chunks(output, id),
            input: start.stdin.then_some(input),
            control: std::sync::Arc::new(DockerExec {
                docker: self.docker.clone(),
                exec_id: created.id,
                container: runtime_id,
            }),
        })
    }

    async fn init_process(&self, id: &str) -> Result<super::InitProcess, RuntimeError> {
        let runtime_id = self.find_required(id).await?;
        let inspect = self
            .docker
            .inspect_container(&runtime_id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err(e, id))?;
        let status = status_of(&inspect);
        let name = status.name;
        let state = inspect.state.unwrap_or_default();
        // Paused or restarting: no process to reach (a paused one would
        // take a connection and never answer).
        if state.status != Some(ContainerStateStatusEnum::RUNNING) {
            return Err(RuntimeError::Conflict(format!(
                "container {name} is {}, not running; start it first",
                status.engine_status
            )));
        }
        match state.pid.and_then(|p| u32::try_from(p).ok()) {
            Some(pid) if pid > 0 => Ok(super::InitProcess {
                name,
                runtime_id,
                pid,
            }),
            _ => Err(RuntimeError::Conflict(format!(
                "container {name} has no running process"
            ))),
        }
    }

    fn build_image(&self, build: super::ImageBuild) -> super::BuildOutput {
        self.build_stream(build)
    }

    fn load_image(&self, archive: std::path::PathBuf) -> super::BuildOutput {
        self.load_stream(archive)
    }

    async fn image_present(&self, tag: &str) -> Result<bool, RuntimeError> {
        self.has_image(tag).await
    }

    async fn logs(
        &self,
        id: &str,
        options: super::LogOptions,
    ) -> Result<super::OutputChunks, RuntimeError> {
        let runtime_id = self.find_required(id).await?;
        let logs = self.docker.logs(
            &runtime_id,
            Some(LogsOptions {
                follow: options.follow,
                stdout: true,
                stderr: true,
                since: options.since.unwrap_or(0).clamp(0, i64::from(i32::MAX)) as i32,
                until: 0,
                timestamps: options.timestamps,
                tail: options
                    .tail
                    .map_or_else(|| "all".to_string(), |n| n.max(0).to_string()),
            }),
        );
        Ok(output_chunks(logs, id))
    }

    async fn running(&self) -> Result<Vec<super::Running>, RuntimeError> {
        let list = self.list(false, &[]).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(super::Running {
                    id: labels.get(labels::ID)?.clone(),
                    name: labels.get(labels::NAME)?.clone(),
                    runtime_id: c.id?,
                })
            })
            .collect())
    }

    fn stats(&self, container: &super::Running) -> super::StatsSamples {
        let c = container.clone();
        let node = self.node.clone();
        self.docker
            .stats(
                &container.runtime_id,
                Some(StatsOptions {
                    stream: true,
                    one_shot: false,
                }),
            )
            .map(move |s| s.map(|s| sample(&node, &c, &s)).map_err(engine))
            .boxed()
    }

    async fn running_count(&self) -> Result<i32, RuntimeError> {
        let list = self.list(false, &[]).await?;
        Ok(list.len() as i32)
    }
}

/// Control of one engine exec.
struct DockerExec {
    docker: Docker,
    exec_id: String,
    // The engine id of its container.
    container: String,
}

impl super::ExecControl for DockerExec {
    fn resize(
        &self,
        rows: u16,
        cols: u16,
    ) -> futures::future::BoxFuture<'static, Result<(), RuntimeError>> {
        let (docker, id) = (self.docker.clone(), self.exec_id.clone());
        Box::pin(async move {
            docker
                .resize_exec(
                    &id,
                    ResizeExecOptions {
                        height: rows,
                        width: cols,
                    },
                )
                .await
                .map_err(engine)
        })
    }

    fn end(&self) -> futures::future::BoxFuture<'static, ()> {
        let (docker, id) = (self.docker.clone(), self.exec_id.clone());
        let container = self.container.clone();
        Box::pin(async move {
            // The engine has no call to stop an exec: signal its process.
            let pid = match docker.inspect_exec(&id).await {
                Ok(i) if i.running == Some(true) => i.pid.unwrap_or(0),
                _ => return,
            };
            let Ok(pid) = i32::try_from(pid) else { return };
            if pid <= 0 {
                return;
            }
            match kill_process_tree(pid, &container) {
                Ok(n) => {
                    tracing::info!(exec = %id, pid, processes = n, "ended the exec's process as its session ended")
                }
                Err(e) => {
                    tracing::warn!(exec = %id, pid, error = %e, "could not end the exec's process")
                }
            }
        })
    }

    fn signal(
        &self,
        signal: nix::sys::signal::Signal,
    ) -> futures::future::BoxFuture<'static, Result<(), RuntimeError>> {
        let (docker, id) = (self.docker.clone(), self.exec_id.clone());
        let container = self.container.clone();
        Box::pin(async move {
            let pid = match docker.inspect_exec(&id).await.map_err(engine)? {
                i if i.running == Some(true) => i.pid.unwrap_or(0),
                _ => return Ok(()),
            };
            let pid = i32::try_from(pid)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| RuntimeError::Engine(format!("exec {id} has no process")))?;
            if !in_container_cgroup(pid, &container) {
                return Err(RuntimeError::Engine(format!(
                    "process {pid} is not in the container's cgroup here (is the engine on another host?)"
                )));
            }
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                .map_err(|e| RuntimeError::Engine(format!("{signal} to process {pid}: {e}")))
        })
    }

    fn exit_code(&self) -> futures::future::BoxFuture<'static, Option<i32>> {
        let (docker, id) = (self.docker.clone(), self.exec_id.clone());
        Box::pin(async move {
            // The engine records the code a moment after the output ends.
            for _ in 0..50 {
                match docker.inspect_exec(&id).await {
                    Ok(i) if i.running != Some(true) => return i.exit_code.map(|c| c as i32),
                    Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                    Err(_) => return None,
                }
            }
            None
        })
    }
}

/// Kills (SIGKILL) process `pid` of this host and its descendants, each only
/// if it is in the cgroup of engine container `container` (so a pid from an
/// engine on another host never hits a local process). How many were
/// signalled.
fn kill_process_tree(pid: i32, container: &str) -> Result<usize, String> {
    use nix::{sys::signal, unistd::Pid};
    let in_container = |p: i32| in_container_cgroup(p, container);
    if !in_container(pid) {
        return Err(format!(
            "process {pid} is not in the container's cgroup here (is the engine on another host?)"
        ));
    }
    // Parent of every process: the field after the command name in stat.
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .filter_map(|e| {
            let p: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    let mut killed = 0;
    for p in tree.into_iter().filter(|p| in_container(*p)) {
        if signal::kill(Pid::from_raw(p), signal::Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    Ok(killed)
}

/// Whether process `pid` of this host is in the cgroup of engine container
/// `container`.
fn in_container_cgroup(pid: i32, container: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(container))
}

/// The engine's multiplexed output (logs, exec) as devctl chunks.
fn output_chunks(
    output: impl futures::Stream<Item = Result<LogOutput, BollardError>> + Send + 'static,
    id: &str,
) -> super::OutputChunks {
    let id = id.to_string();
    output
        .map(move |chunk| match chunk {
            Ok(LogOutput::StdErr { message }) => Ok((pb::OutputStream::Stderr, message.to_vec())),
            Ok(out) => Ok((pb::OutputStream::Stdout, out.into_bytes().to_vec())),
            Err(e) => Err(map_err(e, &id)),
        })
        .boxed()
}

/// A usage sample from the engine's stats, computed as `docker stats` does.
fn sample(node: &str, c: &super::Running, s: &ContainerStatsResponse) -> pb::ContainerStats {
    let cpu = s.cpu_stats.clone().unwrap_or_default();
    let pre = s.precpu_stats.clone().unwrap_or_default();
    let total = |c: &bollard::models::ContainerCpuStats| {
        c.cpu_usage
            .as_ref()
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let cpu_delta = total(&cpu).saturating_sub(total(&pre));
    let system_delta = cpu
        .system_cpu_usage
        .unwrap_or(0)
        .saturating_sub(pre.system_cpu_usage.unwrap_or(0));
    let online = cpu.online_cpus.unwrap_or(1).max(1);
    let cpu_percent = if system_delta > 0 && pre.system_cpu_usage.is_some() {
        cpu_delta as f64 / system_delta as f64 * f64::from(online) * 100.0
    } else {
        0.0
    };
    let mem = s.memory_stats.clone().unwrap_or_default();
    let stats = mem.stats.unwrap_or_default();
    let cache = stats
        .get("total_inactive_file")
        .or_else(|| stats.get("inactive_file"))
        .copied()
        .unwrap_or(0);
    let usage = mem.usage.unwrap_or(0);
    let usage = if cache < usage { usage - cache } else { usage };
    let (mut rx, mut tx) = (0u64, 0u64);
    for n in s.networks.as_ref().into_iter().flat_map(|n| n.values()) {
        rx += n.rx_bytes.unwrap_or(0);
        tx += n.tx_bytes.unwrap_or(0);
    }
    let (mut read, mut write) = (0u64, 0u64);
    let io = s
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.clone());
    for e in io.unwrap_or_default() {
        match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => read += e.value.unwrap_or(0),
            Some("write") => write += e.value.unwrap_or(0),
            _ => {}
        }
    }
    pb::ContainerStats {
        name: c.name.clone(),
        id: c.id.clone(),
        node: node.to_string(),
        time: Some(std::time::SystemTime::now().into()),
        cpu_percent,
        memory_bytes: usage as i64,
        memory_limit_bytes: mem.limit.unwrap_or(0) as i64,
        network_rx_bytes: rx as i64,
        network_tx_bytes: tx as i64,
        block_read_bytes: read as i64,
        block_write_bytes: write as i64,
        pids: s.pids_stats.as_ref().and_then(|p| p.current).unwrap_or(0) as i64,
    }
}

/// Translates an engine event; `None` for events of no interest.
fn engine_event(node: &str, msg: EventMessage) -> Option<pb::EngineEvent> {
    let action = msg.action?;
    let actor = msg.actor?;
    let runtime_id = actor.id.unwrap_or_default();
    let attrs = actor.attributes.unwrap_or_default();
    let nanos = msg
        .time_nano
        .or(msg.time.map(|s| s * 1_000_000_000))
        .unwrap_or_default();
    Some(pb::EngineEvent {
        // The same engine event always gets the same id, so a re-read
        // after a reconnect is de-duplicated by JetStream.
        event_id: format!("{runtime_id}-{action}-{nanos}"),
        node: node.to_string(),
        id: attrs.get(labels::ID).cloned().unwrap_or_default(),
        name: attrs.get(labels::NAME).cloned().unwrap_or_default(),
        runtime_id,
        exit_code: attrs.get("exitCode").and_then(|c| c.parse().ok()),
        time: Some(prost_types::Timestamp {
            seconds: nanos.div_euclid(1_000_000_000),
            nanos: nanos.rem_euclid(1_000_000_000) as i32,
        }),
        action,
        dropped: 0,
    })
}

/// The engine's health check for `h`: the command runs directly (exec
/// form, no shell); zero fields keep the engine's defaults (30 s, 3).
fn health_config(h: &pb::HealthCheck) -> HealthConfig {
    const NANOS: i64 = 1_000_000_000;
    let secs = |s: i32| (s > 0).then_some(i64::from(s) * NANOS);
    HealthConfig {
        test: Some(
            std::iter::once("CMD".to_string())
                .chain(h.command.iter().cloned())
                .collect(),
        ),
        interval: secs(h.interval_seconds),
        timeout: secs(h.timeout_seconds),
        retries: (h.retries > 0).then_some(i64::from(h.retries)),
        start_period: secs(h.start_period_seconds),
        start_interval: None,
    }
}

/// Translates an engine inspection into the bus status.
fn status_of(inspect: &ContainerInspectResponse) -> pb::EngineContainer {
    let labels = inspect
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let state = inspect.state.clone().unwrap_or_default();
    let status = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
    let (devctl_state, exit_code) = match status {
        ContainerStateStatusEnum::RUNNING
        | ContainerStateStatusEnum::RESTARTING
        | ContainerStateStatusEnum::PAUSED
        | ContainerStateStatusEnum::STOPPING => (pb::ContainerState::Running, None),
        ContainerStateStatusEnum::CREATED => (pb::ContainerState::Stopped, None),
        ContainerStateStatusEnum::EXITED => (
            pb::ContainerState::Stopped,
            state.exit_code.map(|c| c as i32),
        ),
        ContainerStateStatusEnum::DEAD | ContainerStateStatusEnum::REMOVING => (
            pb::ContainerState::Failed,
            state.exit_code.map(|c| c as i32),
        ),
        ContainerStateStatusEnum::EMPTY => (pb::ContainerState::Unspecified, None),
    };
    let start_time = state
        .started_at
        .as_deref()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .filter(|t| *t > SystemTime::UNIX_EPOCH)
        .map(prost_types::Timestamp::from);
    pb::EngineContainer {
        id: labels.get(labels::ID).cloned().unwrap_or_default(),
        name: labels.get(labels::NAME).cloned().unwrap_or_default(),
        runtime_id: inspect.id.clone().unwrap_or_default(),
        state: devctl_state as i32,
        exit_code,
        start_time,
        engine_status: status.to_string(),
        health: match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::STARTING) => pb::HealthStatus::Starting,
            Some(HealthStatusEnum::HEALTHY) => pb::HealthStatus::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => pb::HealthStatus::Unhealthy,
            _ => pb::HealthStatus::Unspecified,
        } as i32,
        oom_killed: state.oom_killed.unwrap_or(false),
        image: inspect
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
    }
}

fn engine(e: BollardError) -> RuntimeError {
    RuntimeError::Engine(e.to_string())
}

fn map_err(e: BollardError, id: &str) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => RuntimeError::NotFound(id.to_string()),
            400 => RuntimeError::Invalid(message),
            409 => RuntimeError::Conflict(message),
            _ => RuntimeError::Engine(message),
        },
        other => engine(other),
    }
}
