//! The scheduler's operations on containers and nodes, in domain terms.
//! The API layer decodes and authorizes, then calls these; errors are
//! [`Error`], mapped to gRPC statuses at the edge.
//!
//! Rules every operation keeps:
//! - operations on one container are serialized by a per-name lock;
//! - a create is recorded (state `PENDING`) before the agent is asked, and
//!   the record is deleted again if the agent reports failure, so neither a
//!   record nor an engine container is left half-made;
//! - what the API acknowledges was committed to the store first.
//!
//! The submodules hold the scheduler's own initiatives: `supervise` (leases,
//! inactivity, health, lost nodes, reconciliation) and `drain` (cordon,
//! drain, re-placement on start).

mod drain;
mod error;
mod settings;
mod spec;
mod supervise;

pub use error::Error;
use error::{agent_error, not_found};
pub use settings::{
    CreateOptions, DEFAULT_PAGE_SIZE, MAX_PAGE_BYTES, MAX_PAGE_SIZE, MIN_MEMORY_BYTES,
    MIN_MILLI_CPUS, Settings,
};
pub use spec::validate_spec;

pub use supervise::{ExpiryAction, LeasePolicy};

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use devctl_proto::{
    keyed::KeyedLocks,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    validate::{self, InvalidField, limits},
};
use tokio_util::task::TaskTracker;

use crate::{
    activity::{Activity, SessionKind},
    bus::{Bus, BusError},
    events::{self, Intents, Op, StateChange},
    nodes::Registry,
    placement,
    store::{ContainerFilter, Store},
};

/// The cluster: a cheap clone handle over shared state.
#[derive(Debug, Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    nodes: Registry,
    bus: Bus,
    settings: Settings,
    locks: Arc<KeyedLocks>,
    intents: Arc<Intents>,
    stats: crate::stats::StatsCache,
    // Every mutating operation runs as a task of this tracker, so a caller
    // that goes away (deadline, Ctrl-C) cannot cut an operation in half.
    tasks: TaskTracker,
    // tokio lock: held across the store insert that follows a placement
    // decision, so two creates cannot both count the same free node.
    placement: tokio::sync::Mutex<()>,
    activity: Activity,
    // std locks below: map operations only.
    // Containers the supervisor is acting on (one action at a time each).
    busy: Arc<Mutex<HashSet<String>>>,
    // Containers whose last supervisor action failed: not before then.
    retry_after: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
    // Unknown devctl containers by (node, engine id): when first seen.
    orphans: Mutex<HashMap<(String, String), tokio::time::Instant>>,
    // Nodes containers were on besides their records' (engine events).
    whereabouts: crate::events::Whereabouts,
    // Warnings about what a node sent and was refused, per node.
    refused: crate::events::Throttle,
}

fn now() -> Option<prost_types::Timestamp> {
    Some(SystemTime::now().into())
}

/// The expiry of a lease of `ttl` seconds taken now (`None`: no lease).
fn lease_from_now(ttl: i64) -> Option<prost_types::Timestamp> {
    (ttl > 0).then(|| (SystemTime::now() + Duration::from_secs(ttl as u64)).into())
}

impl Cluster {
    /// A cluster over `store`, `nodes` and `bus`.
    pub fn new(store: Store, nodes: Registry, bus: Bus, settings: Settings) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                nodes,
                bus,
                locks: KeyedLocks::new(),
                intents: Arc::default(),
                stats: crate::stats::StatsCache::default(),
                tasks: TaskTracker::new(),
                placement: tokio::sync::Mutex::new(()),
                activity: Activity::new(settings.idle.clone()),
                busy: Arc::default(),
                retry_after: Arc::default(),
                orphans: Mutex::default(),
                whereabouts: Default::default(),
                refused: Default::default(),
                settings,
            }),
        }
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Sends a command to `node`'s agent; `extra` seconds are added to the
    /// command timeout (a stop's grace period).
    async fn send_raw(&self, node: &str, command: Command, extra: i32) -> Result<Reply, BusError> {
        let timeout =
            self.shared.settings.command_timeout + Duration::from_secs(extra.max(0) as u64);
        self.shared.bus.command(node, command, timeout).await
    }

    async fn send(&self, node: &str, command: Command, extra: i32) -> Result<Reply, Error> {
        Ok(self.send_raw(node, command, extra).await?)
    }

    /// Runs `op` as a task of the cluster and waits for it: if the caller
    /// goes away, the operation still completes and records its outcome.
    async fn detached<T: Send + 'static>(
        &self,
        op: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        self.shared
            .tasks
            .spawn(op)
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("operation task failed: {e}"))))
    }

    /// Waits for every operation in flight to finish (at shutdown).
    pub async fn finish_operations(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Creates and starts a container owned by `owner` (with `dry_run`, only
    /// decides where it would run).
    pub async fn create(
        &self,
        spec: pb::Container,
        owner: &str,
        options: CreateOptions,
    ) -> Result<pb::Container, Error> {
        validate_spec(&spec)?;
        let (this, owner) = (self.clone(), owner.to_string());
        self.detached(async move { this.create_now(spec, &owner, options).await })
            .await
    }

    /// The nodes as placement sees them now.
    /// Decides where `request` runs (the chosen node's name). `release`
    /// is a reservation to leave out (a container moving off its node).
    fn place(
        &self,
        request: &placement::Request,
        release: Option<(&str, pb::Resources)>,
    ) -> Result<String, placement::PlacementError> {
        let usage = self.store().node_usage();
        self.shared.nodes.with_views(&usage, |views| {
            if let Some((node, r)) = release
                && let Some(v) = views.iter_mut().find(|v| v.name == node)
            {
                v.reserved_milli_cpus -= r.milli_cpus;
                v.reserved_memory_bytes -= r.memory_bytes;
            }
            placement::place(views, request).map(|n| n.name.to_string())
        })
    }

    /// Records `node`'s usage report (`node` is the one of the subject it
    /// came on): the node's sample and its memory use for admission, and
    /// the samples of the containers recorded on `node` (by id, under
    /// their recorded names); samples of any other container are dropped.
    pub fn ingest_stats(&self, node: &str, mut report: pb::StatsReport) {
        let Some(sample) = report.node.as_mut() else {
            return;
        };
        sample.node = node.to_string();
        let percent = placement::memory_used_percent(sample);
        self.shared.nodes.set_memory_used(node, percent);
        let sent = report.containers.len();
        report
            .containers
            .retain_mut(|c| match self.recorded_on(node, &c.id) {
                Some(r) => {
                    (c.name, c.node) = (r.name, node.to_string());
                    true
                }
                None => false,
            });
        if report.containers.len() < sent
            && let Some(suppressed) = self.shared.refused.allow(node)
        {
            tracing::warn!(
                node,
                dropped = sent - report.containers.len(),
                suppressed,
                "stats of a container not on the node ignored"
            );
        }
        self.shared.stats.ingest(report);
    }

    /// The record of container `id` if it is on `node`.
    fn recorded_on(&self, node: &str, id: &str) -> Option<pb::Container> {
        let name = self.store().container_name_by_id(id).ok()??;
        self.store()
            .container(&name)
            .ok()?
            .filter(|c| c.id == id && c.node == node)
    }

    /// The name of container `id` if the scheduler placed it on `node`:
    /// its record says so, or it was there lately (removed since, or
    /// moving).
    fn placed_on(&self, node: &str, id: &str) -> Option<String> {
        self.recorded_on(node, id)
            .map(|c| c.name)
            .or_else(|| self.shared.whereabouts.name_on(id, node))
    }

    /// Deletes `c`'s record and its samples; engine events about it that
    /// are still on their way are accepted for a while.
    async fn forget_record(&self, c: &pb::Container) -> Result<(), Error> {
        self.shared.whereabouts.note(&c.id, &c.node, &c.name);
        self.store().delete_container(&c.name).await?;
        self.shared.stats.forget(&c.id);
        Ok(())
    }

    async fn create_now(
        &self,
        spec: pb::Container,
        owner: &str,
        options: CreateOptions,
    ) -> Result<pb::Container, Error> {
        let _lock = self.shared.locks.lock(&spec.name).await;
        if let Some(existing) = self.store().container(&spec.name)? {
            // A retry of the create that made it returns it.
            let made_by_this_request = match &options.request_id {
                Some(r) => {
                    self.store().container_id_by_request(r)?.as_deref() == Some(&existing.id)
                }
                None => false,
            };
            if made_by_this_request && existing.owner == owner {
                tracing::info!(name = %existing.name, "create retried with the same request id");
                return Ok(existing);
            }
            return Err(Error::AlreadyExists(spec.name));
        }
        let settings = &self.shared.settings;
        let ttl = settings.leases.ttl_for_create(spec.ttl_seconds)?;
        let mut resources = spec.resources.unwrap_or_default();
        if resources.milli_cpus == 0 {
            resources.milli_cpus = settings.default_milli_cpus;
        }
        if resources.memory_bytes == 0 {
            resources.memory_bytes = settings.default_memory_bytes;
        }
        let request = placement::Request {
            node: (!spec.node.is_empty()).then(|| spec.node.clone()),
            milli_cpus: resources.milli_cpus,
            memory_bytes: resources.memory_bytes,
            constraints: spec.constraints.clone(),
            strategy: options.strategy.unwrap_or(settings.strategy),
            memory_threshold_percent: settings.memory_threshold_percent,
            cpu_overcommit: settings.cpu_overcommit,
        };
        let mut record = pb::Container {
            name: spec.name,
            id: uuid::Uuid::new_v4().to_string(),
            image: spec.image,
            command: spec.command,
            state: pb::ContainerState::Pending as i32,
            desired_state: pb::DesiredState::Running as i32,
            node: String::new(),
            resources: Some(resources),
            env: spec.env,
            labels: spec.labels,
            constraints: spec.constraints,
            owner: owner.to_string(),
            create_time: now(),
            update_time: now(),
            ttl_seconds: Some(ttl),
            lease_expire_time: lease_from_now(ttl),
            health_check: spec.health_check,
            ..Default::default()
        };
        loop {
            let _placing = self.shared.placement.lock().await;
            if let Some(role) = options.role {
                let held = self.store().owned(owner);
                let held = crate::quota::Held {
                    containers: held.containers as u64,
                    milli_cpus: held.milli_cpus,
                    memory_bytes: held.memory_bytes,
                };
                settings
                    .quotas
                    .check(
                        owner,
                        role,
                        held,
                        resources.milli_cpus,
                        resources.memory_bytes,
                    )
                    .map_err(|e| Error::ResourceExhausted(e.to_string()))?;
            }
            record.node = match self.place(&request, None) {
                Ok(node) => node,
                // Just after a restart, a node not heard from yet may be
                // the one that fits: wait for it (bounded by the grace
                // period), then decide again.
                Err(ref e)
                    if !matches!(e, placement::PlacementError::UnknownNode(_))
                        && self.shared.nodes.any_unknown() =>
                {
                    drop(_placing);
                    self.shared.nodes.node_change_or_grace_end().await;
                    continue;
                }
                Err(e @ placement::PlacementError::UnknownNode(_)) => {
                    return Err(Error::NotFound(e.to_string()));
                }
                Err(e) if e.is_capacity() => return Err(Error::ResourceExhausted(e.to_string())),
                Err(e) => return Err(Error::FailedPrecondition(e.to_string())),
            };
            if options.dry_run {
                return Ok(record);
            }
            self.store()
                .insert_container(record.clone(), options.request_id.clone())
                .await?;
            break;
        }
        tracing::info!(name = %record.name, id = %record.id, node = %record.node, image = %record.image, owner, "creating container");
        let _intent = self.shared.intents.begin(&record.id, owner, Op::Create);

        let command = Command::Create(pb::CreateCommand {
            container: Some(record.clone()),
        });
        match self.send_raw(&record.node, command, 0).await {
            Ok(Reply::Status(status)) => {
                apply_status(&mut record, &status);
                // The agent answers once the container stayed up briefly: a
                // command that exits at once comes back stopped.
                if record.state != pb::ContainerState::Running as i32 {
                    record.last_error = exited_at_once(&record);
                    tracing::warn!(name = %record.name, node = %record.node, exit_code = ?record.exit_code, "container exited right after it started");
                } else {
                    tracing::info!(name = %record.name, node = %record.node, "container running");
                }
                self.store().update_container(record.clone()).await?;
                self.shared.activity.touch(&record.name, SystemTime::now());
                Ok(self.decorate(record))
            }
            // Any refusal but ENGINE guarantees the agent left nothing behind
            // (it reports ENGINE when it could not clean up after itself).
            Ok(Reply::Error(e)) if e.code != pb::AgentErrorCode::Engine as i32 && e.code != 0 => {
                self.forget_record(&record).await?;
                Err(agent_error(Reply::Error(e), &record))
            }
            Err(BusError::NoResponders(node)) => {
                // Nobody received the command: nothing was created.
                self.forget_record(&record).await?;
                Err(BusError::NoResponders(node).into())
            }
            Ok(reply) => {
                let err = agent_error(reply, &record);
                self.forget_or_mark_failed(record, err).await
            }
            Err(e) => self.forget_or_mark_failed(record, e.into()).await,
        }
    }

    /// After a create whose outcome on the node is unknown: make sure the
    /// node does not have the container, then forget the record. If that
    /// cannot be confirmed, keep the record, marked failed, so nothing on
    /// the node is unaccounted for. The agent runs commands for one
    /// container in order, so this remove runs after the create finished.
    async fn forget_or_mark_failed(
        &self,
        mut record: pb::Container,
        err: Error,
    ) -> Result<pb::Container, Error> {
        let cleanup = Command::Remove(pb::RemoveCommand {
            id: record.id.clone(),
            force: true,
        });
        let gone = match self.send_raw(&record.node, cleanup, 0).await {
            Ok(Reply::Removed(_)) => true,
            Ok(Reply::Error(e)) => e.code == pb::AgentErrorCode::ContainerNotFound as i32,
            _ => false,
        };
        if gone {
            self.forget_record(&record).await?;
            return Err(err);
        }
        record.state = pb::ContainerState::Failed as i32;
        record.last_error = format!("create: {err}");
        record.update_time = now();
        self.store().update_container(record.clone()).await?;
        Err(err.annotate(&format!(
            "the container is recorded as failed: remove it with `devctl rm --force {}`",
            record.name
        )))
    }

    /// One container, as recorded.
    fn record(&self, name: &str) -> Result<pb::Container, Error> {
        validate::dns_label("name", name)?;
        self.store().container(name)?.ok_or_else(|| not_found(name))
    }

    /// The owner of the container with engine-independent id `id`, if it
    /// is recorded.
    pub fn owner_by_id(&self, id: &str) -> Option<String> {
        let name = self.store().container_name_by_id(id).ok()??;
        Some(self.store().container(&name).ok()??.owner)
    }

    /// One container, with its live fields.
    pub fn get(&self, name: &str) -> Result<pb::Container, Error> {
        Ok(self.decorate(self.record(name)?))
    }

    /// Fills in what is not recorded: the cluster's idle window and, while
    /// the container runs, when it was last in use.
    fn decorate(&self, mut c: pb::Container) -> pb::Container {
        let activity = &self.shared.activity;
        c.idle_timeout_seconds = activity.policy().timeout.as_secs() as i64;
        if c.state == pb::ContainerState::Running as i32 {
            c.last_active_time = activity.last_active(&c.name).map(Into::into);
        }
        c
    }

    /// A page of containers.
    pub fn list(
        &self,
        req: &pb::ListContainersRequest,
    ) -> Result<pb::ListContainersResponse, Error> {
        let size = match req.page_size {
            n if n < 0 => {
                return Err(InvalidField::new(
                    "page_size",
                    "must not be negative (0 means the default, 100)",
                )
                .into());
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        validate::max_len("page_token", &req.page_token, limits::MAX_PAGE_TOKEN_LEN)?;
        for (field, value) in [("node", &req.node), ("owner", &req.owner)] {
            if !value.is_empty() {
                validate::dns_label(field, value)?;
            }
        }
        let after = if req.page_token.is_empty() {
            None
        } else {
            let bytes = URL_SAFE_NO_PAD
                .decode(&req.page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    InvalidField::new(
                        "page_token",
                        "is not a token this server issued; pass next_page_token from the previous response unchanged",
                    )
                })?;
            Some(bytes)
        };
        let filter = ContainerFilter {
            node: (!req.node.is_empty()).then(|| req.node.clone()),
            owner: (!req.owner.is_empty()).then(|| req.owner.clone()),
        };
        let (found, mut more) = self
            .store()
            .list_containers(after.as_deref(), size, &filter)?;
        // A page stays well within a client's default message limit (4 MiB)
        // whatever the containers carry: a full one ends early.
        let mut containers = Vec::with_capacity(found.len());
        let mut bytes = 0;
        for c in found {
            let c = self.decorate(c);
            bytes += prost::Message::encoded_len(&c);
            if bytes > MAX_PAGE_BYTES && !containers.is_empty() {
                more = true;
                break;
            }
            containers.push(c);
        }
        let next_page_token = match (more, containers.last()) {
            (true, Some(last)) => URL_SAFE_NO_PAD.encode(last.name.as_bytes()),
            _ => String::new(),
        };
        Ok(pb::ListContainersResponse {
            containers,
            next_page_token,
        })
    }

    /// Whether `node` is ready, once its state is known: a node the
    /// scheduler has not heard from since it started is waited for (until
    /// its first heartbeat, or the end of the grace period).
    async fn settles_ready(&self, node: &str) -> bool {
        self.shared.nodes.settled_state(node).await == Some(pb::NodeState::Ready)
    }

    /// Fails unless `c`'s node is ready (waiting for it while its state is
    /// unknown), or `c` is being removed.
    async fn node_must_be_ready(&self, c: &pb::Container) -> Result<(), Error> {
        must_not_be_removing(c)?;
        if !self.settles_ready(&c.node).await {
            return Err(Error::FailedPrecondition(format!(
                "node {:?} of container {:?} is down; retry when it is back (`devctl nodes`)",
                c.node, c.name
            )));
        }
        Ok(())
    }

    /// Runs a start/stop/restart command and records its outcome. `cause`
    /// says who wanted it: a user, or the scheduler itself (lease, idle,
    /// health, drain); `still` is checked under the container's lock first,
    /// and a container it rejects is returned unchanged (the reason to act
    /// went away meanwhile).
    async fn lifecycle(
        &self,
        name: &str,
        op: Op,
        stop_timeout: i32,
        actor: &str,
        cause: Cause,
        still: Option<Precheck>,
    ) -> Result<pb::Container, Error> {
        let (this, name, actor) = (self.clone(), name.to_string(), actor.to_string());
        self.detached(async move {
            let _lock = this.shared.locks.lock(&name).await;
            let mut c = this.record(&name)?;
            if still.is_some_and(|f| !f(&c)) {
                return Ok(c);
            }
            // A stopped container whose node is cordoned (drained, maybe
            // powered off since) starts elsewhere; a running one stays.
            if op == Op::Start
                && c.state != pb::ContainerState::Running as i32
                && this.shared.nodes.get(&c.node).is_some_and(|n| n.cordoned)
            {
                return this.replace_and_start(c, &actor).await;
            }
            this.node_must_be_ready(&c).await?;
            let _intent = this
                .shared
                .intents
                .begin_for(&c.id, &actor, op, cause.word());
            let id = c.id.clone();
            let command = match op {
                Op::Start => Command::Start(pb::StartCommand { id }),
                Op::Stop => Command::Stop(pb::StopCommand {
                    id,
                    timeout_seconds: stop_timeout,
                }),
                _ => Command::Restart(pb::RestartCommand {
                    id,
                    timeout_seconds: stop_timeout,
                }),
            };
            let was_running = c.state == pb::ContainerState::Running as i32;
            let result = this.send(&c.node, command, stop_timeout).await;
            // Only an outcome the node confirmed changes the desired state:
            // a stop that timed out still reserves, and is retried.
            let desired = if op == Op::Stop {
                pb::DesiredState::Stopped
            } else {
                pb::DesiredState::Running
            } as i32;
            c.update_time = now();
            let default_ttl = this.shared.settings.leases.default_seconds();
            let outcome = match result {
                Ok(Reply::Status(status)) => {
                    c.desired_state = desired;
                    apply_status(&mut c, &status);
                    after_lifecycle(&mut c, op, cause, was_running, default_ttl);
                    Ok(())
                }
                Ok(reply) => {
                    let err = agent_error(reply, &c);
                    if matches!(err, Error::FailedPrecondition(ref m) if m.contains("missing on node")) {
                        c.desired_state = desired;
                        c.state = pb::ContainerState::Failed as i32;
                        // Nothing left to stop when the lease runs out.
                        c.lease_expire_time = None;
                    }
                    c.last_error = err.to_string();
                    Err(err)
                }
                Err(err) => Err(err),
            };
            this.store().update_container(c.clone()).await?;
            match (&outcome, op) {
                // Stopped: its next start opens a fresh idle window.
                (Ok(()), Op::Stop) => this.shared.activity.forget(&c.name),
                (Ok(()), _) => this.shared.activity.touch(&c.name, SystemTime::now()),
                _ => {}
            }
            outcome.map(|()| this.decorate(c))
        })
        .await
    }

    /// Starts a container (on another node if its own is cordoned).
    pub async fn start(&self, name: &str, actor: &str) -> Result<pb::Container, Error> {
        tracing::info!(name, actor, "start");
        self.lifecycle(name, Op::Start, 0, actor, Cause::User, None)
            .await
    }

    /// Stops a container at a user's request.
    pub async fn stop(
        &self,
        name: &str,
        timeout: Option<i32>,
        actor: &str,
    ) -> Result<pb::Container, Error> {
        let t = self.stop_timeout(timeout)?;
        tracing::info!(name, actor, timeout = t, "stop");
        self.lifecycle(name, Op::Stop, t, actor, Cause::User, None)
            .await
    }

    /// Restarts a container at a user's request.
    pub async fn restart(
        &self,
        name: &str,
        timeout: Option<i32>,
        actor: &str,
    ) -> Result<pb::Container, Error> {
        let t = self.stop_timeout(timeout)?;
        tracing::info!(name, actor, timeout = t, "restart");
        self.lifecycle(name, Op::Restart, t, actor, Cause::User, None)
            .await
    }

    fn stop_timeout(&self, timeout: Option<i32>) -> Result<i32, Error> {
        match timeout {
            None => Ok(self.shared.settings.default_stop_timeout),
            Some(t) if (0..=3600).contains(&t) => Ok(t),
            Some(_) => {
                Err(InvalidField::new("timeout_seconds", "must be between 0 and 3600").into())
            }
        }
    }

    /// Removes a container from its node and from the cluster.
    pub async fn delete(
        &self,
        name: &str,
        force: bool,
        actor: &str,
    ) -> Result<pb::Container, Error> {
        let (this, name, actor) = (self.clone(), name.to_string(), actor.to_string());
        self.detached(async move {
            this.delete_now(&name, force, &actor, Cause::User, None)
                .await
        })
        .await
    }

    async fn delete_now(
        &self,
        name: &str,
        force: bool,
        actor: &str,
        cause: Cause,
        still: Option<Precheck>,
    ) -> Result<pb::Container, Error> {
        let _lock = self.shared.locks.lock(name).await;
        let c = self.record(name)?;
        if still.is_some_and(|f| !f(&c)) {
            return Ok(c);
        }
        let _intent = self
            .shared
            .intents
            .begin_for(&c.id, actor, Op::Remove, cause.word());
        if c.desired_state == pb::DesiredState::Removed as i32 {
            // Already recorded; the node removes it when it reports.
            return Ok(c);
        }
        if !force && c.state == pb::ContainerState::Running as i32 {
            return Err(Error::FailedPrecondition(format!(
                "container {name:?} is running; stop it first (devctl stop {name}) or remove it with --force"
            )));
        }
        if !self.settles_ready(&c.node).await {
            if !force {
                return Err(Error::FailedPrecondition(format!(
                    "node {:?} of container {name:?} is down; retry when it is back, or use --force to remove it from the node as soon as the node returns",
                    c.node
                )));
            }
            return self.record_removal(c, actor, cause).await;
        }
        self.remove_on_node(&c, force).await?;
        self.forget_record(&c).await?;
        self.shared.activity.forget(name);
        tracing::info!(name, reason = cause.word(), "container removed");
        Ok(c)
    }

    /// Removes `c` from its node's engine (gone already counts as done).
    async fn remove_on_node(&self, c: &pb::Container, force: bool) -> Result<(), Error> {
        let command = Command::Remove(pb::RemoveCommand {
            id: c.id.clone(),
            force,
        });
        match self.send(&c.node, command, 0).await? {
            Reply::Removed(_) => {}
            Reply::Error(e) if e.code == pb::AgentErrorCode::ContainerNotFound as i32 => {
                tracing::info!(name = %c.name, "container was already gone from its node");
            }
            other => return Err(agent_error(other, c)),
        }
        Ok(())
    }

    /// Records that `c`, whose node is down, is to be removed from that
    /// node as soon as the node reports (its next inventory sync carries
    /// the removal out and forgets the record). The caller holds `c`'s
    /// lock.
    async fn record_removal(
        &self,
        mut c: pb::Container,
        actor: &str,
        cause: Cause,
    ) -> Result<pb::Container, Error> {
        c.desired_state = pb::DesiredState::Removed as i32;
        // Nothing left to stop, restart or expire meanwhile.
        c.lease_expire_time = None;
        c.last_error = removal_pending_message(&c);
        c.update_time = now();
        self.store().update_container(c.clone()).await?;
        self.shared.activity.forget(&c.name);
        tracing::warn!(name = %c.name, node = %c.node, actor, reason = cause.word(), "node is down: removal recorded, carried out when the node returns");
        let event = pb::Event {
            time: now(),
            r#type: pb::EventType::ContainerRemovalPending as i32,
            container: c.name.clone(),
            container_id: c.id.clone(),
            node: c.node.clone(),
            actor: actor.to_string(),
            reason: "removal_pending".into(),
            message: c.last_error.clone(),
            ..Default::default()
        };
        let _ = self.emit(event, format!("removal-pending-{}", c.id)).await;
        Ok(self.decorate(c))
    }

    /// Carries out the removals recorded while `node` was down (at its
    /// inventory sync). A removal that fails stays recorded and is retried
    /// at the next sync.
    async fn carry_out_removals(&self, node: &str) -> Result<(), Error> {
        for name in self.store().names_on_node(node) {
            let _lock = self.shared.locks.lock(&name).await;
            let Some(c) = self.store().container(&name)? else {
                continue;
            };
            if c.node != node || c.desired_state != pb::DesiredState::Removed as i32 {
                continue;
            }
            self.remove_on_node(&c, true).await?;
            self.forget_record(&c).await?;
            tracing::info!(name, node, "recorded removal carried out: the node is back");
        }
        Ok(())
    }

    /// Every node with its state, containers and reservations.
    pub fn nodes(&self) -> Result<Vec<pb::Node>, Error> {
        let usage = self.store().node_usage();
        Ok(self
            .shared
            .nodes
            .snapshot()
            .into_iter()
            .map(|n| self.with_usage(n, &usage))
            .collect())
    }

    /// One node.
    pub fn node(&self, name: &str) -> Result<pb::Node, Error> {
        let n = self.shared.nodes.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "node {name:?} not found; `devctl nodes` lists nodes"
            ))
        })?;
        Ok(self.with_usage(n, &self.store().node_usage()))
    }

    /// `n` with what it holds (`usage`) and its latest usage sample.
    fn with_usage(
        &self,
        mut n: pb::Node,
        usage: &std::collections::BTreeMap<String, crate::store::NodeUsage>,
    ) -> pb::Node {
        let u = usage.get(&n.name).copied().unwrap_or_default();
        n.container_count = u.containers as i32;
        n.reserved_milli_cpus = u.milli_cpus;
        n.reserved_memory_bytes = u.memory_bytes;
        n.usage = self.shared.stats.node(&n.name);
        n
    }

    /// Records a heartbeat. The first heartbeat of an agent process this
    /// scheduler sees starts an inventory sync of its node (retried at the
    /// next heartbeat until one succeeds).
    pub async fn heartbeat(&self, hb: &pb::Heartbeat) -> Result<(), Error> {
        if let Err(e) = validate::dns_label("heartbeat.node", &hb.node) {
            tracing::warn!(error = %e, "heartbeat ignored");
            return Ok(());
        }
        let observed = self.shared.nodes.observe(hb);
        if let Some(node) = observed.persist {
            tracing::info!(node = %node.name, cpus = node.cpus, memory_bytes = node.memory_bytes, "node joined or changed");
            self.store().put_node(node).await?;
        }
        if observed.joined {
            let ev = events::node_event(&hb.node, pb::EventType::NodeJoined, "first_heartbeat");
            let _ = self.emit(ev, format!("joined-{}", hb.node)).await;
        }
        if let Some(change) = observed.capacity
            && self.shared.refused.allow(&hb.node).is_some()
        {
            tracing::warn!(node = %hb.node, reason = change.reason, "{}", change.message);
            let mut ev =
                events::node_event(&hb.node, pb::EventType::NodeCapacityChanged, change.reason);
            ev.message = change.message;
            let _ = self.emit(ev, uuid::Uuid::new_v4().to_string()).await;
        }
        if hb.leaving {
            tracing::info!(node = %hb.node, "node is leaving");
        }
        self.report_transitions(Some(&hb.node)).await;
        if observed.needs_sync {
            let (this, node, boot) = (self.clone(), hb.node.clone(), hb.boot_id.clone());
            self.shared.tasks.spawn(async move {
                let result = this.sync_inventory(&node).await;
                if let Err(e) = &result {
                    tracing::warn!(node, error = %e, "inventory sync failed; retrying at the next heartbeat");
                }
                this.shared.nodes.sync_done(&node, &boot, result.is_ok());
            });
        }
        Ok(())
    }

    /// Records an event for every node whose state changed (called every
    /// second, to notice silence).
    pub async fn check_nodes(&self) {
        self.report_transitions(None).await;
    }

    /// Records an event for each state change of `only` (or every node).
    async fn report_transitions(&self, only: Option<&str>) {
        for (node, state, reason) in self.shared.nodes.transitions_of(only) {
            let ty = match state {
                pb::NodeState::Ready => pb::EventType::NodeReady,
                _ => pb::EventType::NodeDown,
            };
            tracing::info!(node, state = ?state, reason, "node state changed");
            if state == pb::NodeState::Down {
                let (this, node) = (self.clone(), node.clone());
                self.shared
                    .tasks
                    .spawn(async move { this.mark_lost(&node).await });
            }
            let event = events::node_event(&node, ty, reason);
            if self
                .emit(event, uuid::Uuid::new_v4().to_string())
                .await
                .is_err()
            {
                // Not recorded: report it again at the next check.
                self.shared.nodes.unreport(&node);
            }
        }
    }

    /// Appends an event to the history; `id` de-duplicates retries. A
    /// failure is logged: the operation that caused the event stands.
    async fn emit(&self, event: pb::Event, id: String) -> Result<(), BusError> {
        let subject = if event.container.is_empty() {
            devctl_proto::bus::node_event_subject(&event.node)
        } else {
            devctl_proto::bus::container_event_subject(&event.node, &event.container)
        };
        let published = self.shared.bus.publish_event(subject, &event, &id).await;
        if let Err(e) = &published {
            tracing::error!(error = %e, event = %event.message, "event not recorded");
        }
        published.map(|_| ())
    }

    /// Handles one engine event from `node` (the node of the subject it
    /// came on; the bus lets an agent publish only on its own): records
    /// the cluster event it stands for and, for a change devctl did not
    /// request, updates the container's observed state. An event about a
    /// container the scheduler did not place on `node` is dropped: a node
    /// speaks only for its own containers. Idempotent (a redelivered event
    /// changes nothing more and is de-duplicated in the history).
    pub async fn engine_event(&self, node: &str, ev: &pb::EngineEvent) -> Result<(), Error> {
        if ev.action == devctl_proto::bus::RESYNC_ACTION {
            return self.resync(node, ev).await;
        }
        let Some(name) = self.placed_on(node, &ev.id) else {
            if let Some(suppressed) = self.shared.refused.allow(node) {
                tracing::warn!(node, id = %ev.id, claimed_name = %ev.name, action = %ev.action, suppressed,
                    "engine event dropped: no such container was placed on the node");
            }
            return Ok(());
        };
        // Who it is about comes from the record, not from the event.
        let ev = &pb::EngineEvent {
            node: node.to_string(),
            name,
            ..ev.clone()
        };
        let intent = self.shared.intents.get(&ev.id);
        if ev.action == "oom" {
            self.shared.intents.oom(&ev.id);
        }
        let oom = ev.action == "die" && self.shared.intents.take_oom(&ev.id);
        let t = events::translate(ev, intent.as_ref(), oom);
        if let Some(change) = t.change {
            let unhealthy = change == StateChange::Health(pb::HealthStatus::Unhealthy);
            self.follow_engine(&ev.name, ev, change).await?;
            if unhealthy {
                self.heal(&ev.name);
            }
        }
        if let Some(event) = t.event {
            self.emit(event, format!("engine-{}", ev.event_id))
                .await
                .map_err(|e| Error::Unavailable(format!("event not recorded: {e}")))?;
        }
        Ok(())
    }

    /// `node`'s agent dropped engine events: re-read its inventory (the
    /// records follow the engine again) and say so in the history.
    async fn resync(&self, node: &str, ev: &pb::EngineEvent) -> Result<(), Error> {
        tracing::warn!(
            node,
            dropped = ev.dropped,
            "the node's agent dropped engine events; re-reading its inventory"
        );
        self.sync_inventory(node).await?;
        let mut event = events::node_event(
            node,
            pb::EventType::NodeResynced,
            devctl_proto::bus::RESYNC_REASON,
        );
        event.message = format!(
            "node {node} dropped {} engine events (its agent could not store them in time); its inventory was re-read, and changes in that time may be missing from the history",
            ev.dropped
        );
        self.emit(event, format!("engine-{}", ev.event_id))
            .await
            .map_err(|e| Error::Unavailable(format!("event not recorded: {e}")))
    }

    /// Brings `name`'s record in line with its engine after a change devctl
    /// did not request. The event only says something changed: the state
    /// recorded is what the node reports now (so a late or replayed event
    /// cannot overwrite newer state), classified by the event.
    async fn follow_engine(
        &self,
        name: &str,
        ev: &pb::EngineEvent,
        change: StateChange,
    ) -> Result<(), Error> {
        // After any operation on it: its own write must not overwrite this
        // newer change, nor this change land in the middle of it.
        let _lock = self.shared.locks.lock(name).await;
        let Some(mut c) = self.store().container(name)? else {
            return Ok(());
        };
        if c.id != ev.id || c.node != ev.node {
            return Ok(()); // another container of the same name by now
        }
        let before = c.clone();
        let inspect = Command::Inspect(pb::InspectCommand { id: c.id.clone() });
        match self.send_raw(&c.node, inspect, 0).await {
            Ok(Reply::Status(s)) => {
                let running = s.state == pb::ContainerState::Running as i32;
                apply_status(&mut c, &s);
                if !running {
                    match change {
                        // A stale start: the engine says it is not running.
                        StateChange::Running { .. } => {}
                        StateChange::Exited { oom, .. } => StateChange::Exited {
                            code: s.exit_code,
                            oom,
                        }
                        .apply(&mut c),
                        other => other.apply(&mut c),
                    }
                }
            }
            Ok(Reply::Error(e)) if e.code == pb::AgentErrorCode::ContainerNotFound as i32 => {
                StateChange::Removed.apply(&mut c);
            }
            // The node does not answer: go by the event.
            _ => change.apply(&mut c),
        }
        if c == before {
            return Ok(());
        }
        c.update_time = now();
        self.note_started(before.state, &c);
        tracing::info!(name, state = ?c.state(), action = %ev.action, "container changed outside devctl");
        self.store().update_container(c).await?;
        Ok(())
    }

    /// A container seen running again without a devctl start (a start on
    /// its engine, a node back) opens a fresh idle window: its use while
    /// devctl could not see it is unknown.
    fn note_started(&self, state_before: i32, after: &pb::Container) {
        let running = pb::ContainerState::Running as i32;
        if after.state == running && state_before != running {
            self.shared.activity.touch(&after.name, SystemTime::now());
        }
    }

    /// Opens `name`'s output on its node.
    pub async fn open_logs(
        &self,
        name: &str,
        req: &pb::StreamLogsRequest,
    ) -> Result<crate::bus::StreamReader, Error> {
        if req.tail.is_some_and(|t| t < 0) {
            return Err(InvalidField::new("tail", "must not be negative").into());
        }
        let c = self.record(name)?;
        if !self.settles_ready(&c.node).await {
            return Err(Error::FailedPrecondition(format!(
                "node {:?} of container {name:?} is down; its output cannot be read now",
                c.node
            )));
        }
        let cmd = pb::LogsCommand {
            id: c.id.clone(),
            follow: req.follow,
            tail: req.tail,
            since: req.since,
            timestamps: req.timestamps,
            stream: None,
        };
        let timeout = self.shared.settings.command_timeout;
        let build = |setup, _: &str| {
            Command::Logs(pb::LogsCommand {
                stream: Some(setup),
                ..cmd
            })
        };
        match self.shared.bus.open_stream(&c.node, build, timeout).await {
            Ok(reader) => Ok(reader),
            Err(Ok(reply)) => Err(agent_error(reply, &c)),
            Err(Err(e)) => Err(e.into()),
        }
    }

    /// Starts a command in `start.name` as `actor`: the output stream, the
    /// input sender, and the session (recorded as an exec.started event;
    /// report its end with [`Cluster::exec_ended`]).
    pub async fn open_exec(
        &self,
        start: pb::ExecStart,
        actor: &str,
    ) -> Result<
        (
            crate::bus::StreamReader,
            crate::bus::ExecInputSender,
            Session,
        ),
        Error,
    > {
        if start.command.is_empty() {
            return Err(InvalidField::new("start.command", "is required (e.g. [\"sh\"])").into());
        }
        validate::max_count("start.command", start.command.len(), limits::MAX_ARGS)?;
        validate::max_count("start.env", start.env.len(), limits::MAX_ENV)?;
        validate::max_len("start.workdir", &start.workdir, limits::MAX_PATH_LEN)?;
        if let Some(size) = start.size {
            validate::in_range("start.size.rows", size.rows, limits::MAX_TERMINAL_SIZE, "")?;
            validate::in_range("start.size.cols", size.cols, limits::MAX_TERMINAL_SIZE, "")?;
        }
        if start.workdir.contains('\0') {
            return Err(InvalidField::new("start.workdir", "must not contain NUL").into());
        }
        validate::no_control("start.workdir", &start.workdir)?;
        for (i, a) in start.command.iter().enumerate() {
            validate::no_control(&format!("start.command[{i}]"), a)?;
        }
        for (i, e) in start.env.iter().enumerate() {
            validate::no_control(&format!("start.env[{i}]"), e)?;
        }
        let total: usize = start
            .command
            .iter()
            .chain(&start.env)
            .map(String::len)
            .sum();
        if total > limits::MAX_SPEC_BYTES {
            return Err(InvalidField::new(
                "start",
                format!(
                    "command and env add up to {total} bytes; at most {} are allowed (send large input on stdin)",
                    limits::MAX_SPEC_BYTES
                ),
            )
            .into());
        }
        if start
            .command
            .iter()
            .chain(&start.env)
            .any(|a| a.contains('\0'))
        {
            return Err(InvalidField::new("start.command", "must not contain NUL").into());
        }
        let c = self.record(&start.name)?;
        if c.state != pb::ContainerState::Running as i32 {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not running; start it first (devctl start {})",
                c.name, c.name
            )));
        }
        if !self.settles_ready(&c.node).await {
            return Err(Error::FailedPrecondition(format!(
                "node {:?} of container {:?} is down",
                c.node, c.name
            )));
        }
        let command_line = start.command.join(" ");
        let session = Session {
            id: String::new(),
            container: c.name.clone(),
            container_id: c.id.clone(),
            node: c.node.clone(),
            actor: actor.to_string(),
            command: command_line,
        };
        let container_id = c.id.clone();
        let node = c.node.clone();
        let build = |setup, id: &str| {
            Command::Exec(pb::ExecCommand {
                id: container_id,
                start: Some(start),
                stream: Some(setup),
                input_subject: devctl_proto::bus::exec_input_subject(&node, id),
            })
        };
        let mut session_id = String::new();
        let build = |setup, id: &str| {
            session_id = id.to_string();
            build(setup, id)
        };
        let timeout = self.shared.settings.command_timeout;
        let reader = match self.shared.bus.open_stream(&c.node, build, timeout).await {
            Ok(reader) => reader,
            Err(Ok(reply)) => return Err(agent_error(reply, &c)),
            Err(Err(e)) => return Err(e.into()),
        };
        let session = Session {
            id: session_id,
            ..session
        };
        tracing::info!(session = %session.id, container = %session.container, actor, "exec session started");
        self.record_session(&session, pb::EventType::ExecStarted, None)
            .await;
        let input = self.shared.bus.exec_input(&session.node, &session.id);
        Ok((reader, input, session))
    }

    /// Records the end of an exec session.
    pub async fn exec_ended(&self, session: &Session, exit_code: Option<i32>) {
        tracing::info!(session = %session.id, container = %session.container, ?exit_code, "exec session ended");
        self.record_session(session, pb::EventType::ExecEnded, exit_code)
            .await;
    }

    /// Counts an exec session's start or end as use of its container, and
    /// records it as an event.
    async fn record_session(&self, session: &Session, ty: pb::EventType, exit_code: Option<i32>) {
        let (activity, now) = (&self.shared.activity, SystemTime::now());
        let id = if ty == pb::EventType::ExecStarted {
            activity.session_opened(&session.container, SessionKind::Exec, now);
            format!("exec-start-{}", session.id)
        } else {
            activity.session_closed(&session.container, SessionKind::Exec, now);
            format!("exec-end-{}", session.id)
        };
        let _ = self.emit(session.event(ty, exit_code), id).await;
    }

    /// Whether `node` is ready (heartbeats arrive).
    pub fn node_ready(&self, node: &str) -> bool {
        self.shared.nodes.is_ready(node)
    }

    /// The latest usage samples.
    pub fn stats(&self) -> &crate::stats::StatsCache {
        &self.shared.stats
    }

    /// Reads the event history matching `filter` from `start`.
    pub async fn watch_events(
        &self,
        filter: String,
        start: crate::bus::EventStart,
    ) -> Result<crate::bus::EventReader, Error> {
        self.shared
            .bus
            .watch_events(filter, start)
            .await
            .map_err(|e| Error::Unavailable(format!("event history: {e}")))
    }

    /// Asks `node` for the devctl containers it has and brings recorded
    /// observed state in line with it:
    /// - a recorded container the node has takes the node's state (a
    ///   `PENDING` one, whose create was interrupted by a scheduler restart,
    ///   is adopted; a `LOST` one is found again);
    /// - a recorded container missing on the node is marked failed, with the
    ///   reason (an interrupted create that never reached the node, a node
    ///   lost with its containers, or a container removed outside devctl);
    /// - a devctl container the scheduler does not know is reported, and
    ///   removed once it stayed unknown for the orphan grace period.
    pub async fn sync_inventory(&self, node: &str) -> Result<(), Error> {
        // Removals recorded while the node was away go first: their
        // containers are then neither adopted nor reported missing.
        self.carry_out_removals(node).await?;
        let asked_at = SystemTime::now();
        let reply = self
            .send(node, Command::Inventory(pb::InventoryCommand {}), 0)
            .await?;
        let Reply::Inventory(inventory) = reply else {
            return Err(agent_error(reply, &pb::Container::default()));
        };
        let mut on_node: HashMap<String, pb::ContainerStatus> = inventory
            .containers
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        for name in self.store().names_on_node(node) {
            // Re-read under the lock: an operation may have finished since.
            let _lock = self.shared.locks.lock(&name).await;
            let Some(mut c) = self.store().container(&name)? else {
                continue;
            };
            if c.node != node || c.desired_state == pb::DesiredState::Removed as i32 {
                // Removed meanwhile: the next sync carries it out.
                on_node.remove(&c.id);
                continue;
            }
            let lost = c.state == pb::ContainerState::Lost as i32;
            let state_before = c.state;
            // Whatever changed after the inventory was taken is newer than
            // it, except a `lost` mark: the node answered, so it is back.
            let changed_since_ask = c
                .update_time
                .and_then(|t| SystemTime::try_from(t).ok())
                .is_none_or(|t| t >= asked_at);
            let was_pending = c.state == pb::ContainerState::Pending as i32;
            let status = on_node.remove(&c.id);
            // A `lost` mark made after the ask is newer than the inventory
            // unless the node is back (then the mark is stale).
            if changed_since_ask && (!lost || !self.shared.nodes.is_ready(node)) {
                continue;
            }
            match status {
                Some(status) => {
                    let before = (c.state, c.exit_code, c.runtime_id.clone(), c.health);
                    apply_status(&mut c, &status);
                    if before == (c.state, c.exit_code, c.runtime_id.clone(), c.health) {
                        continue;
                    }
                    if was_pending {
                        tracing::info!(node, name = %c.name, "adopted a container whose create was interrupted");
                    } else if lost {
                        if c.state != pb::ContainerState::Running as i32 {
                            c.stop_reason = pb::StopReason::NodeLost as i32;
                        }
                        tracing::info!(node, name = %c.name, state = ?c.state(), "lost container found again on its node");
                    } else {
                        tracing::info!(node, name = %c.name, state = ?c.state(), "observed state updated from node inventory");
                    }
                }
                None if c.state == pb::ContainerState::Failed as i32 => {
                    continue;
                }
                None => {
                    c.state = pb::ContainerState::Failed as i32;
                    c.last_error = if was_pending {
                        "the create was interrupted by a scheduler restart and never reached the node; remove the container and create it again".into()
                    } else if lost {
                        c.stop_reason = pb::StopReason::NodeLost as i32;
                        format!(
                            "node {node:?} was lost and the container is gone from it; remove it, or start it to create it again"
                        )
                    } else {
                        format!(
                            "the container is missing on node {node:?} (removed outside devctl?)"
                        )
                    };
                    tracing::warn!(node, name = %c.name, reason = %c.last_error, "recorded container not on its node");
                }
            }
            c.update_time = now();
            self.note_started(state_before, &c);
            self.store().update_container(c).await?;
        }
        self.handle_orphans(node, on_node.into_values().collect())
            .await;
        Ok(())
    }
}

/// What a container awaiting removal says about it.
fn removal_pending_message(c: &pb::Container) -> String {
    format!(
        "node {} is down; the container will be removed when it returns",
        c.node
    )
}

/// Fails if `c` is awaiting removal (it cannot be started, stopped or
/// reached any more).
fn must_not_be_removing(c: &pb::Container) -> Result<(), Error> {
    if c.desired_state == pb::DesiredState::Removed as i32 {
        return Err(Error::FailedPrecondition(format!(
            "container {:?} is being removed ({}); create a new one with another name",
            c.name,
            removal_pending_message(c)
        )));
    }
    Ok(())
}

/// One exec session: who ran what, where.
#[derive(Debug, Clone)]
pub struct Session {
    /// Unique id.
    pub id: String,
    /// Container name and id, and its node.
    pub container: String,
    /// The container's id.
    pub container_id: String,
    /// The container's node.
    pub node: String,
    /// Who ran it.
    pub actor: String,
    /// The command line.
    pub command: String,
}

impl Session {
    fn event(&self, ty: pb::EventType, exit_code: Option<i32>) -> pb::Event {
        let what = if ty == pb::EventType::ExecStarted {
            "started"
        } else {
            "ended"
        };
        pb::Event {
            time: now(),
            r#type: ty as i32,
            container: self.container.clone(),
            container_id: self.container_id.clone(),
            node: self.node.clone(),
            actor: self.actor.clone(),
            reason: "exec".into(),
            exit_code,
            message: format!("exec session {} {what}: {}", self.id, self.command),
            session: self.id.clone(),
            ..Default::default()
        }
    }
}

/// Who wants a lifecycle change: a user, or the scheduler for a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A user's request.
    User,
    /// The lease ran out.
    Lease,
    /// Unused for the idle window.
    Idle,
    /// The health check failed.
    Health,
    /// Its node is drained.
    Drain,
}

impl Cause {
    /// The reason word of the events this causes.
    pub fn word(self) -> &'static str {
        match self {
            Cause::User => "manual",
            Cause::Lease => "lease_expired",
            Cause::Idle => "inactivity",
            Cause::Health => "unhealthy",
            Cause::Drain => "drained",
        }
    }

    /// The stop reason it records.
    pub fn stop_reason(self) -> pb::StopReason {
        match self {
            Cause::User => pb::StopReason::Manual,
            Cause::Lease => pb::StopReason::LeaseExpired,
            Cause::Idle => pb::StopReason::Inactivity,
            Cause::Health => pb::StopReason::Unhealthy,
            Cause::Drain => pb::StopReason::Drained,
        }
    }
}

/// A check that the reason for an action still holds, made under the
/// container's lock.
type Precheck = Box<dyn FnOnce(&pb::Container) -> bool + Send>;

/// What a successful start/stop/restart changes beyond the observed state.
fn after_lifecycle(
    c: &mut pb::Container,
    op: Op,
    cause: Cause,
    was_running: bool,
    default_ttl: i64,
) {
    match op {
        Op::Stop => {
            // A container that had already stopped keeps its own reason.
            if was_running || c.stop_reason == pb::StopReason::Unspecified as i32 {
                c.stop_reason = cause.stop_reason() as i32;
            }
            c.lease_expire_time = None;
            c.health = pb::HealthStatus::Unspecified as i32;
            if cause == Cause::Health {
                c.state = pb::ContainerState::Failed as i32;
                c.last_error = "the health check kept failing after an automatic restart; the container is left stopped for inspection (devctl logs, then devctl start)".into();
            }
        }
        _ => {
            if c.state == pb::ContainerState::Running as i32 {
                c.stop_reason = pb::StopReason::Unspecified as i32;
            }
            if cause == Cause::Health {
                c.health_restarts += 1;
            }
            // A user's start renews the lease and the health restart.
            if cause == Cause::User {
                c.health_restarts = 0;
                if op == Op::Start || c.lease_expire_time.is_none() {
                    // Records from before leases existed get the default.
                    let ttl = *c.ttl_seconds.get_or_insert(default_ttl);
                    c.lease_expire_time = lease_from_now(ttl);
                }
            }
        }
    }
}

/// What a container whose command exited right after its start says.
fn exited_at_once(c: &pb::Container) -> String {
    let code = c
        .exit_code
        .map_or_else(|| "unknown".to_string(), |c| c.to_string());
    format!(
        "the command exited right after it started (exit code {code}); see `devctl logs {}`",
        c.name
    )
}

/// Copies what an agent observed into the record.
fn apply_status(c: &mut pb::Container, s: &pb::ContainerStatus) {
    c.state = s.state;
    c.exit_code = s.exit_code;
    c.health = s.health;
    if s.start_time.is_some() {
        c.start_time = s.start_time;
    }
    if !s.runtime_id.is_empty() {
        c.runtime_id = s.runtime_id.clone();
    }
    c.last_error.clear();
    c.update_time = now();
}
