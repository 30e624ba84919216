//! The node registry: what the scheduler knows of each node. Capacity and
//! labels are persisted (they change rarely); liveness (last heartbeat) is
//! kept in memory. A restarted scheduler has heard from no node yet, and
//! that says nothing about the nodes: each node known from before starts
//! `unknown` for one node timeout (the grace period), becomes `ready` at
//! its first heartbeat (usually within a second), and is `down` only if the
//! grace period passes without one. Nothing treats an unknown node as down:
//! operations on it wait (bounded by the grace period) for it to report.
//!
//! Each node's SSH host key (what its agent's SSH server proves itself
//! with, certified per tunnel) is the latest its heartbeats carried, in
//! memory only: every heartbeat carries it again.
//!
//! One file on purpose (one concern): the node registry's liveness states
//! (ready, unknown, down) and capacity bounds; a third of its length is unit
//! tests of those rules.

use std::{
    collections::BTreeMap,
    sync::RwLock,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use devctl_proto::{pb, ssh::ssh_key::PublicKey};

use crate::{placement, store::NodeUsage};

/// A live memory figure older than this is not used (its node stopped
/// reporting).
const MEMORY_FRESH: Duration = Duration::from_secs(10);

/// Admin-set caps on the capacity placement counts for any node
/// (--max-node-cpus, --max-node-memory); 0: none, and a node's first
/// heartbeat bounds it instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// CPUs, thousandths.
    pub milli_cpus: i64,
    /// Memory, bytes.
    pub memory_bytes: i64,
}

/// What placement counts of `claim`: no more than the cap, or (without
/// one) than the first report.
fn bounded(claim: i64, first: i64, cap: i64) -> i64 {
    match (cap, first) {
        (c, _) if c > 0 => claim.min(c),
        (_, f) if f > 0 => claim.min(f),
        _ => claim,
    }
}

/// Bounds `n`'s claimed capacity (setting its placement fields) and
/// returns what placement reads: CPUs (thousandths), memory, cordon.
fn capacity(n: &mut pb::Node, caps: Caps) -> (i64, i64, bool) {
    n.placement_milli_cpus = bounded(
        i64::from(n.cpus) * 1000,
        i64::from(n.first_cpus) * 1000,
        caps.milli_cpus,
    );
    n.placement_memory_bytes = bounded(n.memory_bytes, n.first_memory_bytes, caps.memory_bytes);
    (n.placement_milli_cpus, n.placement_memory_bytes, n.cordoned)
}

/// A capacity claim worth an event: beyond what placement counts, or
/// more than twice or under half the previous claim.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityChange {
    /// "beyond_cap", "beyond_first_report" or "sharp_change".
    pub reason: &'static str,
    /// The claim and what placement counts, in words.
    pub message: String,
}

fn capacity_change(n: &pb::Node, before: (i32, i64), caps: Caps) -> Option<CapacityChange> {
    let claim = (i64::from(n.cpus) * 1000, n.memory_bytes);
    let placed = (n.placement_milli_cpus, n.placement_memory_bytes);
    let before = (i64::from(before.0) * 1000, before.1);
    if claim == before {
        return None;
    }
    let sharp = |now: i64, was: i64| was > 0 && (now > 2 * was || 2 * now < was);
    let reason = if placed.0 < claim.0 || placed.1 < claim.1 {
        let capped = (placed.0 < claim.0 && caps.milli_cpus > 0)
            || (placed.1 < claim.1 && caps.memory_bytes > 0);
        if capped {
            "beyond_cap"
        } else {
            "beyond_first_report"
        }
    } else if sharp(claim.0, before.0) || sharp(claim.1, before.1) {
        "sharp_change"
    } else {
        return None;
    };
    use devctl_proto::units::{format_bytes, format_cpus};
    Some(CapacityChange {
        reason,
        message: format!(
            "node {} claims {} CPUs and {} of memory (before: {} CPUs, {}; first report: {} CPUs, {}); placement counts {} CPUs and {}",
            n.name,
            n.cpus,
            format_bytes(claim.1),
            format_cpus(before.0),
            format_bytes(before.1),
            n.first_cpus,
            format_bytes(n.first_memory_bytes),
            format_cpus(placed.0),
            format_bytes(placed.1),
        ),
    })
}

fn sorted(labels: &std::collections::HashMap<String, String>) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    l.sort();
    l
}

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
    /// The node's capacity claim changed in a way worth an event.
    pub capacity: Option<CapacityChange>,
}

#[derive(Debug)]
struct Entry {
    // Boxed, with what placement reads copied beside it (`labels`,
    // `capacity`): placement walks every entry per decision, and small
    // entries keep that walk in few cache lines.
    node: Box<pb::Node>,
    /// `node.labels` sorted by key, for placement.
    labels: Vec<(String, String)>,
    /// `node`'s CPUs (thousandths), memory (bytes) and cordon, for placement.
    capacity: (i64, i64, bool),
    last_seen: Option<Instant>,
    /// Live memory use in percent, and when it was reported.
    memory_used: Option<(f64, Instant)>,
    boot_id: String,
    leaving: bool,
    /// The boot id whose inventory was synced.
    synced_boot: String,
    syncing: bool,
    /// The state last reported as an event (`None`: nothing reported yet).
    reported: Option<pb::NodeState>,
    /// The agent's SSH host key, if its last heartbeat carried a valid one.
    ssh_host_key: Option<PublicKey>,
    /// A digest of the host key line last read (so a line is parsed, and
    /// a bad one logged, once per change, not at every heartbeat).
    ssh_host_key_digest: u64,
    /// The agent manages workspace volumes (its heartbeat says so).
    workspaces: bool,
}

/// Nodes by name. A cheap clone handle is not needed: the registry lives in
/// the scheduler's shared state.
#[derive(Debug)]
pub struct Registry {
    // std lock: held only for map lookups, never across an await. Ordered:
    // snapshots are by name.
    entries: RwLock<BTreeMap<String, Entry>>,
    // Memory figures of nodes not heard from yet (a stats report can be
    // handled before the node's first heartbeat), taken by that heartbeat.
    early_memory: std::sync::Mutex<BTreeMap<String, (f64, Instant)>>,
    timeout: Duration,
    /// Until then, a known node not heard from since the start is unknown.
    grace_until: Instant,
    /// Bumped whenever a node becomes ready: waiters for an unknown node
    /// re-check then.
    became_ready: tokio::sync::watch::Sender<u64>,
    caps: Caps,
}

impl Registry {
    /// A registry holding the persisted `nodes` (all unknown until their
    /// first heartbeat, or down once `timeout` passes without one), where a
    /// node is down once `timeout` passes without a heartbeat. Make it once
    /// heartbeats are being received: the grace period starts now.
    /// Placement counts no more of a node's claimed capacity than `caps`
    /// (where set) or its first heartbeat's.
    pub fn new(nodes: Vec<pb::Node>, timeout: Duration, caps: Caps) -> Self {
        let entries = nodes
            .into_iter()
            .map(|mut node| {
                // Recorded before first reports were kept: the last claim
                // known is the baseline.
                if node.first_cpus == 0 && node.first_memory_bytes == 0 {
                    (node.first_cpus, node.first_memory_bytes) = (node.cpus, node.memory_bytes);
                }
                (
                    node.name.clone(),
                    Entry {
                        labels: sorted(&node.labels),
                        capacity: capacity(&mut node, caps),
                        node: Box::new(node),
                        last_seen: None,
                        memory_used: None,
                        boot_id: String::new(),
                        leaving: false,
                        synced_boot: String::new(),
                        syncing: false,
                        // Known nodes start unknown, silently.
                        reported: Some(pb::NodeState::Unknown),
                        ssh_host_key: None,
                        ssh_host_key_digest: digest(""),
                        workspaces: false,
                    },
                )
            })
            .collect();
        Self {
            entries: RwLock::new(entries),
            early_memory: std::sync::Mutex::default(),
            timeout,
            grace_until: Instant::now() + timeout,
            became_ready: tokio::sync::watch::Sender::new(0),
            caps,
        }
    }

    /// Records a heartbeat.
    pub fn observe(&self, hb: &pb::Heartbeat) -> Observed {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        let now = Instant::now();
        let entry = entries.entry(hb.node.clone()).or_insert_with(|| Entry {
            node: Box::new(pb::Node {
                name: hb.node.clone(),
                create_time: Some(SystemTime::now().into()),
                ..Default::default()
            }),
            labels: Vec::new(),
            capacity: (0, 0, false),
            last_seen: None,
            memory_used: self
                .early_memory
                .lock()
                .expect("registry lock poisoned")
                .remove(&hb.node),
            boot_id: String::new(),
            leaving: false,
            synced_boot: String::new(),
            syncing: false,
            reported: None,
            ssh_host_key: None,
            ssh_host_key_digest: digest(""),
            workspaces: false,
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
        let was_ready = self.state_at(entry, now) == pb::NodeState::Ready;
        // Back after silence: what runs there may have changed meanwhile
        // (its containers were marked lost), so its inventory is read again.
        if entry.last_seen.is_some() && self.state(entry) == pb::NodeState::Down {
            entry.synced_boot.clear();
        }
        if entry.node.labels != hb.labels {
            entry.node.labels = hb.labels.clone();
            entry.labels = sorted(&hb.labels);
        }
        let claimed_before = (entry.node.cpus, entry.node.memory_bytes);
        if entry.node.first_cpus == 0 && entry.node.first_memory_bytes == 0 {
            (entry.node.first_cpus, entry.node.first_memory_bytes) = (hb.cpus, hb.memory_bytes);
        }
        entry.node.cpus = hb.cpus;
        entry.node.memory_bytes = hb.memory_bytes;
        entry.node.docker_version = hb.docker_version.clone();
        entry.node.agent_version = hb.agent_version.clone();
        entry.node.platform = hb.platform.clone();
        entry.node.last_seen = hb.time.or_else(|| Some(SystemTime::now().into()));
        entry.node.open_streams = hb.open_streams;
        entry.workspaces = hb.workspaces;
        let key_digest = digest(&hb.ssh_host_key);
        if entry.ssh_host_key_digest != key_digest {
            entry.ssh_host_key_digest = key_digest;
            entry.ssh_host_key = host_key(&hb.node, &hb.ssh_host_key);
        }
        entry.capacity = capacity(&mut entry.node, self.caps);
        let capacity = (!first)
            .then(|| capacity_change(&entry.node, claimed_before, self.caps))
            .flatten();
        let changed = first || before != durable(&entry.node);
        let needs_sync = !hb.leaving && !entry.syncing && entry.synced_boot != hb.boot_id;
        entry.syncing |= needs_sync;
        entry.boot_id = hb.boot_id.clone();
        entry.leaving = hb.leaving;
        entry.last_seen = Some(now);
        if !was_ready && self.state_at(entry, now) == pb::NodeState::Ready {
            self.became_ready.send_modify(|n| *n += 1);
        }
        Observed {
            persist: changed.then(|| (*entry.node).clone()),
            needs_sync,
            joined: first && entry.reported.is_none(),
            capacity,
        }
    }

    /// Nodes whose state changed since the last call, with the new state
    /// and why (`"heartbeat"`, `"agent_left"`, `"heartbeat_timeout"`): one
    /// node only with `Some` (a direct lookup), or all with `None`.
    pub fn transitions_of(&self, only: Option<&str>) -> Vec<(String, pb::NodeState, &'static str)> {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        let mut out = Vec::new();
        let mut check = |name: &str, e: &mut Entry| {
            let state = self.state(e);
            // Unknown is not a change to report: the node is neither
            // confirmed ready nor down yet.
            if e.reported == Some(state) || state == pb::NodeState::Unknown {
                return;
            }
            e.reported = Some(state);
            let reason = match state {
                pb::NodeState::Ready => "heartbeat",
                _ if e.leaving => "agent_left",
                _ if e.last_seen.is_none() => "no_heartbeat_since_restart",
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
    /// not be recorded), so the next [`Registry::transitions_of`] reports it
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
        e.capacity = capacity(&mut e.node, self.caps);
        Some(pb::Node {
            state: pb::NodeState::Unspecified as i32,
            ..(*e.node).clone()
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
        self.state_at(e, Instant::now())
    }

    fn state_at(&self, e: &Entry, now: Instant) -> pb::NodeState {
        match e.last_seen {
            Some(t) if !e.leaving && now.saturating_duration_since(t) <= self.timeout => {
                pb::NodeState::Ready
            }
            None if now < self.grace_until => pb::NodeState::Unknown,
            _ => pb::NodeState::Down,
        }
    }

    /// `name`'s state now (`None`: no such node).
    pub fn state_of(&self, name: &str) -> Option<pb::NodeState> {
        let entries = self.entries.read().expect("registry lock poisoned");
        entries.get(name).map(|e| self.state(e))
    }

    /// Whether some node's state is unknown now (the scheduler started
    /// less than a node timeout ago and has not heard from it yet).
    pub fn any_unknown(&self) -> bool {
        let now = Instant::now();
        if now >= self.grace_until {
            return false;
        }
        let entries = self.entries.read().expect("registry lock poisoned");
        entries
            .values()
            .any(|e| self.state_at(e, now) == pb::NodeState::Unknown)
    }

    /// Waits until a node becomes ready or the grace period ends, whichever
    /// comes first; returns at once once the grace period is over. Callers
    /// re-check what they wait for after each return.
    pub async fn node_change_or_grace_end(&self) {
        let mut rx = self.became_ready.subscribe();
        rx.mark_unchanged();
        let _ = tokio::time::timeout_at(self.grace_until, rx.changed()).await;
    }

    /// `name`'s state once it is known: an unknown node is waited for
    /// until it reports or the grace period ends (then it is down).
    pub async fn settled_state(&self, name: &str) -> Option<pb::NodeState> {
        loop {
            let mut rx = self.became_ready.subscribe();
            rx.mark_unchanged();
            match self.state_of(name) {
                Some(pb::NodeState::Unknown) => {}
                other => return other,
            }
            let _ = tokio::time::timeout_at(self.grace_until, rx.changed()).await;
        }
    }

    /// Every node with its current state, by name.
    pub fn snapshot(&self) -> Vec<pb::Node> {
        let entries = self.entries.read().expect("registry lock poisoned");
        let now = Instant::now();
        entries
            .values()
            .map(|e| pb::Node {
                state: self.state_at(e, now) as i32,
                ..(*e.node).clone()
            })
            .collect()
    }

    /// Records `node`'s live memory use (percent), from its stats report.
    pub fn set_memory_used(&self, node: &str, percent: Option<f64>) {
        let figure = percent.map(|p| (p, Instant::now()));
        let mut entries = self.entries.write().expect("registry lock poisoned");
        match (entries.get_mut(node), figure) {
            (Some(e), _) => e.memory_used = figure,
            (None, Some(f)) => {
                let mut early = self.early_memory.lock().expect("registry lock poisoned");
                early.insert(node.to_string(), f);
            }
            (None, None) => {}
        }
    }

    /// Calls `f` with every node as placement sees it now, by name, given
    /// what each holds (`usage`, by name: both are walked in step, no
    /// lookups). The views borrow from the registry (no copies), under its
    /// read lock: `f` must not block.
    pub fn with_views<R>(
        &self,
        usage: &BTreeMap<String, NodeUsage>,
        f: impl FnOnce(&mut [placement::NodeView<'_>]) -> R,
    ) -> R {
        let entries = self.entries.read().expect("registry lock poisoned");
        // Compare instants, not durations, per node.
        let now = Instant::now();
        let seen_since = now.checked_sub(self.timeout);
        let fresh_since = now.checked_sub(MEMORY_FRESH);
        let mut usage = usage.iter().peekable();
        let mut views: Vec<placement::NodeView<'_>> = entries
            .iter()
            .map(|(name, e)| {
                while usage.next_if(|(n, _)| *n < name).is_some() {}
                let u = usage
                    .next_if(|(n, _)| *n == name)
                    .map(|(_, u)| *u)
                    .unwrap_or_default();
                placement::NodeView {
                    name: name.as_str(),
                    ready: !e.leaving
                        && e.last_seen
                            .is_some_and(|t| seen_since.is_none_or(|s| t >= s)),
                    cordoned: e.capacity.2,
                    labels: &e.labels,
                    milli_cpus: e.capacity.0,
                    memory_bytes: e.capacity.1,
                    reserved_milli_cpus: u.milli_cpus,
                    reserved_memory_bytes: u.memory_bytes,
                    memory_used_percent: e
                        .memory_used
                        .filter(|(_, at)| fresh_since.is_none_or(|s| *at > s))
                        .map(|(p, _)| p),
                    containers: u.containers,
                    // Set by the cluster, which knows the images.
                    has_image: None,
                }
            })
            .collect();
        f(&mut views)
    }

    /// One node with its current state.
    pub fn get(&self, name: &str) -> Option<pb::Node> {
        let entries = self.entries.read().expect("registry lock poisoned");
        entries.get(name).map(|e| pb::Node {
            state: self.state(e) as i32,
            ..(*e.node).clone()
        })
    }

    /// The SSH host key `name`'s agent last reported, if it reported a
    /// valid one.
    pub fn ssh_host_key(&self, name: &str) -> Option<PublicKey> {
        let entries = self.entries.read().expect("registry lock poisoned");
        entries.get(name)?.ssh_host_key.clone()
    }

    /// Whether `name`'s agent manages workspace volumes (an agent from
    /// before workspaces neither mounts nor reports them).
    pub fn knows_workspaces(&self, name: &str) -> bool {
        let entries = self.entries.read().expect("registry lock poisoned");
        entries.get(name).is_some_and(|e| e.workspaces)
    }

    /// Whether `name` is ready.
    pub fn is_ready(&self, name: &str) -> bool {
        let entries = self.entries.read().expect("registry lock poisoned");
        entries
            .get(name)
            .is_some_and(|e| self.state(e) == pb::NodeState::Ready)
    }
}

fn digest(line: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    line.hash(&mut h);
    h.finish()
}

/// The SSH host key in `node`'s heartbeat (`line`): `None` for none, and for
/// one that is no ed25519 OpenSSH public key line (never trusted; logged).
fn host_key(node: &str, line: &str) -> Option<PublicKey> {
    if line.is_empty() {
        tracing::info!(
            node,
            "the node's agent reports no SSH host key: no SSH into its containers"
        );
        return None;
    }
    let parsed = if line.len() > crate::cluster::MAX_PUBLIC_KEY_LEN {
        Err(format!("{} bytes long", line.len()))
    } else {
        devctl_proto::ssh::parse_public_key(line).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(key) => {
            let fingerprint = key.fingerprint(devctl_proto::ssh::ssh_key::HashAlg::Sha256);
            tracing::info!(node, %fingerprint, "the node's agent offers SSH");
            Some(key)
        }
        Err(error) => {
            tracing::warn!(node, %error, "the SSH host key in the node's heartbeat is not a valid ed25519 public key; ignored (no SSH into its containers)");
            None
        }
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
    fn placement_counts_no_more_than_the_first_report_or_the_cap() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        assert_eq!(reg.observe(&hb("a", "b1")).capacity, None);
        let claim = pb::Heartbeat {
            cpus: 4096,
            memory_bytes: 1 << 50,
            ..hb("a", "b1")
        };
        let o = reg.observe(&claim);
        assert_eq!(o.capacity.unwrap().reason, "beyond_first_report");
        assert_eq!(
            reg.observe(&claim).capacity,
            None,
            "only a change is an event"
        );
        let n = reg.get("a").unwrap();
        assert_eq!((n.cpus, n.first_cpus), (4096, 2));
        assert_eq!(
            (n.placement_milli_cpus, n.placement_memory_bytes),
            (2000, 1 << 30)
        );
        reg.with_views(&BTreeMap::new(), |v| assert_eq!(v[0].milli_cpus, 2000));
        // Shrinking is counted as claimed, and a sharp drop is an event.
        let small = pb::Heartbeat {
            cpus: 1,
            ..hb("a", "b1")
        };
        assert_eq!(reg.observe(&small).capacity.unwrap().reason, "sharp_change");
        assert_eq!(reg.get("a").unwrap().placement_milli_cpus, 1000);

        // With an admin cap, growth up to the cap counts.
        let caps = Caps {
            milli_cpus: 8000,
            memory_bytes: 0,
        };
        let reg = Registry::new(vec![], Duration::from_secs(10), caps);
        reg.observe(&hb("a", "b1"));
        let grown = pb::Heartbeat {
            cpus: 5,
            ..hb("a", "b1")
        };
        assert_eq!(reg.observe(&grown).capacity.unwrap().reason, "sharp_change");
        assert_eq!(reg.get("a").unwrap().placement_milli_cpus, 5000);
        let o = reg.observe(&claim);
        assert_eq!(o.capacity.unwrap().reason, "beyond_cap");
        assert_eq!(reg.get("a").unwrap().placement_milli_cpus, 8000);
    }

    #[test]
    fn inventory_is_synced_once_per_agent_boot_and_retried_after_failure() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
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
                capacity: None,
            }
        );
        // A restarted agent is synced again.
        let o = reg.observe(&hb("a", "boot2"));
        assert!(o.needs_sync && o.persist.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_back_after_silence_is_synced_again() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        assert!(reg.observe(&hb("a", "boot1")).needs_sync);
        reg.sync_done("a", "boot1", true);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!reg.observe(&hb("a", "boot1")).needs_sync);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!reg.is_ready("a"));
        assert!(reg.observe(&hb("a", "boot1")).needs_sync);
    }

    #[test]
    fn the_latest_valid_ssh_host_key_is_kept() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        reg.observe(&hb("a", "b"));
        assert!(reg.ssh_host_key("a").is_none(), "an agent without SSH");
        let key = devctl_proto::ssh::new_key("host").unwrap();
        let line = key.public_key().to_openssh().unwrap();
        let with_key = pb::Heartbeat {
            ssh_host_key: line.clone(),
            ..hb("a", "b")
        };
        reg.observe(&with_key);
        assert_eq!(reg.ssh_host_key("a").as_ref(), Some(key.public_key()));
        reg.observe(&with_key);
        assert_eq!(reg.ssh_host_key("a").as_ref(), Some(key.public_key()));
        // A bad key replaces it: never trusted, and the old one is gone.
        for bad in [
            "ssh-ed25519 AAAA",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x",
        ] {
            reg.observe(&pb::Heartbeat {
                ssh_host_key: bad.into(),
                ..hb("a", "b")
            });
            assert!(reg.ssh_host_key("a").is_none(), "{bad}");
        }
        reg.observe(&with_key);
        assert!(reg.ssh_host_key("a").is_some());
        // An agent that stops reporting one (downgraded) has none.
        reg.observe(&hb("a", "b"));
        assert!(reg.ssh_host_key("a").is_none());
        assert!(reg.ssh_host_key("zz").is_none());
    }

    #[test]
    fn cordon_is_kept_across_heartbeats() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        assert!(reg.set_cordoned("a", true).is_none());
        reg.observe(&hb("a", "b"));
        assert!(reg.set_cordoned("a", true).unwrap().cordoned);
        reg.observe(&hb("a", "b"));
        assert!(reg.get("a").unwrap().cordoned);
        assert_eq!(reg.ready_nodes(), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_are_reported_once_each() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        assert!(reg.observe(&hb("a", "b")).joined);
        assert_eq!(
            reg.transitions_of(None),
            [("a".into(), pb::NodeState::Ready, "heartbeat")]
        );
        assert!(reg.transitions_of(None).is_empty());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            reg.transitions_of(None),
            [("a".into(), pb::NodeState::Down, "heartbeat_timeout")]
        );
        assert!(!reg.observe(&hb("a", "b")).joined);
        assert_eq!(reg.transitions_of(None)[0].1, pb::NodeState::Ready);
        let mut leaving = hb("a", "b");
        leaving.leaving = true;
        reg.observe(&leaving);
        assert_eq!(reg.transitions_of(None)[0].2, "agent_left");
        // A heartbeat checks its own node only.
        reg.observe(&hb("b", "b1"));
        assert!(reg.transitions_of(Some("a")).is_empty());
        assert_eq!(reg.transitions_of(Some("b"))[0].0, "b");
        // A transition whose event was not recorded is reported again.
        reg.unreport("a");
        assert_eq!(reg.transitions_of(None)[0].1, pb::NodeState::Down);
        assert!(reg.transitions_of(None).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_or_silent_nodes_are_down() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        reg.observe(&hb("a", "b"));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(reg.is_ready("a"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!reg.is_ready("a"));
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        let mut leaving = hb("a", "b");
        leaving.leaving = true;
        reg.observe(&leaving);
        assert_eq!(reg.get("a").unwrap().state, pb::NodeState::Down as i32);
    }

    #[test]
    fn placement_views_are_by_name_with_usage_and_fresh_memory() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        let mut b = hb("b", "1");
        b.labels.insert("zone".into(), "eu".into());
        reg.observe(&b);
        reg.observe(&hb("a", "1"));
        reg.set_cordoned("a", true);
        reg.set_memory_used("b", Some(42.0));
        let usage = BTreeMap::from([(
            "b".to_string(),
            NodeUsage {
                containers: 3,
                milli_cpus: 1500,
                memory_bytes: 1 << 20,
            },
        )]);
        reg.with_views(&usage, |views| {
            assert_eq!(views.iter().map(|v| v.name).collect::<Vec<_>>(), ["a", "b"]);
            assert!(views[0].cordoned && views[0].ready);
            assert_eq!(views[0].memory_used_percent, None);
            let b = &views[1];
            assert_eq!((b.milli_cpus, b.memory_bytes), (2000, 1 << 30));
            assert_eq!(b.labels, [("zone".to_string(), "eu".to_string())]);
            assert_eq!((b.containers, b.reserved_milli_cpus), (3, 1500));
            assert_eq!(b.memory_used_percent, Some(42.0));
        });
        // New labels are seen by the next decision.
        b.labels.insert("zone".into(), "us".into());
        reg.observe(&b);
        reg.with_views(&usage, |views| assert_eq!(views[1].labels[0].1, "us"));
    }

    #[test]
    fn a_memory_figure_before_the_first_heartbeat_is_kept() {
        let reg = Registry::new(vec![], Duration::from_secs(10), Caps::default());
        reg.set_memory_used("a", Some(95.0));
        reg.observe(&hb("a", "1"));
        reg.with_views(&BTreeMap::new(), |v| {
            assert_eq!(v[0].memory_used_percent, Some(95.0))
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_memory_figure_is_not_used() {
        let reg = Registry::new(vec![], Duration::from_secs(3600), Caps::default());
        reg.observe(&hb("a", "1"));
        reg.set_memory_used("a", Some(95.0));
        tokio::time::advance(MEMORY_FRESH + Duration::from_secs(1)).await;
        reg.with_views(&BTreeMap::new(), |v| {
            assert_eq!(v[0].memory_used_percent, None)
        });
    }

    #[tokio::test(start_paused = true)]
    async fn persisted_nodes_start_unknown_then_ready_or_down() {
        let known = |n: &str| pb::Node {
            name: n.into(),
            ..Default::default()
        };
        let reg = Registry::new(
            vec![known("a"), known("b")],
            Duration::from_secs(10),
            Caps::default(),
        );
        assert_eq!(reg.state_of("a"), Some(pb::NodeState::Unknown));
        assert!(reg.any_unknown() && !reg.is_ready("a"));
        assert!(reg.transitions_of(None).is_empty(), "no event for unknown");
        // A waiter for `a` is woken by its first heartbeat.
        let waiting = reg.settled_state("a");
        let heard = async {
            tokio::time::advance(Duration::from_secs(1)).await;
            reg.observe(&hb("a", "1"));
        };
        let (state, ()) = tokio::join!(waiting, heard);
        assert_eq!(state, Some(pb::NodeState::Ready));
        assert_eq!(
            reg.transitions_of(None),
            [("a".into(), pb::NodeState::Ready, "heartbeat")]
        );
        assert!(reg.any_unknown(), "b is still unknown");
        // b never reports: down once the grace period is over.
        assert_eq!(reg.settled_state("b").await, Some(pb::NodeState::Down));
        assert!(tokio::time::Instant::now() >= reg.grace_until);
        reg.observe(&hb("a", "1"));
        assert!(!reg.any_unknown());
        assert_eq!(
            reg.transitions_of(None),
            [(
                "b".into(),
                pb::NodeState::Down,
                "no_heartbeat_since_restart"
            )]
        );
        assert_eq!(reg.settled_state("zz").await, None);
    }
}
