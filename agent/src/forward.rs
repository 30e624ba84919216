//! The engine-event forwarder: engine events in, JetStream out.
//!
//! Reading and publishing are decoupled by a bounded [`queue`]: the engine
//! drops events for a reader that falls behind, so the reader never waits
//! for a publish (which retries until JetStream acknowledges it). When the
//! queue is full an event is dropped and counted instead; the publisher
//! then sends a `resync` event ([`devctl_proto::bus::RESYNC_ACTION`]) with
//! the count, and the scheduler re-reads the node's inventory and records
//! that in the history.
//!
//! ```text
//! engine --events--> reader --queue(N)--> publisher --JetStream--> scheduler
//!                       | full: count             | count > 0: resync event
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use devctl_proto::pb;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{bus::Bus, dispatch::Dispatcher, runtime::ContainerRuntime};

/// What the publisher takes next.
#[derive(Debug, PartialEq)]
pub enum Queued {
    /// An engine event.
    Event(pb::EngineEvent),
    /// This many events were dropped since the last report.
    Dropped(u64),
}

/// The reading end's side of the queue.
#[derive(Debug, Clone)]
pub struct Pusher {
    tx: mpsc::Sender<pb::EngineEvent>,
    shared: Arc<Lost>,
}

/// The publisher's side of the queue.
#[derive(Debug)]
pub struct Taker {
    rx: mpsc::Receiver<pb::EngineEvent>,
    shared: Arc<Lost>,
}

#[derive(Debug, Default)]
struct Lost {
    dropped: AtomicU64,
    wake: Notify,
}

/// A queue of at most `capacity` events (at least one).
pub fn queue(capacity: usize) -> (Pusher, Taker) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Lost::default());
    (
        Pusher {
            tx,
            shared: Arc::clone(&shared),
        },
        Taker { rx, shared },
    )
}

impl Pusher {
    /// Queues `ev`, or counts it as dropped if the queue is full; never
    /// waits.
    pub fn push(&self, ev: pb::EngineEvent) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.tx.try_send(ev) {
            let n = self.shared.dropped.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                tracing::warn!(action = %ev.action, "engine events arrive faster than they are stored; dropping them (the scheduler will re-read this node's inventory)");
            }
            self.shared.wake.notify_one();
        }
    }
}

impl Taker {
    /// The next thing to publish: a loss first (so the scheduler resyncs
    /// promptly), then queued events. `None` once the reader is gone and
    /// everything was taken.
    pub async fn next(&mut self) -> Option<Queued> {
        loop {
            let n = self.shared.dropped.swap(0, Ordering::SeqCst);
            if n > 0 {
                return Some(Queued::Dropped(n));
            }
            tokio::select! {
                biased;
                ev = self.rx.recv() => return ev.map(Queued::Event),
                _ = self.shared.wake.notified() => {}
            }
        }
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// The event that tells the scheduler `dropped` events were lost.
fn resync_event(node: &str, dropped: u64) -> pb::EngineEvent {
    let nanos = now_nanos();
    pb::EngineEvent {
        event_id: format!("{}-{node}-{nanos}", devctl_proto::bus::RESYNC_ACTION),
        node: node.to_string(),
        action: devctl_proto::bus::RESYNC_ACTION.to_string(),
        time: Some(SystemTime::now().into()),
        dropped,
        ..Default::default()
    }
}

/// Forwards the engine's events for `node` to the bus until `stop`,
/// through a queue of `capacity` events.
pub async fn run<R: ContainerRuntime>(
    dispatcher: Arc<Dispatcher<R>>,
    bus: Bus,
    node: String,
    capacity: usize,
    stop: CancellationToken,
) {
    let (pusher, mut taker) = queue(capacity);
    let reader = tokio::spawn(read(dispatcher, pusher, stop.clone()));
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => break,
            item = taker.next() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let ev = match item {
            Queued::Event(ev) => ev,
            Queued::Dropped(n) => {
                tracing::warn!(
                    dropped = n,
                    "engine events were dropped; asking the scheduler to re-read this node's inventory"
                );
                resync_event(&node, n)
            }
        };
        let mut retry = Duration::from_millis(100);
        while let Err(e) = bus.engine_event(&ev).await {
            tracing::warn!(error = %e, action = %ev.action, "engine event not stored yet; retrying");
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(Duration::from_secs(5));
        }
    }
    if let Err(e) = reader.await {
        tracing::error!(error = %e, "engine event reader failed");
    }
}

/// Reads the engine's events into the queue until `stop`; reconnects to
/// the engine from the last event's time after a failure.
async fn read<R: ContainerRuntime>(
    dispatcher: Arc<Dispatcher<R>>,
    queue: Pusher,
    stop: CancellationToken,
) {
    let mut since = now_nanos();
    let mut backoff = Duration::from_millis(100);
    'outer: loop {
        let mut events = dispatcher.runtime().engine_events(since);
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break 'outer,
                ev = events.next() => ev,
            };
            match ev {
                Some(Ok(ev)) => {
                    backoff = Duration::from_millis(100);
                    if let Some(t) = ev.time {
                        since = t.seconds * 1_000_000_000 + i64::from(t.nanos);
                    }
                    queue.push(ev);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "engine event stream failed; reconnecting");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str) -> pb::EngineEvent {
        pb::EngineEvent {
            action: action.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_the_loss_is_reported_first() {
        let (pusher, mut taker) = queue(2);
        for a in ["create", "start", "die", "stop", "destroy"] {
            pusher.push(ev(a));
        }
        assert_eq!(taker.next().await, Some(Queued::Dropped(3)));
        assert_eq!(taker.next().await, Some(Queued::Event(ev("create"))));
        assert_eq!(taker.next().await, Some(Queued::Event(ev("start"))));
        // Nothing lost since: the next event comes as it is.
        pusher.push(ev("start"));
        assert_eq!(taker.next().await, Some(Queued::Event(ev("start"))));
        drop(pusher);
        assert_eq!(taker.next().await, None);
    }

    #[tokio::test]
    async fn a_loss_wakes_a_waiting_publisher() {
        let (pusher, mut taker) = queue(1);
        let waiting = tokio::spawn(async move {
            let first = taker.next().await;
            (first, taker)
        });
        tokio::task::yield_now().await;
        pusher.push(ev("create"));
        let (first, mut taker) = waiting.await.unwrap();
        assert_eq!(first, Some(Queued::Event(ev("create"))));
        // The queue is empty; one fits, the next is dropped.
        pusher.push(ev("start"));
        pusher.push(ev("die"));
        assert_eq!(taker.next().await, Some(Queued::Dropped(1)));
        assert_eq!(taker.next().await, Some(Queued::Event(ev("start"))));
    }
}
