//! What the scheduler does on its own initiative: lease expiry, the
//! inactivity stop, health-check recovery, marking a silent node's
//! containers lost, and periodic reconciliation with removal of unknown
//! containers. Every action runs as a tracked task through the same
//! operations users call (so it is serialized with them per container),
//! re-checks its reason under the container's lock, and records a reason.

use devctl_proto::container::ContainerExt;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use devctl_proto::{
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    validate::InvalidField,
};

use super::{
    Cluster, Error,
    error::{self, not_found},
    lease_from_now,
    lifecycle::{Cause, Lifecycle},
    now,
};
use crate::events;

/// What happens to a container whose lease runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiryAction {
    /// Stop it (the workspace stays; `devctl start` renews the lease).
    #[default]
    Stop,
    /// Remove it.
    Remove,
}

/// The cluster's lease policy.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasePolicy {
    /// TTL of a create that sets none; zero: no lease.
    pub default_ttl: Duration,
    /// Longest TTL a create or an extension may ask for.
    pub max_ttl: Duration,
    /// Whether a create may ask for no lease (`--ttl 0`).
    pub allow_none: bool,
    /// What expiry does.
    pub on_expiry: ExpiryAction,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(8 * 3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            allow_none: false,
            on_expiry: ExpiryAction::Stop,
        }
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl LeasePolicy {
    /// The TTL (seconds, 0: none) of a create asking for `asked`.
    pub fn ttl_for_create(&self, asked: Option<i64>) -> Result<i64, InvalidField> {
        match asked {
            None => Ok(self.default_seconds()),
            Some(0) if self.allow_none => Ok(0),
            Some(0) => Err(InvalidField::new(
                "container.spec.ttl_seconds",
                format!(
                    "0 (no lease) is not allowed in this cluster; ask for a lease of at most {} (e.g. --ttl 8h) and extend it with `devctl extend`",
                    human(self.max_ttl)
                ),
            )),
            Some(t) => self.check("container.spec.ttl_seconds", t),
        }
    }

    /// The default TTL in seconds (0: no lease).
    pub fn default_seconds(&self) -> i64 {
        self.default_ttl.as_secs() as i64
    }

    /// Checks a requested lease length.
    pub fn check(&self, field: &str, ttl: i64) -> Result<i64, InvalidField> {
        if ttl < 1 {
            return Err(InvalidField::new(
                field,
                format!("{ttl} is out of range; ask for at least 1 second (e.g. 2h)"),
            ));
        }
        if ttl as u64 > self.max_ttl.as_secs() {
            return Err(InvalidField::new(
                field,
                format!(
                    "{} is longer than the cluster's maximum lease of {}; ask for at most that",
                    human(Duration::from_secs(ttl as u64)),
                    human(self.max_ttl)
                ),
            ));
        }
        Ok(ttl)
    }
}

/// Marks a container as acted upon by the supervisor until dropped, so one
/// container gets one action at a time.
struct Busy {
    set: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Busy {
    fn claim(set: &Arc<Mutex<HashSet<String>>>, name: &str) -> Option<Self> {
        let fresh = set.lock().expect("busy lock").insert(name.to_string());
        fresh.then(|| Busy {
            set: Arc::clone(set),
            name: name.to_string(),
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set.lock().expect("busy lock").remove(&self.name);
    }
}

const SYSTEM: &str = "system";

/// How long the supervisor leaves a container alone after an action on it
/// failed (a node refusing, a timeout) before it tries again.
const RETRY_BACKOFF: Duration = Duration::from_secs(5);

impl Cluster {
    /// Renews `name`'s lease: it now runs out `ttl` seconds from now.
    pub async fn extend_lease(
        &self,
        name: &str,
        ttl: i64,
        actor: &str,
    ) -> Result<pb::Container, Error> {
        devctl_proto::validate::dns_label("name", name)?;
        let ttl = self.shared.settings.leases.check("ttl_seconds", ttl)?;
        let (this, name, actor) = (self.clone(), name.to_string(), actor.to_string());
        self.detached(async move {
            let _lock = this.shared.locks.lock(&name).await;
            let c = this.record(&name)?;
            if c.spec().desired_state != pb::DesiredState::Running as i32 {
                return Err(error::wrong_state(
                    &name,
                    format!(
                        "container {name:?} is stopped; `devctl start {name}` starts it with a new lease"
                    ),
                ));
            }
            let expiry = lease_from_now(ttl);
            let updated = this
                .store()
                .modify_container(&name, move |c| {
                    c.status_mut().lease_expire_time = expiry;
                    c.update_time = now();
                    true
                })
                .await?
                .ok_or_else(|| not_found(&name))?;
            tracing::info!(name, actor, ttl, "lease extended");
            let event = pb::Event {
                time: now(),
                r#type: pb::EventType::LeaseExtended as i32,
                container: updated.name.clone(),
                container_id: updated.id.clone(),
                node: updated.status().node.clone(),
                actor: actor.clone(),
                reason: "manual".into(),
                message: format!(
                    "lease of {name} extended by {actor}: {} from now",
                    human(Duration::from_secs(ttl as u64))
                ),
                ..Default::default()
            };
            let _ = this.emit(event, uuid::Uuid::new_v4().to_string()).await;
            Ok(this.decorate(updated))
        })
        .await
    }

    /// One round of the supervisor (called about twice a second): acts on
    /// expired leases and idle containers.
    pub fn supervise(&self) {
        let now = SystemTime::now();
        // A down node's containers wait for it (or for the user).
        let ready = |node: &str| self.shared.nodes.is_ready(node);
        for (name, node) in self.store().leases_due(now) {
            if ready(&node) {
                self.act(&name, |this, name| async move { this.expire(&name).await });
            }
        }
        // Unhealthy ones a health event could not act on (busy, failed).
        for (name, node) in self.store().unhealthy_names() {
            if ready(&node) {
                self.heal(&name);
            }
        }
        let activity = &self.shared.activity;
        self.store().for_each_running(|name, node| {
            if !ready(node) {
                return;
            }
            let cpu = self.shared.stats.container_cpu(name);
            if activity.is_due(activity.observe(name, cpu, now)) {
                self.act(
                    name,
                    |this, name| async move { this.stop_idle(&name).await },
                );
            }
        });
    }

    /// Runs `action` on `name` as a tracked task, unless one runs already.
    /// Failures are logged; the next round tries again.
    fn act<F, Fut>(&self, name: &str, action: F)
    where
        F: FnOnce(Cluster, String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let backoff = Arc::clone(&self.shared.retry_after);
        let waiting = backoff
            .lock()
            .expect("backoff lock")
            .get(name)
            .is_some_and(|t| *t > tokio::time::Instant::now());
        if waiting {
            return;
        }
        let Some(busy) = Busy::claim(&self.shared.busy, name) else {
            return;
        };
        let (this, name) = (self.clone(), name.to_string());
        self.shared.tasks.spawn(async move {
            let result = action(this, name.clone()).await;
            let mut backoff = backoff.lock().expect("backoff lock");
            match result {
                Ok(()) => {
                    backoff.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(name, error = %e, retry_in = ?RETRY_BACKOFF, "supervisor action failed; retrying later");
                    backoff.insert(name, tokio::time::Instant::now() + RETRY_BACKOFF);
                }
            }
            drop(busy);
        });
    }

    async fn expire(&self, name: &str) -> Result<(), Error> {
        let expired = |c: &pb::Container| {
            c.status()
                .lease_expire_time
                .and_then(|t| SystemTime::try_from(t).ok())
                .is_some_and(|t| t <= SystemTime::now())
        };
        let timeout = self.shared.settings.default_stop_timeout;
        match self.shared.settings.leases.on_expiry {
            ExpiryAction::Stop => {
                tracing::info!(name, "lease expired: stopping");
                self.lifecycle(
                    name,
                    Lifecycle::Stop,
                    timeout,
                    SYSTEM,
                    Cause::Lease,
                    Some(Box::new(expired)),
                )
                .await?;
            }
            ExpiryAction::Remove => {
                tracing::info!(name, "lease expired: removing");
                self.delete_now(name, true, SYSTEM, Cause::Lease, Some(Box::new(expired)))
                    .await?;
            }
        }
        Ok(())
    }

    async fn stop_idle(&self, name: &str) -> Result<(), Error> {
        let this = self.clone();
        let still_idle = move |c: &pb::Container| {
            let activity = &this.shared.activity;
            let cpu = this.shared.stats.container_cpu(&c.name);
            c.status().state == pb::ContainerState::Running as i32
                && activity.is_due(activity.observe(&c.name, cpu, SystemTime::now()))
        };
        tracing::info!(name, "idle for the whole window: stopping");
        let timeout = self.shared.settings.default_stop_timeout;
        self.lifecycle(
            name,
            Lifecycle::Stop,
            timeout,
            SYSTEM,
            Cause::Idle,
            Some(Box::new(still_idle)),
        )
        .await?;
        Ok(())
    }

    /// Reacts to `name` (engine id `id`) turning unhealthy: the first time
    /// since a user started it, restart it; after that, stop it and mark
    /// it failed.
    pub(super) fn heal(&self, name: &str) {
        self.act(name, move |this, name| async move {
            let Some(c) = this.store().container(&name)? else {
                return Ok(());
            };
            let (id, restarts) = (c.id.clone(), c.status().health_restarts);
            let still = move |c: &pb::Container| {
                c.id == id
                    && c.status().health == pb::HealthStatus::Unhealthy as i32
                    && c.status().state == pb::ContainerState::Running as i32
                    && c.status().health_restarts == restarts
            };
            let timeout = this.shared.settings.default_stop_timeout;
            if restarts == 0 {
                tracing::warn!(name, "health check failing: restarting once");
                this.lifecycle(
                    &name,
                    Lifecycle::Restart,
                    timeout,
                    SYSTEM,
                    Cause::Health,
                    Some(Box::new(still)),
                )
                .await?;
            } else {
                tracing::warn!(
                    name,
                    "health check failing again after a restart: stopping, marked failed"
                );
                this.lifecycle(
                    &name,
                    Lifecycle::Stop,
                    timeout,
                    SYSTEM,
                    Cause::Health,
                    Some(Box::new(still)),
                )
                .await?;
            }
            Ok(())
        });
    }

    /// `node` went down: its running and pending containers become `lost`
    /// (their fate is unknown until the node is back).
    pub(super) async fn mark_lost(&self, node: &str) {
        for name in self.store().names_on_node(node) {
            let _lock = self.shared.locks.lock(&name).await;
            // Back already: its inventory sync decides.
            if self.shared.nodes.is_ready(node) {
                return;
            }
            let node_name = node.to_string();
            let marked = self
                .store()
                .modify_container(&name, move |c| {
                    let live = c.status().state == pb::ContainerState::Running as i32
                        || c.status().state == pb::ContainerState::Pending as i32;
                    if c.status().node != node_name || !live {
                        return false;
                    }
                    c.status_mut().state = pb::ContainerState::Lost as i32;
                    c.status_mut().last_error = format!(
                        "node {node_name:?} is down; the container's state is unknown until it is back"
                    );
                    c.update_time = now();
                    true
                })
                .await;
            match marked {
                Ok(Some(c)) if c.status().state == pb::ContainerState::Lost as i32 => {
                    tracing::warn!(node, name, "container lost with its node");
                    let event = pb::Event {
                        time: now(),
                        r#type: pb::EventType::ContainerLost as i32,
                        container: c.name.clone(),
                        container_id: c.id.clone(),
                        node: node.to_string(),
                        actor: SYSTEM.into(),
                        reason: "node_lost".into(),
                        message: format!("container {name} lost: node {node} is down"),
                        ..Default::default()
                    };
                    let _ = self.emit(event, format!("lost-{}-{}", c.id, node)).await;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(node, name, error = %e, "could not mark container lost"),
            }
        }
    }

    /// One reconciliation round: every ready node's inventory is compared
    /// with the records (syncs already running are not repeated).
    pub async fn reconcile(&self) {
        for node in self.shared.nodes.ready_nodes() {
            if let Err(e) = self.sync_inventory(&node).await {
                tracing::warn!(node, error = %e, "reconciliation of node failed; retrying next round");
            }
        }
    }

    /// Devctl containers on `node` that no record accounts for: reported
    /// when first seen, removed once they stayed unknown for the grace
    /// period.
    pub(super) async fn handle_orphans(&self, node: &str, unknown: Vec<pb::EngineContainer>) {
        let grace = self.shared.settings.orphan_grace;
        let now = tokio::time::Instant::now();
        let mut due = Vec::new();
        {
            let mut orphans = self.shared.orphans.lock().expect("orphans lock");
            let seen: HashSet<(String, String)> = unknown
                .iter()
                .map(|s| (node.to_string(), s.runtime_id.clone()))
                .collect();
            // Forget the ones that went away.
            orphans.retain(|k, _| k.0 != node || seen.contains(k));
            for s in &unknown {
                let key = (node.to_string(), s.runtime_id.clone());
                let first = *orphans.entry(key).or_insert_with(|| {
                    tracing::warn!(node, id = %s.id, name = %s.name, runtime_id = %s.runtime_id,
                        grace = %human(grace), "devctl container unknown to the scheduler found on node; removing it after the grace period");
                    now
                });
                if now.duration_since(first) >= grace {
                    due.push(s.clone());
                }
            }
        }
        for s in due {
            // A record may have appeared since the inventory was taken (a
            // create in flight holds the name's lock: wait for it). A record
            // of the same id on another node (moved off a cordoned node)
            // does not claim this copy. Unsure: leave it.
            let _lock = match self.store().container_name_by_id(&s.id) {
                Ok(Some(name)) => {
                    let lock = self.shared.locks.lock(&name).await;
                    match self.store().container(&name) {
                        Ok(Some(c)) if c.id == s.id && c.status().node == node => continue,
                        Ok(_) => Some(lock),
                        Err(_) => continue,
                    }
                }
                Ok(None) => None,
                Err(_) => continue,
            };
            let command = Command::Remove(pb::RemoveCommand {
                id: s.id.clone(),
                force: true,
            });
            match self.send_raw(node, command, 0).await {
                Ok(Reply::Removed(_)) => {
                    self.shared
                        .orphans
                        .lock()
                        .expect("orphans lock")
                        .remove(&(node.to_string(), s.runtime_id.clone()));
                    tracing::warn!(node, id = %s.id, name = %s.name, "unknown devctl container removed");
                    let mut event = events::node_event(
                        node,
                        pb::EventType::ContainerRemoved,
                        "unknown_container",
                    );
                    // The name is the node's claim: one that is not a
                    // name, or is another container's (not this copy's),
                    // does not put the event in a container's history.
                    let anothers = self
                        .store()
                        .container(&s.name)
                        .ok()
                        .flatten()
                        .is_some_and(|c| c.id != s.id);
                    if !anothers && devctl_proto::validate::dns_label("name", &s.name).is_ok() {
                        event.container = s.name.clone();
                    }
                    event.container_id = s.id.clone();
                    event.message = format!(
                        "container {} on node {node} was unknown to the scheduler for {} and was removed",
                        s.name,
                        human(grace)
                    );
                    let _ = self.emit(event, format!("orphan-{}", s.runtime_id)).await;
                }
                other => {
                    tracing::warn!(node, id = %s.id, reply = ?other, "could not remove unknown container; retrying next round");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_requests_are_checked_against_the_policy() {
        let p = LeasePolicy {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7200),
            allow_none: false,
            on_expiry: ExpiryAction::Stop,
        };
        assert_eq!(p.ttl_for_create(None).unwrap(), 3600);
        assert_eq!(p.ttl_for_create(Some(60)).unwrap(), 60);
        let e = p.ttl_for_create(Some(0)).unwrap_err();
        assert_eq!(e.field, "container.spec.ttl_seconds");
        assert!(e.to_string().contains("not allowed"), "{e}");
        let e = p.ttl_for_create(Some(7201)).unwrap_err();
        assert!(e.to_string().contains("maximum lease of 2h"), "{e}");
        assert!(p.check("ttl_seconds", -1).is_err());
        let open = LeasePolicy {
            allow_none: true,
            ..p
        };
        assert_eq!(open.ttl_for_create(Some(0)).unwrap(), 0);
    }
}
