//! The projector: one task that connects to the graph server, resumes from
//! the cursor the graph holds (or resyncs), then follows the change feed,
//! the event history and the callers the API saw, writing a batch per
//! round, until the scheduler stops. Failures reconnect with backoff; the
//! API never waits on any of it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::FutureExt;
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    GraphConfig, GraphError, Projection, SEEN_QUEUE, Shared,
    client::{Client, Cursor, ROWS_PER_STATEMENT},
    model::Batch,
};
use crate::{
    bus::{Bus, EventReader, EventStart},
    store::Store,
};

/// Changes (feed entries, or events) taken into one write at most.
const BATCH: usize = 1000;

/// The first and the longest wait before reconnecting.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(15));

/// How often a lagging projection says so in the log.
const LOG_LAG_EVERY: Duration = Duration::from_secs(30);

type Seen = mpsc::Receiver<(String, devctl_proto::identity::Role, SystemTime)>;

/// Starts the projection into the graph `config` names, from `store`'s
/// feed and `bus`'s event history, until `stop`.
pub fn start(
    config: GraphConfig,
    store: Store,
    bus: Bus,
    stop: CancellationToken,
) -> (Projection, JoinHandle<()>) {
    let (seen_tx, seen_rx) = mpsc::channel(SEEN_QUEUE);
    let projection = Projection {
        shared: Arc::new(Shared {
            config,
            store,
            progress: Mutex::default(),
            client: Mutex::new(None),
            resync: Notify::new(),
            seen_tx,
            seen: Mutex::new(HashMap::new()),
        }),
    };
    let task = tokio::spawn(run(projection.clone(), bus, seen_rx, stop));
    (projection, task)
}

async fn run(p: Projection, bus: Bus, mut seen: Seen, stop: CancellationToken) {
    let mut wait = BACKOFF.0;
    // A resync asked for (or needed) before the next round.
    let mut full = false;
    loop {
        let round = async {
            let client = Client::connect(&p.shared.config).await?;
            client.ensure_schema().await?;
            *p.shared.client.lock().expect("graph client lock") = Some(client.clone());
            tracing::info!(uri = %p.uri(), "graph projection connected");
            follow(&p, &client, &bus, &mut seen, &mut full, &mut wait, &stop).await
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = round => r,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                let first = {
                    let mut pr = p.progress();
                    let first = pr.connected || pr.last_error.is_empty();
                    pr.connected = false;
                    pr.resyncing = false;
                    pr.last_error = e.to_string();
                    first
                };
                if first {
                    tracing::warn!(uri = %p.uri(), error = %e, "graph projection paused; retrying with backoff (the API is not affected)");
                } else {
                    tracing::debug!(error = %e, "graph projection retry failed");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = p.shared.resync.notified() => full = true,
        }
        wait = (wait * 2).min(BACKOFF.1);
    }
}

/// Resumes from the graph's cursor and follows until `stop` (Ok) or a
/// failure (Err).
async fn follow(
    p: &Projection,
    client: &Client,
    bus: &Bus,
    seen: &mut Seen,
    full: &mut bool,
    wait: &mut Duration,
    stop: &CancellationToken,
) -> Result<(), GraphError> {
    let feed = p.shared.store.feed();
    let mut cursor = client.cursor().await?;
    if *full {
        cursor.event_sequence = 0;
    }
    if *full || cursor.revision == 0 || feed.read_after(cursor.revision, 0).is_err() {
        cursor.revision = resync(p, client, cursor).await?;
        *full = false;
    }
    record(p, cursor, None);
    let mut events = open_events(bus, cursor.event_sequence).await?;
    let mut latest = feed.subscribe();
    let mut batch = Batch::default();
    loop {
        latest.borrow_and_update();
        match feed.read_after(cursor.revision, BATCH) {
            Ok(entries) => entries.iter().for_each(|e| batch.add_change(e)),
            Err(e) => {
                tracing::warn!(error = %e, "graph projection fell behind the change feed: resynchronising from the store");
                cursor.revision = resync(p, client, cursor).await?;
                continue;
            }
        }
        let mut pending = None;
        while batch.len() < 2 * BATCH {
            match events.next().now_or_never() {
                Some(Some(Ok((ev, left)))) => {
                    batch.add_event(&ev);
                    pending = Some(left);
                }
                Some(Some(Err(e))) => return Err(GraphError::Source(e.to_string())),
                Some(None) => return Err(GraphError::Source("the event history ended".into())),
                None => break,
            }
        }
        while let Ok((name, role, at)) = seen.try_recv() {
            batch.add_user(&name, role, at);
        }
        if !batch.is_empty() {
            let next = Cursor {
                revision: batch.revision.unwrap_or(cursor.revision),
                event_sequence: batch.event_sequence.unwrap_or(cursor.event_sequence),
            };
            client.write(&batch, next).await?;
            cursor = next;
            record(p, cursor, pending);
            *wait = BACKOFF.0;
            batch = Batch::default();
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            changed = latest.changed() => if changed.is_err() { return Ok(()) },
            ev = events.next() => match ev {
                Some(Ok((ev, left))) => {
                    batch.add_event(&ev);
                    p.progress().events_pending = left;
                }
                Some(Err(e)) => return Err(GraphError::Source(e.to_string())),
                None => return Err(GraphError::Source("the event history ended".into())),
            },
            s = seen.recv() => if let Some((name, role, at)) = s {
                batch.add_user(&name, role, at);
            },
            _ = p.shared.resync.notified() => {
                *full = true;
                cursor.event_sequence = 0;
                cursor.revision = resync(p, client, cursor).await?;
                *full = false;
                record(p, cursor, None);
                events = open_events(bus, 0).await?;
            }
        }
    }
}

async fn open_events(bus: &Bus, after: u64) -> Result<EventReader, GraphError> {
    let start = if after == 0 {
        EventStart::All
    } else {
        EventStart::Sequence(after + 1)
    };
    bus.watch_events(String::new(), start)
        .await
        .map_err(|e| GraphError::Source(e.to_string()))
}

/// Notes a successful write reaching `cursor`, with `pending` events left
/// in the history (when known), and logs the lag now and then.
fn record(p: &Projection, cursor: Cursor, pending: Option<u64>) {
    let now = SystemTime::now();
    let log = {
        let mut pr = p.progress();
        if !pr.connected {
            pr.last_error.clear();
        }
        pr.connected = true;
        pr.revision = cursor.revision;
        pr.event_sequence = cursor.event_sequence;
        pr.last_write = Some(now);
        if let Some(left) = pending {
            if left == 0 {
                pr.events_behind_since = None;
            } else if pr.events_pending == 0 || pr.events_behind_since.is_none() {
                pr.events_behind_since = Some(now);
            }
            pr.events_pending = left;
        }
        let due = pr.logged.is_none_or(|t| t.elapsed() >= LOG_LAG_EVERY);
        if due {
            pr.logged = Some(Instant::now());
        }
        due
    };
    if log {
        let s = p.status();
        if s.lag_changes > 0 {
            tracing::info!(
                lag_changes = s.lag_changes,
                lag_seconds = format!("{:.1}", s.lag_seconds),
                revision = s.projected_revision,
                event_sequence = s.projected_event_sequence,
                "graph projection is behind"
            );
        }
    }
}

/// Writes the store's snapshot (every container and node) again, marks
/// containers it no longer holds deleted, and returns the snapshot's
/// revision, stored as the cursor with the last write.
async fn resync(p: &Projection, client: &Client, cursor: Cursor) -> Result<u64, GraphError> {
    let started = Instant::now();
    p.progress().resyncing = true;
    let snap = p
        .shared
        .store
        .snapshot()
        .await
        .map_err(|e| GraphError::Source(e.to_string()))?;
    let now = SystemTime::now();
    let mut batch = Batch::default();
    snap.nodes.iter().for_each(|n| batch.add_node(n));
    client.write(&batch, cursor).await?;
    for chunk in snap.containers.chunks(ROWS_PER_STATEMENT) {
        let mut batch = Batch::default();
        chunk.iter().for_each(|c| batch.add_container(c, now));
        client.write(&batch, cursor).await?;
    }
    let live = snap.containers.iter().map(|c| c.id.clone()).collect();
    let done = Cursor {
        revision: snap.revision,
        ..cursor
    };
    client.mark_gone(live, done).await?;
    {
        let mut pr = p.progress();
        pr.resyncing = false;
        pr.resyncs += 1;
    }
    tracing::info!(
        containers = snap.containers.len(),
        nodes = snap.nodes.len(),
        revision = snap.revision,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "graph projection resynchronised from the store"
    );
    Ok(snap.revision)
}

/// What a one-off re-projection wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resynced {
    /// Container records written.
    pub containers: usize,
    /// Events read from the history.
    pub events: u64,
}

/// A full re-projection without a running scheduler (`devctl-scheduler
/// graph resync`): the store's snapshot, then every retained event; the
/// cursor is left where a scheduler started next resumes (it resyncs its
/// feed at start, as after any restart).
pub async fn resync_once(
    config: GraphConfig,
    store: Store,
    bus: Bus,
) -> Result<Resynced, GraphError> {
    let (seen_tx, _seen_rx) = mpsc::channel(1);
    let p = Projection {
        shared: Arc::new(Shared {
            config,
            store,
            progress: Mutex::default(),
            client: Mutex::new(None),
            resync: Notify::new(),
            seen_tx,
            seen: Mutex::new(HashMap::new()),
        }),
    };
    let client = Client::connect(&p.shared.config).await?;
    client.ensure_schema().await?;
    let mut cursor = Cursor {
        revision: 0,
        event_sequence: 0,
    };
    cursor.revision = resync(&p, &client, cursor).await?;
    let containers = p
        .shared
        .store
        .snapshot()
        .await
        .map(|s| s.containers.len())
        .unwrap_or(0);
    let mut events = open_events(&bus, 0).await?;
    let mut read = 0;
    let mut batch = Batch::default();
    if events.pending > 0 {
        while let Some(ev) = events.next().await {
            let (ev, left) = ev.map_err(|e| GraphError::Source(e.to_string()))?;
            batch.add_event(&ev);
            read += 1;
            if batch.len() >= BATCH || left == 0 {
                cursor.event_sequence = ev.sequence;
                client.write(&batch, cursor).await?;
                batch = Batch::default();
            }
            if left == 0 {
                break;
            }
        }
    }
    Ok(Resynced {
        containers,
        events: read,
    })
}
