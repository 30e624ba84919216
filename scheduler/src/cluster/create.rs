//! Creating a container: the spec is validated, the name's lock taken, the
//! quota checked and a node chosen under the placement lock, the record
//! committed (`PENDING`), then the agent asked; a failed create leaves
//! neither a record nor an engine container behind.

use devctl_proto::container::ContainerExt;
use std::time::SystemTime;

use devctl_proto::pb::{self, agent_command::Command, agent_reply::Result as Reply};

use super::{
    Cluster, CreateOptions, Error,
    error::{self, agent_error},
    lease_from_now, now,
    observe::apply_status,
    validate_spec,
    workspaces::WorkspacePlan,
};
use crate::{bus::BusError, events::Op, placement};

impl Cluster {
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

    /// Decides where `request` runs (the chosen node's name). `release`
    /// is a reservation to leave out (a container moving off its node).
    pub(super) fn place(
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
            for v in views.iter_mut() {
                v.has_image = self.node_has_image(v.name, &request.image);
            }
            placement::place(views, request).map(|n| n.name.to_string())
        })
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
            return Err(error::name_taken(spec.name));
        }
        let settings = &self.shared.settings;
        let name = spec.name;
        let mut spec = spec.spec.unwrap_or_default();
        let admin = options.role == Some(devctl_proto::identity::Role::Admin);
        let plan = self.plan_workspace(&name, owner, admin, &mut spec)?;
        let ttl = settings.leases.ttl_for_create(spec.ttl_seconds)?;
        let resources = spec.resources.get_or_insert_default();
        if resources.milli_cpus == 0 {
            resources.milli_cpus = settings.default_milli_cpus;
        }
        if resources.memory_bytes == 0 {
            resources.memory_bytes = settings.default_memory_bytes;
        }
        let resources = *resources;
        spec.ttl_seconds = Some(ttl);
        spec.set_desired_state(pb::DesiredState::Running);
        let request = placement::Request {
            node: plan
                .pin()
                .map(str::to_string)
                .or_else(|| (!spec.node.is_empty()).then(|| spec.node.clone())),
            milli_cpus: resources.milli_cpus,
            memory_bytes: resources.memory_bytes,
            constraints: spec.constraints.clone(),
            strategy: options.strategy.unwrap_or(settings.strategy),
            memory_threshold_percent: settings.memory_threshold_percent,
            cpu_overcommit: settings.cpu_overcommit,
            image: spec.image.clone(),
            // A template's image is built on the chosen node, never pulled.
            image_required: spec.pull_policy() == pb::PullPolicy::Never
                && spec.image_recipe.is_none(),
        };
        let mut record = pb::Container {
            name,
            id: uuid::Uuid::new_v4().to_string(),
            owner: owner.to_string(),
            create_time: now(),
            update_time: now(),
            spec: Some(spec),
            status: Some(pb::ContainerStatus {
                state: pb::ContainerState::Pending as i32,
                lease_expire_time: lease_from_now(ttl),
                ..Default::default()
            }),
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
                settings.quotas.check(
                    owner,
                    role,
                    held,
                    resources.milli_cpus,
                    resources.memory_bytes,
                )?;
                if matches!(plan, WorkspacePlan::New(_)) {
                    let w = self.store().workspace_usage(owner)?;
                    settings
                        .quotas
                        .check_workspace(owner, role, w.count, w.size_bytes)?;
                }
            }
            record.status_mut().node = match self.place(&request, None) {
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
                Err(e) => return Err(e.into()),
            };
            if options.dry_run {
                return Ok(record);
            }
            self.claim_workspace(&plan, &record).await?;
            if let Err(e) = self
                .store()
                .insert_container(record.clone(), options.request_id.clone())
                .await
            {
                self.settle_workspace(&plan, &record, false).await?;
                return Err(e.into());
            }
            break;
        }
        tracing::info!(name = %record.name, id = %record.id, node = %record.status().node, image = %record.spec().image, owner, "creating container");
        let _intent = self.shared.intents.begin(&record.id, owner, Op::Create);
        // A template's image, built on the chosen node when it lacks it.
        if let Err(e) = self.ensure_image(&record.status().node, &record).await {
            self.forget_record(&record).await?;
            return Err(e);
        }
        // The image first (ContainerSpec.pull_policy): a failed pull
        // created nothing on the node.
        if let Err(e) = self.pull_image(&record).await {
            self.forget_record(&record).await?;
            // Forgotten: its workspace claim is released.
            self.settle_workspace(&plan, &record, false).await?;
            return Err(e);
        }

        let mut command = create_command(&record);
        command.workspace = self.workspace_attach(&record)?;
        let command = Command::Create(command);
        let placed = record.clone();
        let outcome = self.create_on_node(record, command).await;
        match &outcome {
            Ok(c) => self.settle_workspace(&plan, c, true).await?,
            // A record kept as failed keeps its workspace claimed; a
            // forgotten one releases it.
            Err(e) => {
                if matches!(e.kind(), super::ErrorKind::WorkspaceMissing { .. }) {
                    self.mark_workspace_missing(&placed.spec().workspace)
                        .await?;
                }
                let kept = self.store().container(&placed.name)?;
                if kept.is_none_or(|c| c.id != placed.id) {
                    self.settle_workspace(&plan, &placed, false).await?;
                }
            }
        }
        outcome
    }

    /// Sends the create of `record` (recorded PENDING) to its node and
    /// records the outcome.
    async fn create_on_node(
        &self,
        mut record: pb::Container,
        command: Command,
    ) -> Result<pb::Container, Error> {
        match self.send_raw(&record.status().node, command, 0).await {
            Ok(Reply::Status(status)) => {
                apply_status(&mut record, &status);
                // The agent answers once the container stayed up briefly: a
                // command that exits at once comes back stopped.
                if record.status().state != pb::ContainerState::Running as i32 {
                    record.status_mut().last_error = exited_at_once(&record);
                    tracing::warn!(name = %record.name, node = %record.status().node, exit_code = ?record.status().exit_code, "container exited right after it started");
                } else {
                    tracing::info!(name = %record.name, node = %record.status().node, "container running");
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
        let gone = match self.send_raw(&record.status().node, cleanup, 0).await {
            Ok(Reply::Removed(_)) => true,
            Ok(Reply::Error(e)) => e.code == pb::AgentErrorCode::ContainerNotFound as i32,
            _ => false,
        };
        if gone {
            self.forget_record(&record).await?;
            return Err(err);
        }
        record.status_mut().state = pb::ContainerState::Failed as i32;
        record.status_mut().last_error = format!("create: {err}");
        record.update_time = now();
        self.store().update_container(record.clone()).await?;
        Err(err.annotate(&format!(
            "the container is recorded as failed: remove it with `devctl rm --force {}`",
            record.name
        )))
    }
}

/// The agent's command to create and start `c`: its identity and spec.
pub(super) fn create_command(c: &pb::Container) -> pb::CreateCommand {
    pb::CreateCommand {
        id: c.id.clone(),
        name: c.name.clone(),
        owner: c.owner.clone(),
        spec: c.spec.clone(),
        // Filled in by the caller from the workspace's record.
        workspace: None,
    }
}

/// What a container whose command exited right after its start says.
fn exited_at_once(c: &pb::Container) -> String {
    let code = c
        .status()
        .exit_code
        .map_or_else(|| "unknown".to_string(), |c| c.to_string());
    format!(
        "the command exited right after it started (exit code {code}); see `devctl logs {}`",
        c.name
    )
}
