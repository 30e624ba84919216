//! The node registry: what the scheduler knows of each node. Capacity and
//! labels are persisted (they change rarely); liveness (last heartbeat) is
//! kept in memory, so a restarted scheduler sees every node as down until
//! its next heartbeat, a second later.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use devctl_proto::pb;

/// What a heartbeat changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The node record to persist, when its durable fields changed (first
    /// heartbeat, new labels, capacity or versions).
    pub persist: Option<pb::Node>,
    /// This agent process's inventory has not been synced by this
    /// scheduler yet, and no sync is running: start one, then report with
    /// [`Registry::sync_done`].
    pub needs_sync: bool,
    /// First heartbeat of a node this cluster never saw before.
    pub joined: bool,
}

#[derive(Debug)]
struct Entry {
    node: pb::Node,
    last_seen: Option<Instant>,
    boot_id: String,
    leaving: bool,
    /// The boot id whose inventory was synced.
    synced_boot: String,
    syncing: bool,
    /// The state last reported as an event (`None`: nothing reported yet).
    reported: Option<pb::NodeState>,
}

/// Nodes by name. A cheap clone handle is not needed: the registry lives in
/// the scheduler's shared state.
#[derive(Debug)]
pub struct Registry {
    // std lock: held only for map lookups, never across an await.
    entries: RwLock<HashMap<String, Entry>>,
    timeout: Duration,
}

impl Registry {
    /// A registry holding the persisted `nodes` (all down), where a node is
    /// down once `timeout` passes without a heartbeat.
    pub fn new(nodes: Vec<pb::Node>, timeout: Duration) -> Self {
        let entries = nodes
            .into_iter()
            .map(|node| {
                (
                    node.name.clone(),
                    Entry {
                        node,
                        last_seen: None,
                        boot_id: String::new(),
                        leaving: false,
                        synced_boot: String::new(),
                        syncing: false,
                        // Known nodes start down, silently.
                        reported: Some(pb::NodeState::Down),
                    },
                )
            })
            .collect();
        Self {
            entries: RwLock::new(entries),
            timeout,
        }
    }

    /// Records a heartbeat.
    pub fn observe(&self, hb: &pb::Heartbeat) -> Observed {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        let now = Instant::now();
        let entry = entries.entry(hb.node.clone()).or_insert_with(|| Entry {
            node: pb::Node {
                name: hb.node.clone(),
                create_time: Some(SystemTime::now().into()),
                ..Default::default()
            },
            last_seen: None,
            boot_id: String::new(),
            leaving: false,
            synced_boot: String::new(),
            syncing: false,
            reported: None,
        });
        let durable = |n: &pb::Node| {
            (
                n.labels.clone(),
                n.cpus,
                n.memory_bytes,
                n.docker_version.clone(),
                n.agent_version.clone(),
                n.platform.clone(),
            )
        };
        let before = durable(&entry.node);
        let first = entry.node.last_seen.is_none() && entry.last_seen.is_none();
        // Back after silence: what runs there may have changed meanwhile
        // (its containers were marked lost), so its inventory is read again.
        if entry.last_seen.is_some() && self.state(entry) == pb::NodeState::Down {
            entry.synced_boot.clear();
        }
        entry.node.labels = hb.labels.clone();
        entry.node.cpus = hb.cpus;
        entry.node.memory_bytes = hb.memory_bytes;
        entry.node.docker_version = hb.docker_version.clone();
        entry.node.agent_version = hb.agent_version.clone();
        entry.node.platform = hb.platform.clone();
        entry.node.last_seen = hb.time.or_else(|| Some(SystemTime::now().into()));
        entry.node.open_streams = hb.open_streams;
        let changed = first || before != durable(&entry.node);
        let needs_sync = !hb.leaving && !entry.syncing && entry.synced_boot != hb.boot_id;
        entry.syncing |= needs_sync;
        entry.boot_id = hb.boot_id.clone();
        entry.leaving = hb.leaving;
        entry.last_seen = Some(now);
        Observed {
            persist: changed.then(|| entry.node.clone()),
            needs_sync,
            joined: first && entry.reported.is_none(),
        }
    }

    /// Nodes whose state changed since the last call, with the new state
    /// and why (`"heartbeat"`, `"agent_left"`, `"heartbeat_timeout"`).
    pub fn transitions(&self) -> Vec<(String, pb::NodeState, &'static str)> {
        self.transitions_of(None)
    }

    /// As [`Registry::transitions`], for one node only (a direct lookup),
    /// or all with `None`.
    pub fn transitions_of(&self, only: Option<&str>) -> Vec<(String, pb::NodeState, &'static str)> {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        let mut out = Vec::new();
        let mut check = |name: &str, e: &mut Entry| {
            let state = self.state(e);
            if e.reported == Some(state) {
                return;
            }
            e.reported = Some(state);
            let reason = match state {
                pb::NodeState::Ready => "heartbeat",
                _ if e.leaving => "agent_left",
                _ => "heartbeat_timeout",
            };
            out.push((name.to_string(), state, reason));
        };
        match only {
            Some(name) => {
                if let Some(e) = entries.get_mut(name) {
                    check(name, e);
                }
            }
            None => entries.iter_mut().for_each(|(name, e)| check(name, e)),
        }
        out.sort();
        out
    }

    /// Forgets that `node`'s current state was reported (its event could
    /// not be recorded), so the next [`Registry::transitions`] reports it
    /// again.
    pub fn unreport(&self, node: &str) {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        if let Some(e) = entries.get_mut(node) {
            e.reported = None;
        }
    }

    /// Cordons or uncordons `node`; returns its record to persist, or
    /// `None` if the node is unknown.
    pub fn set_cordoned(&self, node: &str, cordoned: bool) -> Option<pb::Node> {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        let e = entries.get_mut(node)?;
        e.node.cordoned = cordoned;
        Some(pb::Node {
            state: pb::NodeState::Unspecified as i32,
            ..e.node.clone()
        })
    }

    /// Names of the nodes that are ready now.
    pub fn ready_nodes(&self) -> Vec<String> {
        let entries = self.entries.read().expect("registry lock poisoned");
        let mut names: Vec<String> = entries
            .iter()
            .filter(|(_, e)| self.state(e) == pb::NodeState::Ready)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Records the end of an inventory sync of `node` for `boot_id`.
    pub fn sync_done(&self, node: &str, boot_id: &str, ok: bool) {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        if let Some(e) = entries.get_mut(node) {
            e.syncing = false;
            if ok {
                e.synced_boot = boot_id.to_string();
            }
        }
    }

    fn state(&self, e: &Entry) -> pb::NodeState {
        match e.last_seen {
            Some(t) if !e.leaving && t.elapsed() <= self.timeout => pb::NodeState::Ready,
            _ => pb::NodeState::Down,
        }
    }

    /// Every node with its current state, by name.
    pub fn snapshot(&self) -> Vec<pb::Node> {
        let entries = self.entries.read().expect("registry lock poisoned");
        let mut nodes: Vec<pb::Node> = entries
            .values()
            .map(|e| pb::Node {
                state: self.state(e) as i32,
                ..e.node.clone()
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// One node with its current state.
    pub fn get(&self, name: &str) -> Option<pb::Node> {
        let entries = self.entries.read().expect("registry lock poisoned");
        entries.get(name).map(|e| pb::Node {
            state: self.state(e) as i32,
            ..e.node.clone()
        })
    }

    /// Whether `name` is ready.
    pub fn is_ready(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|n| n.state == pb::NodeState::Ready as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: &str, boot: &str) -> pb::Heartbeat {
        pb::Heartbeat {
            node: node.into(),
            boot_id: boot.into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            ..Default::default()
        }
    }

    #[test]
    fn inventory_is_synced_once_per_agent_boot_and_retried_after_failure() {
        let reg = Registry::new(vec![], Duration::from_secs(10));
        let o = reg.observe(&hb("a", "boot1"));
        assert!(o.persist.is_some());
        assert!(o.needs_sync);
        assert!(reg.is_ready("a"));
        // While a sync runs, no second one starts.
        assert!(!reg.observe(&hb("a", "boot1")).needs_sync);
        reg.sync_done("a", "boot1", false);
        // Failed: the next heartbeat retries.
        assert!(reg.observe(&hb("a", "boot1")).needs_sync);
        reg.sync_done("a", "boot1", true);
        let o = reg.observe(&hb("a", "boot1"));
        assert_eq!(
            o,
            Observed {
                persist: None,
                needs_sync: false,
                joined: false,
            }
        );
        // A restarted agent is synced again.
        let o = reg.observe(&hb("a", "boot2"));
        assert!(o.needs_sync && o.persist.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_back_after_silence_is_synced_again() {
        let reg = Registry::new(vec![], Duration::from_secs(10));
        assert!(reg.observe(&hb("a", "boot1")).needs_sync);
        reg.sync_done("a", "boot1", true);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!reg.observe(&hb("a", "boot1")).needs_sync);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!reg.is_ready("a"));
        assert!(reg.observe(&hb("a", "boot1")).needs_sync);
    }

    #[test]
    fn cordon_is_kept_across_heartbeats() {
        let reg = Registry::new(vec![], Duration::from_secs(10));
        assert!(reg.set_cordoned("a", true).is_none());
        reg.observe(&hb("a", "b"));
        assert!(reg.set_cordoned("a", true).unwrap().cordoned);
        reg.observe(&hb("a", "b"));
        assert!(reg.get("a").unwrap().cordoned);
        assert_eq!(reg.ready_nodes(), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_are_reported_once_each() {
        let reg = Registry::new(vec![], Duration::from_secs(10));
        assert!(reg.observe(&hb("a", "b")).joined);
        assert_eq!(
            reg.transitions(),
            [("a".into(), pb::NodeState::Ready, "heartbeat")]
        );
        assert!(reg.transitions().is_empty());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            reg.transitions(),
            [("a".into(), pb::NodeState::Down, "heartbeat_timeout")]
        );
        assert!(!reg.observe(&hb("a", "b")).joined);
        assert_eq!(reg.transitions()[0].1, pb::NodeState::Ready);
        let mut leaving = hb("a", "b");
        leaving.leaving = true;
        reg.observe(&leaving);
        assert_eq!(reg.transitions()[0].2, "agent_left");
        // A heartbeat checks its own node only.
        reg.observe(&hb("b", "b1"));
        assert!(reg.transitions_of(Some("a")).is_empty());
        assert_eq!(reg.transitions_of(Some("b"))[0].0, "b");
        // A transition whose event was not recorded is reported again.
        reg.unreport("a");
        assert_eq!(reg.transitions()[0].1, pb::NodeState::Down);
        assert!(reg.transitions().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_or_silent_nodes_are_down() {
        let reg = Registry::new(vec![], Duration::from_secs(10));
        reg.observe(&hb("a", "b"));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(reg.is_ready("a"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!reg.is_ready("a"));
        let reg = Registry::new(vec![], Duration::from_secs(10));
        let mut leaving = hb("a", "b");
        leaving.leaving = true;
        reg.observe(&leaving);
        assert_eq!(reg.get("a").unwrap().state, pb::NodeState::Down as i32);
    }

    #[test]
    fn persisted_nodes_start_down() {
        let reg = Registry::new(
            vec![pb::Node {
                name: "a".into(),
                ..Default::default()
            }],
            Duration::from_secs(10),
        );
        assert_eq!(reg.snapshot()[0].state, pb::NodeState::Down as i32);
    }
}
