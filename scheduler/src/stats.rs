//! The latest usage samples, in memory only (they are live data, not
//! history), and a broadcast of new ones for watchers.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, SystemTime},
};

use devctl_proto::pb;
use tokio::sync::broadcast;

/// Samples older than this are gone (their node stopped reporting).
const FRESH: Duration = Duration::from_secs(10);
/// Updates a watcher may fall behind by before it skips ahead.
const WATCH_BACKLOG: usize = 4096;

#[derive(Debug, Default)]
struct Latest {
    nodes: HashMap<String, pb::NodeStats>,
    // By container name.
    containers: HashMap<String, pb::ContainerStats>,
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

/// Younger than [`FRESH`] (a time ahead of ours, clock skew, counts as
/// fresh).
fn fresh(t: Option<prost_types::Timestamp>) -> bool {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .is_some_and(|t| {
            SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age < FRESH)
                || t > SystemTime::now()
        })
}

impl StatsCache {
    /// Takes in one node's report: its containers' samples replace the
    /// node's previous ones (a container missing from it has stopped).
    pub fn ingest(&self, report: pb::StatsReport) {
        let Some(node) = report.node else { return };
        let watching = self.updates.receiver_count() > 0;
        {
            let mut latest = self.latest.write().expect("stats lock");
            latest.containers.retain(|_, c| c.node != node.node);
            for c in &report.containers {
                latest.containers.insert(c.name.clone(), c.clone());
            }
            latest.nodes.insert(node.node.clone(), node.clone());
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

    /// Fresh samples of the named containers (all if `names` is empty) and
    /// of every node, by name.
    pub fn get(&self, names: &[String]) -> pb::GetStatsResponse {
        let latest = self.latest.read().expect("stats lock");
        let mut containers: Vec<pb::ContainerStats> = latest
            .containers
            .values()
            .filter(|c| fresh(c.time) && (names.is_empty() || names.contains(&c.name)))
            .cloned()
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut nodes: Vec<pb::NodeStats> = latest
            .nodes
            .values()
            .filter(|n| fresh(n.time))
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        pb::GetStatsResponse { containers, nodes }
    }

    /// The fresh sample of `node`.
    pub fn node(&self, node: &str) -> Option<pb::NodeStats> {
        let latest = self.latest.read().expect("stats lock");
        latest.nodes.get(node).filter(|n| fresh(n.time)).cloned()
    }

    /// CPU use (percent of one CPU) in the fresh sample of container
    /// `name`.
    pub fn container_cpu(&self, name: &str) -> Option<f64> {
        let latest = self.latest.read().expect("stats lock");
        latest
            .containers
            .get(name)
            .filter(|c| fresh(c.time))
            .map(|c| c.cpu_percent)
    }

    /// New samples from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::StatsUpdate> {
        self.updates.subscribe()
    }
}

#[cfg(test)]
mod tests {
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
    fn stale_samples_are_not_served() {
        let cache = StatsCache::default();
        let mut r = report("n1", &["a"]);
        let old = Some((SystemTime::now() - Duration::from_secs(60)).into());
        r.node.as_mut().unwrap().time = old;
        r.containers[0].time = old;
        cache.ingest(r);
        let got = cache.get(&[]);
        assert!(got.containers.is_empty() && got.nodes.is_empty());
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
