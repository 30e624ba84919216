//! What nodes report: usage samples, engine events (a change devctl did
//! not request is followed in the record) and inventories (records brought
//! in line with what the node has), and how an agent's status is copied
//! into a record.

use devctl_proto::container::ContainerExt;
use std::{collections::HashMap, time::SystemTime};

use devctl_proto::pb::{self, agent_command::Command, agent_reply::Result as Reply};

use super::{
    Cluster, Error,
    error::{self, agent_error},
    now,
};
use crate::{
    events::{self, StateChange},
    placement,
};

impl Cluster {
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
            .filter(|c| c.id == id && c.status().node == node)
    }

    /// The name of container `id` if the scheduler placed it on `node`:
    /// its record says so, or it was there lately (removed since, or
    /// moving).
    fn placed_on(&self, node: &str, id: &str) -> Option<String> {
        self.recorded_on(node, id)
            .map(|c| c.name)
            .or_else(|| self.shared.whereabouts.name_on(id, node))
    }

    /// The latest usage samples.
    pub fn stats(&self) -> &crate::stats::StatsCache {
        &self.shared.stats
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
                .map_err(|e| error::history_unavailable("event not recorded", e))?;
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
            .map_err(|e| error::history_unavailable("event not recorded", e))
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
        if c.id != ev.id || c.status().node != ev.node {
            return Ok(()); // another container of the same name by now
        }
        let before = c.clone();
        let inspect = Command::Inspect(pb::InspectCommand { id: c.id.clone() });
        match self.send_raw(&c.status().node, inspect, 0).await {
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
        self.note_started(before.status().state, &c);
        tracing::info!(name, state = ?c.status().state(), action = %ev.action, "container changed outside devctl");
        self.store().update_container(c).await?;
        Ok(())
    }

    /// A container seen running again without a devctl start (a start on
    /// its engine, a node back) opens a fresh idle window: its use while
    /// devctl could not see it is unknown.
    fn note_started(&self, state_before: i32, after: &pb::Container) {
        let running = pb::ContainerState::Running as i32;
        if after.status().state == running && state_before != running {
            self.shared.activity.touch(&after.name, SystemTime::now());
        }
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
        self.sync_workspaces(node, &inventory.workspaces, asked_at)
            .await?;
        let mut on_node: HashMap<String, pb::EngineContainer> = inventory
            .containers
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        for name in self.store().names_on_node(node) {
            // A create in progress holds the name's lock, for as long as
            // its image takes to pull: skip it rather than wait (it records
            // its own outcome; the next sync sees it).
            if let Some(id) = self.being_created(&name) {
                on_node.remove(&id);
                continue;
            }
            // Re-read under the lock: an operation may have finished since.
            let _lock = self.shared.locks.lock(&name).await;
            let Some(mut c) = self.store().container(&name)? else {
                continue;
            };
            if c.status().node != node || c.spec().desired_state == pb::DesiredState::Removed as i32
            {
                // Removed meanwhile: the next sync carries it out.
                on_node.remove(&c.id);
                continue;
            }
            let lost = c.status().state == pb::ContainerState::Lost as i32;
            let state_before = c.status().state;
            // Whatever changed after the inventory was taken is newer than
            // it, except a `lost` mark: the node answered, so it is back.
            let changed_since_ask = c
                .update_time
                .and_then(|t| SystemTime::try_from(t).ok())
                .is_none_or(|t| t >= asked_at);
            let was_pending = c.status().state == pb::ContainerState::Pending as i32;
            let status = on_node.remove(&c.id);
            // A `lost` mark made after the ask is newer than the inventory
            // unless the node is back (then the mark is stale).
            if changed_since_ask && (!lost || !self.shared.nodes.is_ready(node)) {
                continue;
            }
            match status {
                Some(status) => {
                    let seen = |c: &pb::Container| {
                        let s = c.status();
                        (s.state, s.exit_code, s.runtime_id.clone(), s.health)
                    };
                    let before = seen(&c);
                    apply_status(&mut c, &status);
                    if before == seen(&c) {
                        continue;
                    }
                    if was_pending {
                        tracing::info!(node, name = %c.name, "adopted a container whose create was interrupted");
                    } else if lost {
                        if c.status().state != pb::ContainerState::Running as i32 {
                            c.status_mut().stop_reason = pb::StopReason::NodeLost as i32;
                        }
                        tracing::info!(node, name = %c.name, state = ?c.status().state(), "lost container found again on its node");
                    } else {
                        tracing::info!(node, name = %c.name, state = ?c.status().state(), "observed state updated from node inventory");
                    }
                }
                None if c.status().state == pb::ContainerState::Failed as i32 => {
                    continue;
                }
                None => {
                    c.status_mut().state = pb::ContainerState::Failed as i32;
                    c.status_mut().last_error = if was_pending {
                        "the create was interrupted by a scheduler restart and never reached the node; remove the container and create it again".into()
                    } else if lost {
                        c.status_mut().stop_reason = pb::StopReason::NodeLost as i32;
                        format!(
                            "node {node:?} was lost and the container is gone from it; remove it, or start it to create it again"
                        )
                    } else {
                        format!(
                            "the container is missing on node {node:?} (removed outside devctl?)"
                        )
                    };
                    tracing::warn!(node, name = %c.name, reason = %c.status().last_error, "recorded container not on its node");
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

/// Copies what an agent observed into the record.
pub(super) fn apply_status(c: &mut pb::Container, seen: &pb::EngineContainer) {
    let status = c.status_mut();
    status.state = seen.state;
    status.exit_code = seen.exit_code;
    status.health = seen.health;
    if seen.start_time.is_some() {
        status.start_time = seen.start_time;
    }
    if !seen.runtime_id.is_empty() {
        status.runtime_id = seen.runtime_id.clone();
    }
    status.last_error.clear();
    c.update_time = now();
}
