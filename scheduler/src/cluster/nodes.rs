//! The nodes: their listing with reservations and usage, heartbeats (which
//! start a node's inventory sync), state changes recorded as events, and
//! whether a node is ready.

use std::collections::BTreeMap;

use devctl_proto::{pb, validate};

use super::{Cluster, Error, error};
use crate::{events, store::NodeUsage};

impl Cluster {
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
        let n = self
            .shared
            .nodes
            .get(name)
            .ok_or_else(|| error::node_not_found(name))?;
        Ok(self.with_usage(n, &self.store().node_usage()))
    }

    /// `n` with what it holds (`usage`) and its latest usage sample.
    fn with_usage(&self, mut n: pb::Node, usage: &BTreeMap<String, NodeUsage>) -> pb::Node {
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
        self.observe_images(hb);
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
            self.store().feed().node_state(&node, state);
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

    /// Whether `node` is ready (heartbeats arrive).
    pub fn node_ready(&self, node: &str) -> bool {
        self.shared.nodes.is_ready(node)
    }

    /// Whether `node` is ready, once its state is known: a node the
    /// scheduler has not heard from since it started is waited for (until
    /// its first heartbeat, or the end of the grace period).
    pub(super) async fn settles_ready(&self, node: &str) -> bool {
        self.shared.nodes.settled_state(node).await == Some(pb::NodeState::Ready)
    }
}
