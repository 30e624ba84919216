//! Live usage: one report per interval on the bus with the node's usage and
//! a sample of each running devctl container.
//!
//! A container's sample is read from its cgroup files ([`crate::cgroup`]),
//! which costs the engine nothing. Only a container whose files cannot be
//! read (a custom cgroup parent, files not mounted into the agent's
//! container) gets an engine stats stream, started when it is seen
//! running and dropped when it stops; `--stats-source engine` uses the
//! engine for every container. Stopped containers cost nothing.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use devctl_proto::pb;
use futures::StreamExt;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    bus::Bus,
    cgroup::{Cgroups, Location, Version},
    config::StatsSource,
    dispatch::Dispatcher,
    host::HostSampler,
    runtime::{ContainerRuntime, Running},
};

/// How often the cgroup sampler lists the engine's running containers (the
/// engine path lists them every round).
const LIST_EVERY: Duration = Duration::from_secs(5);

/// How the stats loop samples.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time between reports.
    pub interval: Duration,
    /// Where container samples come from.
    pub source: StatsSource,
    /// The cgroup mount.
    pub cgroup_root: PathBuf,
    /// The host's /proc.
    pub proc_root: PathBuf,
    /// The node's memory: the limit reported for a container without one.
    pub node_memory_bytes: i64,
    /// Reported instead of the measured memory use (tests).
    pub memory_used_percent: Option<f64>,
    /// Shift of the reports' times, in seconds (tests: a skewed clock).
    pub clock_skew_secs: Option<i64>,
}

/// Runs until `stop`: samples the running containers and publishes a
/// report every `options.interval`.
pub async fn run<R: ContainerRuntime>(
    dispatcher: Arc<Dispatcher<R>>,
    bus: Bus,
    node: String,
    data_root: String,
    options: Options,
    stop: CancellationToken,
) {
    let mut host = HostSampler::new(data_root.into(), options.memory_used_percent);
    let mut cgroups = (options.source == StatsSource::Auto).then(|| {
        let cg = Cgroups::detect(&options.cgroup_root, &options.proc_root);
        let version = match cg.version() {
            Version::V1 => "v1",
            Version::V2 => "v2",
        };
        tracing::info!(root = %cg.root().display(), version, "container usage from cgroup files");
        CgroupSampler::new(cg, options.node_memory_bytes)
    });
    if cgroups.is_none() {
        tracing::info!("container usage from the engine's stats API (--stats-source engine)");
    }
    let mut engine = EngineStreams::default();
    let mut running = Vec::new();
    let mut listed_at = None;
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Reading the files needs no listing each round: a container that
        // stops loses its cgroup at once. New ones are seen at the next
        // listing.
        let due = cgroups.is_none() || listed_at.is_none_or(|t: Instant| t.elapsed() >= LIST_EVERY);
        if due {
            match dispatcher.runtime().running().await {
                Ok(r) => {
                    running = r;
                    listed_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stats: engine does not answer");
                    continue;
                }
            }
        }
        let (mut containers, from_engine, stopped) = match cgroups.take() {
            Some(mut sampler) => {
                let listed = running.clone();
                let node = node.clone();
                // Small synchronous reads of sysfs; off the runtime's
                // threads all the same.
                match tokio::task::spawn_blocking(move || {
                    let read = sampler.sample(&node, &listed, due);
                    (sampler, read)
                })
                .await
                {
                    Ok((sampler, read)) => {
                        cgroups = Some(sampler);
                        read
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cgroup sampler failed; using the engine from now on");
                        (Vec::new(), running.clone(), 0)
                    }
                }
            }
            None => (Vec::new(), running.clone(), 0),
        };
        containers.extend(engine.sample(&*dispatcher, &from_engine));
        let mut report = pb::StatsReport {
            node: Some(host.sample(&node, (running.len() - stopped) as i32)),
            containers,
        };
        if let Some(skew) = options.clock_skew_secs {
            skew_times(&mut report, skew);
        }
        if let Err(e) = bus.stats(&report).await {
            tracing::warn!(error = %e, "stats report not sent");
        }
    }
    engine.stop().await;
}

/// Shifts every time in `report` by `secs` seconds.
fn skew_times(report: &mut pb::StatsReport, secs: i64) {
    let shift = |t: &mut Option<prost_types::Timestamp>| {
        if let Some(t) = t {
            t.seconds += secs;
        }
    };
    if let Some(n) = report.node.as_mut() {
        shift(&mut n.time);
    }
    for c in &mut report.containers {
        shift(&mut c.time);
    }
}

/// Samples containers from their cgroup files; remembers where each one's
/// files are and its last CPU reading.
#[derive(Debug)]
struct CgroupSampler {
    cgroups: Cgroups,
    node_memory_bytes: i64,
    /// By engine id: where its files are (`None`: not found or not
    /// readable, the engine samples it) and the last (CPU ns, time) read.
    seen: HashMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    at: Option<Location>,
    last: Option<(u64, Instant)>,
    // Said once that the engine samples it.
    told: bool,
    // Its cgroup went away since the last listing.
    stopped: bool,
}

impl CgroupSampler {
    fn new(cgroups: Cgroups, node_memory_bytes: i64) -> Self {
        Self {
            cgroups,
            node_memory_bytes,
            seen: HashMap::new(),
        }
    }

    /// Samples of the containers whose files can be read, the containers
    /// left to the engine, and how many of `running` have stopped since
    /// they were listed. `listed`: `running` is a new listing.
    fn sample(
        &mut self,
        node: &str,
        running: &[Running],
        listed: bool,
    ) -> (Vec<pb::ContainerStats>, Vec<Running>, usize) {
        if listed {
            let ids: HashSet<&str> = running.iter().map(|r| r.runtime_id.as_str()).collect();
            self.seen.retain(|id, _| ids.contains(id.as_str()));
            for s in self.seen.values_mut() {
                s.stopped = false;
            }
        }
        let (mut samples, mut engine, mut stopped) = (Vec::new(), Vec::new(), 0);
        for c in running {
            let seen = self.seen.entry(c.runtime_id.clone()).or_insert(Seen {
                at: None,
                last: None,
                told: false,
                stopped: false,
            });
            if seen.stopped {
                stopped += 1;
                continue;
            }
            // Not found (yet): look again each round; the engine samples it
            // meanwhile.
            if seen.at.is_none() {
                seen.at = self.cgroups.locate(&c.runtime_id);
            }
            let Some(at) = &seen.at else {
                if !seen.told {
                    seen.told = true;
                    tracing::info!(
                        name = %c.name,
                        root = %self.cgroups.root().display(),
                        "container's cgroup files not found (custom cgroup parent?); its usage comes from the engine"
                    );
                }
                engine.push(c.clone());
                continue;
            };
            let usage = match self.cgroups.read(at) {
                Ok(u) => u,
                Err(_) if self.cgroups.locate(&c.runtime_id).is_none() => {
                    // Its cgroup went away: it stopped since the listing.
                    seen.stopped = true;
                    seen.at = None;
                    seen.last = None;
                    stopped += 1;
                    continue;
                }
                Err(e) => {
                    // There but not readable here: the engine knows.
                    if !seen.told {
                        seen.told = true;
                        tracing::info!(name = %c.name, error = %e, "container's cgroup files not readable; its usage comes from the engine");
                    }
                    seen.at = None;
                    seen.last = None;
                    engine.push(c.clone());
                    continue;
                }
            };
            let now = Instant::now();
            let cpu_percent = match seen.last {
                Some((ns, t)) if now > t => {
                    usage.cpu_ns.saturating_sub(ns) as f64 / now.duration_since(t).as_nanos() as f64
                        * 100.0
                }
                _ => 0.0,
            };
            seen.last = Some((usage.cpu_ns, now));
            let limit = usage.memory_limit_bytes.map(|l| l as i64);
            let node_memory = (self.node_memory_bytes > 0).then_some(self.node_memory_bytes);
            samples.push(pb::ContainerStats {
                name: c.name.clone(),
                id: c.id.clone(),
                node: node.to_string(),
                time: Some(SystemTime::now().into()),
                cpu_percent,
                memory_bytes: usage.memory_bytes as i64,
                memory_limit_bytes: match (limit, node_memory) {
                    (Some(l), Some(n)) => l.min(n),
                    (l, n) => l.or(n).unwrap_or(0),
                },
                network_rx_bytes: usage.network_rx_bytes as i64,
                network_tx_bytes: usage.network_tx_bytes as i64,
                block_read_bytes: usage.block_read_bytes as i64,
                block_write_bytes: usage.block_write_bytes as i64,
                pids: usage.pids as i64,
            });
        }
        (samples, engine, stopped)
    }
}

/// Engine stats streams, one per container left to the engine; each keeps
/// its latest sample.
#[derive(Debug, Default)]
struct EngineStreams {
    // std lock: sample tasks insert, the reporter copies; never held
    // across an await.
    latest: Arc<Mutex<HashMap<String, pb::ContainerStats>>>,
    streams: HashMap<String, AbortHandle>,
    tasks: JoinSet<()>,
}

impl EngineStreams {
    /// Reconciles the streams with `containers` (drops the others' streams,
    /// starts missing ones) and returns their latest samples.
    fn sample<R: ContainerRuntime>(
        &mut self,
        dispatcher: &Dispatcher<R>,
        containers: &[Running],
    ) -> Vec<pb::ContainerStats> {
        while self.tasks.try_join_next().is_some() {}
        let latest = &self.latest;
        self.streams.retain(|id, handle| {
            let keep = containers.iter().any(|r| r.id == *id) && !handle.is_finished();
            if !keep {
                handle.abort();
                latest.lock().expect("stats lock").remove(id);
            }
            keep
        });
        for c in containers {
            if self.streams.contains_key(&c.id) {
                continue;
            }
            let mut samples = dispatcher.runtime().stats(c);
            let latest = Arc::clone(&self.latest);
            let id = c.id.clone();
            let handle = self.tasks.spawn(async move {
                while let Some(s) = samples.next().await {
                    match s {
                        Ok(s) => {
                            latest.lock().expect("stats lock").insert(id.clone(), s);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "stats stream ended");
                            break;
                        }
                    }
                }
                latest.lock().expect("stats lock").remove(&id);
            });
            self.streams.insert(c.id.clone(), handle);
        }
        let latest = self.latest.lock().expect("stats lock");
        containers
            .iter()
            .filter_map(|r| latest.get(&r.id).cloned())
            .collect()
    }

    async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}
