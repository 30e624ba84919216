//! Removing a container: from its node and the records at once when the
//! node is ready, or recorded as pending while the node is down and carried
//! out at the node's next inventory sync.

use devctl_proto::container::ContainerExt;
use devctl_proto::pb::{self, agent_command::Command, agent_reply::Result as Reply};

use super::{
    Cluster, Error,
    error::{self, agent_error},
    lifecycle::{Cause, Precheck},
    now,
};
use crate::events::Op;

impl Cluster {
    /// Removes a container from its node and from the cluster. Its
    /// workspace is kept, unless `purge` (then it is deleted too).
    pub async fn delete(
        &self,
        name: &str,
        force: bool,
        purge: bool,
        actor: &str,
    ) -> Result<pb::Container, Error> {
        let (this, name, actor) = (self.clone(), name.to_string(), actor.to_string());
        self.detached(async move {
            if purge {
                return this.purge_now(&name, force, &actor).await;
            }
            this.delete_now(&name, force, &actor, Cause::User, None)
                .await
        })
        .await
    }

    /// Removes a container and deletes its workspace. Refused before
    /// anything is removed when either cannot be deleted now.
    async fn purge_now(
        &self,
        name: &str,
        force: bool,
        actor: &str,
    ) -> Result<pb::Container, Error> {
        let c = self.record(name)?;
        let ws = c.spec().workspace.clone();
        if !ws.is_empty()
            && let Some(w) = self.store().workspace(&ws)?
            && w.state() != pb::WorkspaceState::Missing
            && !self.settles_ready(&w.node).await
        {
            return Err(error::node_not_ready(
                &w.node,
                format!(
                    "node {:?} of workspace {ws:?} is down and its data can only be deleted there; retry when it is back, or remove the container without --purge",
                    w.node
                ),
            ));
        }
        let c = self
            .delete_now(name, force, actor, Cause::User, None)
            .await?;
        if c.spec().desired_state == pb::DesiredState::Removed as i32 || ws.is_empty() {
            return Ok(c);
        }
        let _lock = self
            .shared
            .locks
            .lock(&super::workspaces::workspace_lock(&ws))
            .await;
        if self.store().workspace(&ws)?.is_some() {
            self.delete_workspace_now(&ws, Some(name), actor).await?;
        }
        Ok(c)
    }

    pub(super) async fn delete_now(
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
        if c.spec().desired_state == pb::DesiredState::Removed as i32 {
            // Already recorded; the node removes it when it reports.
            return Ok(c);
        }
        if !force && c.status().state == pb::ContainerState::Running as i32 {
            return Err(error::wrong_state(
                name,
                format!(
                    "container {name:?} is running; stop it first (devctl stop {name}) or remove it with --force"
                ),
            ));
        }
        if !self.settles_ready(&c.status().node).await {
            if !force {
                return Err(error::node_not_ready(
                    &c.status().node,
                    format!(
                        "node {:?} of container {name:?} is down; retry when it is back, or use --force to remove it from the node as soon as the node returns",
                        c.status().node
                    ),
                ));
            }
            return self.record_removal(c, actor, cause).await;
        }
        self.remove_on_node(&c, force).await?;
        self.forget_record(&c).await?;
        self.release_workspace(&c).await?;
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
        match self.send(&c.status().node, command, 0).await? {
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
        c.spec_mut().desired_state = pb::DesiredState::Removed as i32;
        // Nothing left to stop, restart or expire meanwhile.
        c.status_mut().lease_expire_time = None;
        c.status_mut().last_error = removal_pending_message(&c);
        c.update_time = now();
        self.store().update_container(c.clone()).await?;
        self.shared.activity.forget(&c.name);
        tracing::warn!(name = %c.name, node = %c.status().node, actor, reason = cause.word(), "node is down: removal recorded, carried out when the node returns");
        let event = pb::Event {
            time: now(),
            r#type: pb::EventType::ContainerRemovalPending as i32,
            container: c.name.clone(),
            container_id: c.id.clone(),
            node: c.status().node.clone(),
            actor: actor.to_string(),
            reason: "removal_pending".into(),
            message: c.status().last_error.clone(),
            ..Default::default()
        };
        let _ = self.emit(event, format!("removal-pending-{}", c.id)).await;
        Ok(self.decorate(c))
    }

    /// Carries out the removals recorded while `node` was down (at its
    /// inventory sync). A removal that fails stays recorded and is retried
    /// at the next sync.
    pub(super) async fn carry_out_removals(&self, node: &str) -> Result<(), Error> {
        for name in self.store().names_on_node(node) {
            // Being created (perhaps pulling for minutes): not removed.
            if self.being_created(&name).is_some() {
                continue;
            }
            let _lock = self.shared.locks.lock(&name).await;
            let Some(c) = self.store().container(&name)? else {
                continue;
            };
            if c.status().node != node || c.spec().desired_state != pb::DesiredState::Removed as i32
            {
                continue;
            }
            self.remove_on_node(&c, true).await?;
            self.forget_record(&c).await?;
            self.release_workspace(&c).await?;
            tracing::info!(name, node, "recorded removal carried out: the node is back");
        }
        Ok(())
    }

    /// Deletes `c`'s record and its samples; engine events about it that
    /// are still on their way are accepted for a while.
    pub(super) async fn forget_record(&self, c: &pb::Container) -> Result<(), Error> {
        self.shared
            .whereabouts
            .note(&c.id, &c.status().node, &c.name);
        self.store().delete_container(&c.name).await?;
        self.shared.stats.forget(&c.id);
        Ok(())
    }
}

/// What a container awaiting removal says about it.
pub(super) fn removal_pending_message(c: &pb::Container) -> String {
    format!(
        "node {} is down; the container will be removed when it returns",
        c.status().node
    )
}
