//! The latest usage samples, in memory only (they are live data, not
//! history), and a broadcast of new ones for watchers.
//!
//! Container samples are kept by container id (a name can be taken again
//! by a new container at once), and a sample is fresh for [`FRESH`] after
//! the scheduler received it, by the scheduler's own clock: an agent's clock
//! may be skewed either way.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use devctl_proto::pb;
use tokio::sync::broadcast;

/// Samples received longer ago than this are gone (their node stopped
/// reporting).
const FRESH: Duration = Duration::from_secs(10);
/// Updates a watcher may fall behind by before it skips ahead.
const WATCH_BACKLOG: usize = 4096;

/// A sample and when it arrived.
#[derive(Debug)]
struct Received<T> {
    sample: T,
    at: Instant,
}

impl<T> Received<T> {
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < FRESH
    }
}

#[derive(Debug, Default)]
struct Latest {
    nodes: HashMap<String, Received<pb::NodeStats>>,
    // By container id.
    containers: HashMap<String, Received<pb::ContainerStats>>,
    // Name -> id of the newest sample under that name.
    ids: HashMap<String, String>,
    // Ids of removed containers, and when: a report sent before the
    // removal and received after it must not bring them back.
    removed: HashMap<String, Instant>,
}

impl Latest {
    /// The sample of container `name`'s current id.
    fn by_name(&self, name: &str) -> Option<&Received<pb::ContainerStats>> {
        self.containers.get(self.ids.get(name)?)
    }
}

/// Latest samples per node and container.
#[derive(Debug)]
pub struct StatsCache {
    // std lock: short map operations, never held across an await.
    latest: RwLock<Latest>,
    updates: broadcast::Sender<pb::StatsUpdate>,
}

impl Default for StatsCache {
    fn default() -> Self {
        Self {
            latest: RwLock::default(),
            updates: broadcast::channel(WATCH_BACKLOG).0,
        }
    }
}

impl StatsCache {
    /// Takes in one node's report: its containers' samples replace the
    /// node's previous ones (a container missing from it has stopped).
    pub fn ingest(&self, mut report: pb::StatsReport) {
        let Some(node) = report.node.take() else {
            return;
        };
        let watching = self.updates.receiver_count() > 0;
        let at = Instant::now();
        {
            let mut latest = self.latest.write().expect("stats lock");
            let latest = &mut *latest;
            latest
                .removed
                .retain(|_, t| at.saturating_duration_since(*t) < FRESH);
            report
                .containers
                .retain(|c| !latest.removed.contains_key(&c.id));
            latest.containers.retain(|_, c| c.sample.node != node.node);
            for c in &report.containers {
                latest.ids.insert(c.name.clone(), c.id.clone());
                latest.containers.insert(
                    c.id.clone(),
                    Received {
                        sample: c.clone(),
                        at,
                    },
                );
            }
            let containers = &latest.containers;
            latest.ids.retain(|_, id| containers.contains_key(id));
            latest.nodes.insert(
                node.node.clone(),
                Received {
                    sample: node.clone(),
                    at,
                },
            );
        }
        if watching {
            let _ = self.updates.send(pb::StatsUpdate {
                sample: Some(pb::stats_update::Sample::Node(node)),
            });
            for c in report.containers {
                let _ = self.updates.send(pb::StatsUpdate {
                    sample: Some(pb::stats_update::Sample::Container(c)),
                });
            }
        }
    }

    /// Drops the samples of a removed container (by id), now and from
    /// reports still on their way.
    pub fn forget(&self, id: &str) {
        let mut latest = self.latest.write().expect("stats lock");
        if let Some(c) = latest.containers.remove(id)
            && latest.ids.get(&c.sample.name).is_some_and(|i| i == id)
        {
            latest.ids.remove(&c.sample.name);
        }
        latest.removed.insert(id.to_string(), Instant::now());
    }

    /// Fresh samples of the named containers (all if `names` is empty) and
    /// of every node, by name.
    pub fn get(&self, names: &[String]) -> pb::GetStatsResponse {
        let latest = self.latest.read().expect("stats lock");
        let now = Instant::now();
        let mut containers: Vec<pb::ContainerStats> = if names.is_empty() {
            latest
                .ids
                .values()
                .filter_map(|id| latest.containers.get(id))
                .filter(|c| c.fresh(now))
                .map(|c| c.sample.clone())
                .collect()
        } else {
            names
                .iter()
                .filter_map(|n| latest.by_name(n))
                .filter(|c| c.fresh(now))
                .map(|c| c.sample.clone())
                .collect()
        };
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        containers.dedup_by(|a, b| a.id == b.id);
        let mut nodes: Vec<pb::NodeStats> = latest
            .nodes
            .values()
            .filter(|n| n.fresh(now))
            .map(|n| n.sample.clone())
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        pb::GetStatsResponse { containers, nodes }
    }

    /// The fresh sample of `node`.
    pub fn node(&self, node: &str) -> Option<pb::NodeStats> {
        let latest = self.latest.read().expect("stats lock");
        latest
            .nodes
            .get(node)
            .filter(|n| n.fresh(Instant::now()))
            .map(|n| n.sample.clone())
    }

    /// CPU use (percent of one CPU) in the fresh sample of container
    /// `name`.
    pub fn container_cpu(&self, name: &str) -> Option<f64> {
        let latest = self.latest.read().expect("stats lock");
        latest
            .by_name(name)
            .filter(|c| c.fresh(Instant::now()))
            .map(|c| c.sample.cpu_percent)
    }

    /// New samples from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::StatsUpdate> {
        self.updates.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn report(node: &str, containers: &[&str]) -> pb::StatsReport {
        let now = Some(SystemTime::now().into());
        pb::StatsReport {
            node: Some(pb::NodeStats {
                node: node.into(),
                time: now,
                ..Default::default()
            }),
            containers: containers
                .iter()
                .map(|c| pb::ContainerStats {
                    name: c.to_string(),
                    id: format!("id-{c}"),
                    node: node.into(),
                    time: now,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_report_replaces_its_nodes_samples() {
        let cache = StatsCache::default();
        cache.ingest(report("n1", &["a", "b"]));
        cache.ingest(report("n2", &["c"]));
        assert_eq!(cache.get(&[]).containers.len(), 3);
        // b stopped on n1.
        cache.ingest(report("n1", &["a"]));
        let names: Vec<String> = cache
            .get(&[])
            .containers
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(cache.get(&["c".into()]).containers.len(), 1);
        assert_eq!(cache.get(&[]).nodes.len(), 2);
    }

    #[test]
    fn freshness_is_the_time_of_receipt_not_the_agents_clock() {
        let cache = StatsCache::default();
        // An agent whose clock is behind, and one whose clock is ahead.
        for (node, skew) in [("n1", -60i64), ("n2", 3600)] {
            let mut r = report(node, &[node]);
            let d = Duration::from_secs(skew.unsigned_abs());
            let t = Some(prost_types::Timestamp::from(if skew < 0 {
                SystemTime::now() - d
            } else {
                SystemTime::now() + d
            }));
            r.node.as_mut().unwrap().time = t;
            r.containers[0].time = t;
            cache.ingest(r);
        }
        let got = cache.get(&[]);
        assert_eq!((got.containers.len(), got.nodes.len()), (2, 2));
        // Received longer ago than FRESH: gone, whatever the agent's time.
        {
            let mut latest = cache.latest.write().unwrap();
            let long_ago = Instant::now() - FRESH;
            for c in latest.containers.values_mut() {
                c.at = long_ago;
            }
            for n in latest.nodes.values_mut() {
                n.at = long_ago;
            }
        }
        let got = cache.get(&[]);
        assert!(got.containers.is_empty() && got.nodes.is_empty());
        assert_eq!(cache.container_cpu("n2"), None);
        assert_eq!(cache.node("n2"), None);
    }

    #[test]
    fn a_removed_container_leaves_no_sample_for_its_name() {
        let cache = StatsCache::default();
        let mut r = report("n1", &["x"]);
        r.containers[0].cpu_percent = 90.0;
        cache.ingest(r.clone());
        assert_eq!(cache.container_cpu("x"), Some(90.0));
        cache.forget("id-x");
        assert!(cache.get(&["x".into()]).containers.is_empty());
        assert_eq!(cache.container_cpu("x"), None);
        // A report sent before the removal, received after it.
        cache.ingest(r);
        assert!(cache.get(&[]).containers.is_empty());
        // A new container takes the name, on another node.
        let mut new = report("n2", &["x"]);
        new.containers[0].id = "id-x2".into();
        cache.ingest(new);
        let got = cache.get(&["x".into()]).containers;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "id-x2");
        assert_eq!(cache.container_cpu("x"), Some(0.0));
    }

    #[tokio::test]
    async fn watchers_get_new_samples() {
        let cache = StatsCache::default();
        let mut rx = cache.subscribe();
        cache.ingest(report("n1", &["a"]));
        assert!(matches!(
            rx.recv().await.unwrap().sample,
            Some(pb::stats_update::Sample::Node(_))
        ));
        assert!(matches!(
            rx.recv().await.unwrap().sample,
            Some(pb::stats_update::Sample::Container(c)) if c.name == "a"
        ));
    }
}
