//! An in-memory summary of every container record, kept in step with the
//! database by the store's writes: what each node holds (for placement and
//! `ListNodes`), which leases run out when, and which containers run.
//! Nothing here is a second source of truth: it is rebuilt from the records
//! on open, and only the store changes it, after a commit.

use devctl_proto::container::ContainerExt;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::SystemTime,
};

use devctl_proto::pb;

/// What one node holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// devctl containers on it.
    pub containers: usize,
    /// CPU reserved, thousandths.
    pub milli_cpus: i64,
    /// Memory reserved, bytes.
    pub memory_bytes: i64,
}

/// The fields of a record the index needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    /// The container's node.
    pub(crate) node: String,
    /// Meant to run: its reservation counts.
    pub(crate) reserving: bool,
    /// Observed running.
    pub(crate) running: bool,
    /// CPU and memory it asks for.
    pub(crate) milli_cpus: i64,
    /// Memory it asks for, bytes.
    pub(crate) memory_bytes: i64,
    /// When its lease runs out.
    pub(crate) lease_expiry: Option<SystemTime>,
    /// Running, meant to, and its health check fails.
    pub(crate) unhealthy: bool,
    /// Who owns it.
    pub(crate) owner: String,
}

impl Summary {
    /// The summary of a record.
    pub(crate) fn of(c: &pb::Container) -> Self {
        let r = c.spec().resources.unwrap_or_default();
        Self {
            node: c.status().node.clone(),
            reserving: c.spec().desired_state == pb::DesiredState::Running as i32,
            running: c.status().state == pb::ContainerState::Running as i32,
            milli_cpus: r.milli_cpus,
            memory_bytes: r.memory_bytes,
            lease_expiry: c
                .status()
                .lease_expire_time
                .and_then(|t| SystemTime::try_from(t).ok()),
            unhealthy: c.status().health == pb::HealthStatus::Unhealthy as i32
                && c.status().state == pb::ContainerState::Running as i32
                && c.spec().desired_state == pb::DesiredState::Running as i32,
            owner: c.owner.clone(),
        }
    }
}

/// Summaries by name, with per-node totals and a lease queue.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_name: HashMap<String, Summary>,
    // Shared with the callers of `usage` (copied on the next write while
    // one still holds it).
    // By name, as the node registry: placement walks both in step.
    usage: Arc<BTreeMap<String, NodeUsage>>,
    leases: BTreeSet<(SystemTime, String)>,
    // What each owner holds: every container, running or not (quotas).
    by_owner: HashMap<String, NodeUsage>,
    // Each node's container names, in order (inventory syncs, drains).
    by_node: HashMap<String, BTreeSet<String>>,
}

impl Index {
    /// Records `name`'s new summary (`None`: the record was deleted).
    pub(crate) fn set(&mut self, name: &str, new: Option<Summary>) {
        if let Some(old) = self.by_name.remove(name) {
            self.account(&old, -1);
            if let Some(t) = old.lease_expiry {
                self.leases.remove(&(t, name.to_string()));
            }
            if let Some(names) = self.by_node.get_mut(&old.node) {
                names.remove(name);
                if names.is_empty() {
                    self.by_node.remove(&old.node);
                }
            }
        }
        if let Some(new) = new {
            self.account(&new, 1);
            if let Some(t) = new.lease_expiry {
                self.leases.insert((t, name.to_string()));
            }
            self.by_node
                .entry(new.node.clone())
                .or_default()
                .insert(name.to_string());
            self.by_name.insert(name.to_string(), new);
        }
    }

    fn account(&mut self, s: &Summary, sign: i64) {
        let o = self.by_owner.entry(s.owner.clone()).or_default();
        o.containers = o.containers.wrapping_add_signed(sign as isize);
        o.milli_cpus += sign * s.milli_cpus;
        o.memory_bytes += sign * s.memory_bytes;
        if o.containers == 0 {
            self.by_owner.remove(&s.owner);
        }
        let usage = Arc::make_mut(&mut self.usage);
        let u = match usage.get_mut(&s.node) {
            Some(u) => u,
            None => usage.entry(s.node.clone()).or_default(),
        };
        u.containers = u.containers.wrapping_add_signed(sign as isize);
        if s.reserving {
            u.milli_cpus += sign * s.milli_cpus;
            u.memory_bytes += sign * s.memory_bytes;
        }
        if u.containers == 0 {
            usage.remove(&s.node);
        }
    }

    /// What each node holds (shared: no copy).
    pub(crate) fn usage(&self) -> Arc<BTreeMap<String, NodeUsage>> {
        Arc::clone(&self.usage)
    }

    /// Containers (name, node) whose lease ran out at `now`, earliest
    /// first.
    pub(crate) fn leases_due(&self, now: SystemTime) -> Vec<(String, String)> {
        self.leases
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, n)| (n.clone(), self.by_name[n].node.clone()))
            .collect()
    }

    /// Calls `f` with (name, node) of each container observed running (and
    /// meant to); nothing is copied.
    pub(crate) fn for_each_running(&self, mut f: impl FnMut(&str, &str)) {
        for (n, s) in &self.by_name {
            if s.running && s.reserving {
                f(n, &s.node);
            }
        }
    }

    /// Every owner of a container.
    pub(crate) fn owners(&self) -> Vec<String> {
        self.by_owner.keys().cloned().collect()
    }

    /// What `owner` holds: its containers (running or not) and the CPU and
    /// memory they ask for.
    pub(crate) fn owned(&self, owner: &str) -> NodeUsage {
        self.by_owner.get(owner).copied().unwrap_or_default()
    }

    /// Containers (name, node) running with a failing health check.
    pub(crate) fn unhealthy(&self) -> Vec<(String, String)> {
        self.by_name
            .iter()
            .filter(|(_, s)| s.unhealthy)
            .map(|(n, s)| (n.clone(), s.node.clone()))
            .collect()
    }

    /// The names of `node`'s containers, in order.
    pub(crate) fn on_node(&self, node: &str) -> Vec<String> {
        self.by_node
            .get(node)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn summary(node: &str, cpus: i64, reserving: bool, lease: Option<u64>) -> Summary {
        Summary {
            node: node.into(),
            reserving,
            running: reserving,
            milli_cpus: cpus,
            memory_bytes: cpus * 1000,
            lease_expiry: lease.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            unhealthy: false,
            owner: "o".into(),
        }
    }

    #[test]
    fn totals_follow_every_change_and_vanish_with_the_last_container() {
        let mut ix = Index::default();
        ix.set("a", Some(summary("n1", 500, true, None)));
        ix.set("b", Some(summary("n1", 250, false, None)));
        assert_eq!(
            ix.usage()["n1"],
            NodeUsage {
                containers: 2,
                milli_cpus: 500,
                memory_bytes: 500_000
            }
        );
        // b starts: it reserves; a moves to n2.
        ix.set("b", Some(summary("n1", 250, true, None)));
        ix.set("a", Some(summary("n2", 500, true, None)));
        assert_eq!(ix.usage()["n1"].milli_cpus, 250);
        assert_eq!(ix.usage()["n2"].containers, 1);
        assert_eq!(ix.owned("o").containers, 2);
        assert_eq!(ix.owned("o").milli_cpus, 750);
        ix.set("b", None);
        assert!(!ix.usage().contains_key("n1"));
        assert_eq!(ix.owned("o").containers, 1);
        assert_eq!(ix.on_node("n2"), ["a"]);
    }

    #[test]
    fn leases_come_due_in_order_and_follow_renewals() {
        let mut ix = Index::default();
        ix.set("late", Some(summary("n", 0, true, Some(30))));
        ix.set("early", Some(summary("n", 0, true, Some(10))));
        ix.set("none", Some(summary("n", 0, true, None)));
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let names = |due: Vec<(String, String)>| due.into_iter().map(|d| d.0).collect::<Vec<_>>();
        assert!(ix.leases_due(at(9)).is_empty());
        assert_eq!(names(ix.leases_due(at(30))), ["early", "late"]);
        // Renewed: no longer due at 30.
        ix.set("early", Some(summary("n", 0, true, Some(100))));
        assert_eq!(names(ix.leases_due(at(30))), ["late"]);
        ix.set("late", None);
        assert!(ix.leases_due(at(99)).is_empty());
    }
}
