//! The engine-event loop: one reader of the scheduler's durable consumer,
//! and workers that handle the events.
//!
//! Events of one container are handled in order, by one worker; events of
//! different containers are handled at once. A worker stands for one node
//! and one of [`SHARDS_PER_NODE`] shards of its containers (by container
//! id): an event that waits (for its container's operation lock, or for an
//! agent that does not answer) holds up only its own shard of its own node,
//! never the other nodes. Each worker has a bounded queue; when it is full
//! the reader waits, and the server holds back more than
//! [`bus::ENGINE_EVENTS_IN_FLIGHT`] unacknowledged events: back-pressure
//! all the way to JetStream.
//!
//! An event whose handling fails is asked for again after a backoff that
//! grows with its deliveries, and given up (logged) after
//! [`bus::ENGINE_EVENT_MAX_DELIVER`]; the next inventory sync of its node
//! brings the record in line anyway.
//!
//! ```text
//! JetStream --pull--> reader --(node, shard)--> worker --> Cluster::engine_event
//!                                                       (node: the subject's)
//!     ^                                           |
//!     +------------- ack / nak(backoff) / term ---+
//! ```

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

use devctl_proto::validate;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    bus::{self, Bus, EngineEventMsg, EngineEvents},
    cluster::Cluster,
};

/// Workers per node.
pub const SHARDS_PER_NODE: u64 = 8;
/// Events queued per worker before the reader waits.
const QUEUE: usize = 64;

/// The backoff before the `deliveries`+1-th attempt at an event.
fn retry_delay(deliveries: i64) -> Duration {
    let exp = deliveries.clamp(1, 8) as u32 - 1;
    (Duration::from_millis(250) * 2u32.pow(exp)).min(Duration::from_secs(30))
}

/// Which worker handles events of container `id` on `node`.
fn shard_of(node: &str, id: &str) -> (String, u64) {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    (node.to_string(), h.finish() % SHARDS_PER_NODE)
}

/// Handles engine events until `stop` is cancelled; each is acknowledged
/// only once handled, so one that fails comes again. Returns once every
/// worker has finished the event it was handling (queued ones come again:
/// they were not acknowledged).
pub async fn run(cluster: Cluster, bus: Bus, mut events: EngineEvents, stop: CancellationToken) {
    let workers = TaskTracker::new();
    // Owned here: dropping it ends the workers.
    let mut queues: HashMap<(String, u64), mpsc::Sender<EngineEventMsg>> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            msg = events.next() => match msg {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "engine event stream");
                    continue;
                }
                None => {
                    // The consumer ended (e.g. the server went away): it is
                    // durable, so take it up again where it stopped.
                    tracing::warn!(?backoff, "engine event consumer ended; resubscribing");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    match bus.engine_events().await {
                        Ok(e) => events = e,
                        Err(e) => tracing::warn!(error = %e, "resubscribing to engine events"),
                    }
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        let key = match &msg.event {
            Ok(ev)
                if validate::dns_label("node", &msg.node).is_ok()
                    // A resync is about the node, not one container.
                    && (ev.action == devctl_proto::bus::RESYNC_ACTION
                        || validate::dns_label("name", &ev.name).is_ok()) =>
            {
                shard_of(&msg.node, &ev.id)
            }
            Ok(ev) => {
                tracing::warn!(node = %msg.node, name = %ev.name, "engine event with invalid names dropped");
                ack(&msg).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable engine event dropped");
                ack(&msg).await;
                continue;
            }
        };
        let queue = queues.entry(key).or_insert_with_key(|(node, shard)| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tracing::debug!(node, shard, "engine event worker started");
            workers.spawn(worker(cluster.clone(), rx, stop.clone()));
            tx
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            sent = queue.send(msg) => if sent.is_err() {
                break; // a worker ended: only at stop
            },
        }
    }
    drop(queues);
    workers.close();
    workers.wait().await;
}

async fn ack(msg: &EngineEventMsg) {
    if let Err(e) = msg.ack().await {
        tracing::warn!(error = %e, "engine event not acknowledged; it will come again");
    }
}

/// Handles the events of one shard, in order, until its queue closes or
/// `stop` is cancelled.
async fn worker(
    cluster: Cluster,
    mut queue: mpsc::Receiver<EngineEventMsg>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = queue.recv() => match msg {
                Some(msg) => msg,
                None => return,
            },
        };
        let Ok(ev) = &msg.event else {
            continue; // the reader only queues decoded events
        };
        match cluster.engine_event(&msg.node, ev).await {
            Ok(()) => ack(&msg).await,
            Err(e) => {
                let n = msg.deliveries();
                if n >= bus::ENGINE_EVENT_MAX_DELIVER {
                    tracing::error!(error = %e, node = %msg.node, name = %ev.name, action = %ev.action, deliveries = n, "engine event given up; the next inventory sync of its node reconciles the container");
                    if let Err(e) = msg.give_up().await {
                        tracing::warn!(error = %e, "engine event not given up");
                    }
                } else {
                    let delay = retry_delay(n);
                    tracing::warn!(error = %e, node = %msg.node, name = %ev.name, deliveries = n, ?delay, "engine event not handled; it comes again");
                    if let Err(e) = msg.retry_after(delay).await {
                        tracing::warn!(error = %e, "engine event not sent back");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_a_bound() {
        assert_eq!(retry_delay(1), Duration::from_millis(250));
        assert_eq!(retry_delay(2), Duration::from_millis(500));
        assert_eq!(retry_delay(4), Duration::from_secs(2));
        assert_eq!(retry_delay(100), Duration::from_secs(30));
        assert_eq!(retry_delay(0), Duration::from_millis(250));
    }

    #[test]
    fn one_containers_events_go_to_one_worker_of_its_node() {
        assert_eq!(shard_of("a", "c1"), shard_of("a", "c1"));
        assert_ne!(shard_of("a", "c1").0, shard_of("b", "c1").0);
        // Containers spread over the node's shards.
        let shards: std::collections::HashSet<u64> = (0..200)
            .map(|i| shard_of("a", &format!("c{i}")).1)
            .collect();
        assert_eq!(shards.len() as u64, SHARDS_PER_NODE);
    }
}
