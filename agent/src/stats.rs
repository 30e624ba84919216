//! Live usage: one engine stats stream per running devctl container of this
//! node (started when a container is seen running, dropped when it stops),
//! and one report per interval on the bus with the node's usage and each
//! container's latest sample. Stopped containers cost nothing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use devctl_proto::pb;
use futures::StreamExt;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{bus::Bus, dispatch::Dispatcher, host::HostSampler, runtime::ContainerRuntime};

/// Runs until `stop`: reconciles stats streams with the running containers
/// and publishes a report every `interval`.
pub async fn run<R: ContainerRuntime>(
    dispatcher: Arc<Dispatcher<R>>,
    bus: Bus,
    node: String,
    data_root: String,
    interval: Duration,
    memory_used_percent: Option<f64>,
    stop: CancellationToken,
) {
    // std lock: sample tasks insert, the reporter copies; never held
    // across an await.
    let latest: Arc<Mutex<HashMap<String, pb::ContainerStats>>> = Arc::default();
    let mut streams: HashMap<String, AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut host = HostSampler::new(data_root.into(), memory_used_percent);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while tasks.try_join_next().is_some() {}
        let running = match dispatcher.runtime().running().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "stats: engine does not answer");
                continue;
            }
        };
        // Drop the streams of containers that stopped, start new ones.
        streams.retain(|id, handle| {
            let keep = running.iter().any(|r| r.id == *id) && !handle.is_finished();
            if !keep {
                handle.abort();
                latest.lock().expect("stats lock").remove(id);
            }
            keep
        });
        for c in &running {
            if streams.contains_key(&c.id) {
                continue;
            }
            let mut samples = dispatcher.runtime().stats(c);
            let latest = Arc::clone(&latest);
            let id = c.id.clone();
            let handle = tasks.spawn(async move {
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
            streams.insert(c.id.clone(), handle);
        }
        let containers: Vec<pb::ContainerStats> = {
            let latest = latest.lock().expect("stats lock");
            running
                .iter()
                .filter_map(|r| latest.get(&r.id).cloned())
                .collect()
        };
        let report = pb::StatsReport {
            node: Some(host.sample(&node, running.len() as i32)),
            containers,
        };
        if let Err(e) = bus.stats(&report).await {
            tracing::warn!(error = %e, "stats report not sent");
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}
