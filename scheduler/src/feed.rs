//! The change feed: every committed change to a container or node record,
//! in commit order, each with the record before and after and a revision
//! that only grows.
//!
//! The store publishes here under its write lock, right after each commit
//! (so feed order is commit order); node states (ready, down), which live
//! in the node registry rather than the database, are published by the
//! cluster when it reports their transitions. Consumers (the public
//! `WatchChanges` call today; the graph projection, live views, metrics and
//! an HA follower next) read a snapshot at a revision
//! ([`crate::store::Store::snapshot`]) and then every change after it, at
//! their own pace, with [`Feed::read_after`]. Nothing else needs a hook
//! inside cluster operations.
//!
//! The feed keeps the last [`RETAINED`] changes in memory. A reader that
//! falls further behind, or that resumes from a revision of an earlier
//! scheduler process, gets [`FeedError::Compacted`] and must start again
//! from a snapshot (Kubernetes' "410 Gone").
//!
//! Revisions are `epoch << 40 | n`: `epoch` is kept in the store and grows
//! each time the scheduler opens it, `n` counts this process's changes. So
//! revisions grow across restarts too, and one from an earlier process is
//! recognised as such.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use devctl_proto::pb;
use thiserror::Error;
use tokio::sync::watch;

/// How many changes the feed keeps for readers that are behind.
pub const RETAINED: usize = 10_000;

/// Bits of a revision that count changes within one epoch.
const EPOCH_SHIFT: u32 = 40;

/// One record's change: before (`None`: added) and after (`None`: deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Diff<T> {
    /// The record before the change.
    pub before: Option<T>,
    /// The record after it.
    pub after: Option<T>,
}

/// A change to one record.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "changes are built once and kept behind an Arc: boxing would only add an allocation"
)]
pub enum Change {
    /// A container record was added, changed or deleted.
    Container(Diff<pb::Container>),
    /// A node record or state changed. Nodes carry their record and state
    /// (see [`stable_view`]); live figures are read with GetNode.
    Node(Diff<pb::Node>),
    /// A workspace record was added, changed or deleted.
    Workspace(Diff<pb::Workspace>),
}

/// A change with its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Where the change sits in the feed.
    pub revision: u64,
    /// When it was published (the graph projection records it as the
    /// change's time and measures its lag by it).
    pub time: std::time::SystemTime,
    /// What changed.
    pub change: Change,
}

/// A read the feed cannot serve.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FeedError {
    /// The changes after `revision` are no longer kept (the reader is too
    /// far behind, or the revision is from an earlier scheduler process).
    #[error(
        "revision {revision} is no longer available (the oldest kept is {oldest}); watch again from revision 0 to get a new snapshot"
    )]
    Compacted {
        /// The revision asked for.
        revision: u64,
        /// The oldest revision a reader may resume from now.
        oldest: u64,
    },
    /// The revision has not happened yet.
    #[error(
        "revision {revision} is ahead of the cluster's latest ({latest}); resume from a revision this scheduler sent"
    )]
    Future {
        /// The revision asked for.
        revision: u64,
        /// The latest revision.
        latest: u64,
    },
}

/// The feed; one per store, shared.
#[derive(Debug)]
pub struct Feed {
    state: Mutex<State>,
    latest: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    /// The revision before this process's first change.
    base: u64,
    /// The latest revision.
    latest: u64,
    ring: VecDeque<Arc<Entry>>,
    capacity: usize,
    /// Every node as the feed last published it.
    nodes: BTreeMap<String, pb::Node>,
}

/// What the feed says of a node: its record and state, without the figures
/// that change with every heartbeat or stats report (last seen, usage,
/// container and stream counts, reservations), which would flood readers.
pub fn stable_view(n: &pb::Node) -> pb::Node {
    pb::Node {
        last_seen: None,
        container_count: 0,
        open_streams: 0,
        usage: None,
        reserved_milli_cpus: 0,
        reserved_memory_bytes: 0,
        ..n.clone()
    }
}

impl Feed {
    /// An empty feed for `epoch` keeping the last `capacity` changes.
    pub fn new(epoch: u64, capacity: usize) -> Self {
        let base = epoch << EPOCH_SHIFT;
        Self {
            state: Mutex::new(State {
                base,
                latest: base,
                ring: VecDeque::new(),
                capacity: capacity.max(1),
                nodes: BTreeMap::new(),
            }),
            latest: watch::channel(base).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("feed lock poisoned")
    }

    /// The latest revision.
    pub fn latest(&self) -> u64 {
        self.lock().latest
    }

    /// A receiver told the latest revision whenever it grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Publishes `changes` in order (the store calls this under its write
    /// lock, after the commit).
    pub fn publish(&self, changes: impl IntoIterator<Item = Change>) {
        let mut s = self.lock();
        let before = s.latest;
        for change in changes {
            s.push(change);
        }
        if s.latest != before {
            self.latest.send_replace(s.latest);
        }
    }

    /// Sets the known nodes without publishing (at open, from the store's
    /// records: every node starts in state unknown).
    pub fn seed_nodes(&self, nodes: impl IntoIterator<Item = pb::Node>) {
        let mut s = self.lock();
        for n in nodes {
            let view = pb::Node {
                state: pb::NodeState::Unknown as i32,
                ..stable_view(&n)
            };
            s.nodes.insert(n.name.clone(), view);
        }
    }

    /// A node record was committed: publishes it (keeping the node's
    /// current state) if the feed's view of it changes.
    pub fn node_record(&self, n: &pb::Node) {
        let mut s = self.lock();
        let state = s
            .nodes
            .get(&n.name)
            .map_or(pb::NodeState::Unknown as i32, |old| old.state);
        let view = pb::Node {
            state,
            ..stable_view(n)
        };
        self.set_node(&mut s, view);
    }

    /// `node` is now in `state`: publishes the change, if it is one.
    pub fn node_state(&self, node: &str, state: pb::NodeState) {
        let mut s = self.lock();
        let Some(old) = s.nodes.get(node) else {
            return;
        };
        let view = pb::Node {
            state: state as i32,
            ..old.clone()
        };
        self.set_node(&mut s, view);
    }

    fn set_node(&self, s: &mut State, view: pb::Node) {
        let before = s.nodes.insert(view.name.clone(), view.clone());
        if before.as_ref() == Some(&view) {
            return;
        }
        s.push(Change::Node(Diff {
            before,
            after: Some(view),
        }));
        self.latest.send_replace(s.latest);
    }

    /// The latest revision and every node, read together.
    pub fn nodes_at(&self) -> (u64, Vec<pb::Node>) {
        let s = self.lock();
        (s.latest, s.nodes.values().cloned().collect())
    }

    /// Up to `max` changes after `revision`, oldest first (none if the
    /// reader is up to date).
    pub fn read_after(&self, revision: u64, max: usize) -> Result<Vec<Arc<Entry>>, FeedError> {
        let s = self.lock();
        if revision > s.latest {
            return Err(FeedError::Future {
                revision,
                latest: s.latest,
            });
        }
        let oldest = s.ring.front().map_or(s.latest, |e| e.revision - 1);
        if revision < oldest || revision < s.base {
            return Err(FeedError::Compacted {
                revision,
                oldest: oldest.max(s.base),
            });
        }
        // Revisions in the ring are consecutive.
        let skip = usize::try_from(revision - oldest).unwrap_or(usize::MAX);
        Ok(s.ring.iter().skip(skip).take(max).cloned().collect())
    }
}

impl State {
    fn push(&mut self, change: Change) {
        self.latest += 1;
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(Arc::new(Entry {
            revision: self.latest,
            time: std::time::SystemTime::now(),
            change,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, state: pb::ContainerState) -> pb::Container {
        pb::Container {
            name: name.into(),
            status: Some(pb::ContainerStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn added(name: &str) -> Change {
        Change::Container(Diff {
            before: None,
            after: Some(c(name, pb::ContainerState::Running)),
        })
    }

    fn revisions(entries: &[Arc<Entry>]) -> Vec<u64> {
        entries.iter().map(|e| e.revision).collect()
    }

    #[test]
    fn revisions_grow_and_readers_resume_where_they_were() {
        let feed = Feed::new(3, 100);
        let base = 3 << EPOCH_SHIFT;
        assert_eq!(feed.latest(), base);
        assert!(feed.read_after(base, 10).unwrap().is_empty());
        feed.publish([added("a"), added("b")]);
        feed.publish([added("c")]);
        assert_eq!(feed.latest(), base + 3);
        let all = feed.read_after(base, 10).unwrap();
        assert_eq!(revisions(&all), [base + 1, base + 2, base + 3]);
        assert_eq!(all[2].change, added("c"));
        assert_eq!(
            revisions(&feed.read_after(base + 1, 1).unwrap()),
            [base + 2]
        );
        assert!(feed.read_after(base + 3, 10).unwrap().is_empty());
    }

    #[test]
    fn a_reader_too_far_behind_or_from_another_epoch_is_told_to_start_again() {
        let feed = Feed::new(1, 2);
        let base = 1 << EPOCH_SHIFT;
        feed.publish([added("a"), added("b"), added("c")]);
        // Only b and c are kept: resuming after a (base+1) still works.
        assert_eq!(
            revisions(&feed.read_after(base + 1, 10).unwrap()),
            [base + 2, base + 3]
        );
        assert_eq!(
            feed.read_after(base, 10).unwrap_err(),
            FeedError::Compacted {
                revision: base,
                oldest: base + 1
            }
        );
        // A revision of the previous scheduler process.
        assert!(matches!(
            feed.read_after(5, 10),
            Err(FeedError::Compacted { .. })
        ));
        assert_eq!(
            feed.read_after(base + 4, 10).unwrap_err(),
            FeedError::Future {
                revision: base + 4,
                latest: base + 3
            }
        );
    }

    #[test]
    fn nodes_publish_record_and_state_changes_but_not_live_figures() {
        let feed = Feed::new(0, 100);
        let n = pb::Node {
            name: "n1".into(),
            cpus: 2,
            ..Default::default()
        };
        feed.seed_nodes([n.clone()]);
        feed.node_state("n1", pb::NodeState::Ready);
        // Same state again, and a record differing only in live figures.
        feed.node_state("n1", pb::NodeState::Ready);
        feed.node_record(&pb::Node {
            container_count: 7,
            last_seen: Some(prost_types::Timestamp::default()),
            ..n.clone()
        });
        feed.node_record(&pb::Node {
            cordoned: true,
            ..n.clone()
        });
        feed.node_state("n1", pb::NodeState::Down);
        // A node the feed never saw has no state to change.
        feed.node_state("ghost", pb::NodeState::Down);
        let all = feed.read_after(0, 10).unwrap();
        let states: Vec<_> = all
            .iter()
            .map(|e| match &e.change {
                Change::Node(d) => {
                    let after = d.after.as_ref().unwrap();
                    (after.state(), after.cordoned)
                }
                other => panic!("not a node change: {other:?}"),
            })
            .collect();
        assert_eq!(
            states,
            [
                (pb::NodeState::Ready, false),
                (pb::NodeState::Ready, true),
                (pb::NodeState::Down, true),
            ]
        );
        let (latest, nodes) = feed.nodes_at();
        assert_eq!(latest, 3);
        assert_eq!(nodes[0].state(), pb::NodeState::Down);
        assert_eq!(nodes[0].container_count, 0);
    }

    #[tokio::test]
    async fn subscribers_hear_of_new_revisions() {
        let feed = Feed::new(0, 10);
        let mut rx = feed.subscribe();
        feed.publish([added("a")]);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);
    }
}
