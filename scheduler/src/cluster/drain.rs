//! Cordon, uncordon and drain, and starting a container whose node is
//! cordoned (it is placed again, on a node that allows it).

use devctl_proto::container::ContainerExt;
use std::{collections::HashMap, time::SystemTime};

use devctl_proto::pb::{self, agent_command::Command, agent_reply::Result as Reply};
use futures::future::join_all;

use super::{
    Cluster, Error,
    create::create_command,
    error::{self, agent_error},
    lifecycle::{Cause, Lifecycle, after_lifecycle},
    now,
    observe::apply_status,
};
use crate::bus::BusError;
use crate::{
    events::{self, Op},
    placement,
};

impl Cluster {
    /// Removes `c`'s engine container from `node` (done if it is not there).
    pub(super) async fn remove_from(&self, node: &str, c: &pb::Container) -> Result<(), Error> {
        let remove = Command::Remove(pb::RemoveCommand {
            id: c.id.clone(),
            force: true,
        });
        match self.send(node, remove, 0).await? {
            Reply::Removed(_) => Ok(()),
            Reply::Error(e) if e.code == pb::AgentErrorCode::ContainerNotFound as i32 => Ok(()),
            other => Err(agent_error(other, c)),
        }
    }

    /// Cordons (`true`) or uncordons `node`, durably.
    pub async fn set_cordoned(
        &self,
        node: &str,
        cordoned: bool,
        actor: &str,
    ) -> Result<pb::Node, Error> {
        devctl_proto::validate::dns_label("name", node)?;
        let record = self
            .shared
            .nodes
            .set_cordoned(node, cordoned)
            .ok_or_else(|| error::node_not_found(node))?;
        self.store().put_node(record).await?;
        let (ty, what) = if cordoned {
            (pb::EventType::NodeCordoned, "cordoned")
        } else {
            (pb::EventType::NodeUncordoned, "uncordoned")
        };
        tracing::info!(node, actor, "node {what}");
        let mut event = events::node_event(node, ty, "manual");
        event.actor = actor.to_string();
        event.message = format!("node {node} {what} by {actor}");
        let _ = self.emit(event, uuid::Uuid::new_v4().to_string()).await;
        self.node(node)
    }

    /// Cordons `node` and stops every container on it that is meant to
    /// run (reason `drained`).
    pub async fn drain(
        &self,
        node: &str,
        timeout: Option<i32>,
        actor: &str,
    ) -> Result<pb::DrainNodeResponse, Error> {
        let t = self.stop_timeout(timeout)?;
        self.set_cordoned(node, true, actor).await?;
        let names: Vec<String> = self
            .store()
            .names_on_node(node)
            .into_iter()
            .filter(|n| {
                self.store()
                    .container(n)
                    .ok()
                    .flatten()
                    .is_some_and(|c| c.spec().desired_state == pb::DesiredState::Running as i32)
            })
            .collect();
        tracing::info!(node, actor, containers = names.len(), "draining node");
        let stops = names.iter().map(|name| {
            let node = node.to_string();
            let still = move |c: &pb::Container| {
                c.status().node == node
                    && c.spec().desired_state == pb::DesiredState::Running as i32
            };
            self.lifecycle(
                name,
                Lifecycle::Stop,
                t,
                actor,
                Cause::Drain,
                Some(Box::new(still)),
            )
        });
        let mut stopped = Vec::new();
        let mut failed = HashMap::new();
        for (name, result) in names.iter().zip(join_all(stops).await) {
            match result {
                Ok(_) => stopped.push(name.clone()),
                Err(e) => {
                    failed.insert(name.clone(), e.to_string());
                }
            }
        }
        Ok(pb::DrainNodeResponse {
            node: Some(self.node(node)?),
            stopped,
            failed,
        })
    }

    /// Starts `c`, whose node is cordoned, on a node placement chooses:
    /// the container is removed from its old node first (one engine may
    /// serve several nodes, and names are unique per engine), then created
    /// on the new one with the same id and definition. Called with the
    /// container's lock held. `pin`: the node it must go to (its
    /// workspace's, after a move).
    pub(super) async fn replace_and_start(
        &self,
        mut c: pb::Container,
        actor: &str,
        pin: Option<String>,
    ) -> Result<pb::Container, Error> {
        let res = c.spec().resources.unwrap_or_default();
        let request = placement::Request {
            node: pin,
            milli_cpus: res.milli_cpus,
            memory_bytes: res.memory_bytes,
            constraints: c.spec().constraints.clone(),
            strategy: self.shared.settings.strategy,
            memory_threshold_percent: self.shared.settings.memory_threshold_percent,
            cpu_overcommit: self.shared.settings.cpu_overcommit,
            image: c.spec().image.clone(),
            image_required: c.spec().pull_policy() == pb::PullPolicy::Never
                && c.spec().image_recipe.is_none(),
        };
        let _placing = self.shared.placement.lock().await;
        // Its own reservation is on the old node: it does not count there.
        let release = (c.spec().desired_state == pb::DesiredState::Running as i32)
            .then_some((c.status().node.as_str(), res));
        let target = match self.place(&request, release) {
            Ok(n) => n,
            Err(e) => {
                let message = if request.node.is_some() {
                    format!(
                        "container {:?} goes to its workspace's node, and {e}",
                        c.name
                    )
                } else {
                    format!(
                        "node {:?} of container {:?} is cordoned and {e}",
                        c.status().node,
                        c.name
                    )
                };
                return Err(Error::new(error::placement_kind(e), message));
            }
        };
        let _intent = self.shared.intents.begin(&c.id, actor, Op::Create);
        // The image on the target first (its pull policy): a failed pull
        // leaves the container where it is. (Under the placement lock, as
        // the create below: a drain's pulls hold up other placements.)
        {
            let mut moved = c.clone();
            moved.status_mut().node = target.clone();
            self.pull_image(&moved).await?;
        }
        if self.shared.nodes.is_ready(&c.status().node) {
            self.remove_from(&c.status().node, &c).await?;
        } else {
            // A drained node that was shut down: its copy, if it comes
            // back, is no longer the record's and is removed as unknown.
            tracing::warn!(name = %c.name, node = %c.status().node, "re-placing a container whose cordoned node is down; its old copy is removed when the node is back");
        }
        tracing::info!(name = %c.name, from = %c.status().node, to = %target, "re-placing a container on another node");
        // Engine events of both copies are about this container.
        self.shared
            .whereabouts
            .note(&c.id, &c.status().node, &c.name);
        self.shared.whereabouts.note(&c.id, &target, &c.name);
        let old_node = std::mem::replace(&mut c.status_mut().node, target);
        c.status_mut().runtime_id.clear();
        let mut create = create_command(&c);
        create.workspace = self.workspace_attach(&c)?;
        let create = Command::Create(create);
        let result = self.send_raw(&c.status().node, create, 0).await;
        c.update_time = now();
        match result {
            Ok(Reply::Status(status)) => {
                // A user's start, on another node.
                c.spec_mut().desired_state = pb::DesiredState::Running as i32;
                apply_status(&mut c, &status);
                let default_ttl = self.shared.settings.leases.default_seconds();
                after_lifecycle(&mut c, Lifecycle::Start, Cause::User, false, default_ttl);
                self.store().update_container(c.clone()).await?;
                self.shared.activity.touch(&c.name, SystemTime::now());
                Ok(self.decorate(c))
            }
            other => {
                // Refused (anything but ENGINE): nothing was made. Otherwise
                // the outcome is unknown: make sure the target has no copy.
                let clean = matches!(&other, Ok(Reply::Error(e))
                    if e.code != pb::AgentErrorCode::Engine as i32 && e.code != 0)
                    || matches!(&other, Err(BusError::NoResponders(_)));
                let err = match other {
                    Ok(reply) => agent_error(reply, &c),
                    Err(e) => e.into(),
                };
                if !clean && let Err(e) = self.remove_from(&c.status().node, &c).await {
                    tracing::warn!(name = %c.name, node = %c.status().node, error = %e,
                        "could not confirm that a failed re-placement left nothing behind; the reconciliation removes it as unknown");
                }
                // Gone from the old node, not made on the new one: record
                // that, on the old node, so a later start tries again.
                c.status_mut().node = old_node;
                c.status_mut().state = pb::ContainerState::Failed as i32;
                c.status_mut().last_error = format!("re-placement on another node failed: {err}");
                self.store().update_container(c).await?;
                Err(err)
            }
        }
    }
}
