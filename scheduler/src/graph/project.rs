//! The projector: one task that connects to the graph server, resumes from
//! the cursor the graph holds (or resyncs), then follows the change feed,
//! the event history and the callers the API saw, writing a batch per
//! round, until the scheduler stops. Failures reconnect with backoff; the
//! API never waits on any of it.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::FutureExt;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    GraphConfig, GraphError, Projection, SEEN_QUEUE, SeenUser, Shared,
    client::{Client, Cursor, ROWS_PER_STATEMENT},
    model::Batch,
};
use crate::{
    bus::{Bus, EventReader, EventStart},
    store::Store,
};

/// Changes (feed entries, history events, callers) taken into one write at
/// most; halved after a write that ran out of time (down to
/// [`MIN_BATCH`]), doubled back after each one that did not.
const BATCH: usize = 1000;

/// The smallest batch.
const MIN_BATCH: usize = 50;

/// The first and the longest wait before reconnecting.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(15));

/// How often a lagging projection says so in the log.
const LOG_LAG_EVERY: Duration = Duration::from_secs(30);

type Seen = mpsc::Receiver<SeenUser>;

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
        shared: Arc::new(Shared::new(config, store, seen_tx)),
    };
    let task = tokio::spawn(run(projection.clone(), bus, seen_rx, stop));
    (projection, task)
}

/// What one connection's rounds carry over to the next.
#[derive(Debug)]
struct Carry {
    /// A full resync is due (asked for, or a previous one failed midway).
    full: bool,
    /// The current batch limit.
    limit: usize,
    /// The wait before the next reconnect.
    wait: Duration,
}

async fn run(p: Projection, bus: Bus, mut seen: Seen, stop: CancellationToken) {
    let mut carry = Carry {
        full: false,
        limit: BATCH,
        wait: BACKOFF.0,
    };
    loop {
        let round = async {
            let client = Client::connect(&p.shared.config).await?;
            client.ensure_schema().await?;
            tracing::info!(uri = %p.uri(), "graph projection connected");
            follow(&p, &client, &bus, &mut seen, &mut carry, &stop).await
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = round => r,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                if matches!(e, GraphError::Timeout { .. }) {
                    carry.limit = (carry.limit / 2).max(MIN_BATCH);
                }
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
            _ = tokio::time::sleep(carry.wait) => {}
            _ = p.shared.resync.notified() => carry.full = true,
        }
        carry.wait = (carry.wait * 2).min(BACKOFF.1);
    }
}

/// The store's id as the cursor records it.
fn store_id(store: &Store) -> String {
    format!("{:016x}", store.id())
}

/// Resumes from the graph's cursor and follows until `stop` (Ok) or a
/// failure (Err).
async fn follow(
    p: &Projection,
    client: &Client,
    bus: &Bus,
    seen: &mut Seen,
    carry: &mut Carry,
    stop: &CancellationToken,
) -> Result<(), GraphError> {
    let store = &p.shared.store;
    let feed = store.feed();
    let mut cursor = client.cursor().await?;
    let (first, last, created) = bus
        .event_history_bounds()
        .await
        .map_err(|e| GraphError::Source(e.to_string()))?;
    let stream = humantime::format_rfc3339_seconds(created).to_string();
    if cursor.event_stream != stream || cursor.event_sequence > last {
        if cursor.event_sequence > 0 {
            tracing::info!(
                "the event history is not the one the graph's cursor read (made again?): reading it from its start"
            );
        }
        cursor.event_sequence = 0;
        cursor.event_stream = stream;
    }
    if cursor.event_sequence + 1 < first && cursor.event_sequence > 0 {
        tracing::warn!(
            cursor = cursor.event_sequence,
            first,
            "events the graph had not read yet are past the history's retention (--event-retention): sessions among them are missing from the graph"
        );
    }
    if carry.full {
        cursor.event_sequence = 0;
    }
    let mine = store_id(store);
    if carry.full
        || cursor.store != mine
        || cursor.revision == 0
        || feed.read_after(cursor.revision, 0).is_err()
    {
        cursor.store = mine;
        cursor.revision = resync(p, client, &cursor).await?.0;
        carry.full = false;
    }
    p.progress().revision = cursor.revision;
    let mut events = open_events(p, bus, cursor.event_sequence).await?;
    written(p, &cursor);
    let mut latest = feed.subscribe();
    let mut batch = Batch::default();
    loop {
        latest.borrow_and_update();
        match feed.read_after(cursor.revision, carry.limit) {
            Ok(entries) => entries.iter().for_each(|e| batch.add_change(e)),
            Err(e) => {
                tracing::warn!(error = %e, "graph projection fell behind the change feed: resynchronising from the store");
                cursor.revision = resync(p, client, &cursor).await?.0;
                continue;
            }
        }
        while batch.len() < 2 * carry.limit {
            match events.next().now_or_never() {
                Some(Some(Ok((ev, left)))) => take_event(p, &mut batch, &ev, left),
                Some(Some(Err(e))) => return Err(GraphError::Source(e.to_string())),
                Some(None) => return Err(GraphError::Source("the event history ended".into())),
                None => break,
            }
        }
        while batch.len() < 3 * carry.limit
            && let Ok((name, role, at)) = seen.try_recv()
        {
            batch.add_user(&name, role, at);
        }
        if !batch.is_empty() {
            let next = Cursor {
                revision: batch.revision.unwrap_or(cursor.revision),
                event_sequence: batch.event_sequence.unwrap_or(cursor.event_sequence),
                ..cursor.clone()
            };
            client.write(&batch, &next).await?;
            cursor = next;
            written(p, &cursor);
            carry.wait = BACKOFF.0;
            carry.limit = (carry.limit * 2).min(BATCH);
            batch = Batch::default();
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            changed = latest.changed() => if changed.is_err() { return Ok(()) },
            ev = events.next() => match ev {
                Some(Ok((ev, left))) => take_event(p, &mut batch, &ev, left),
                Some(Err(e)) => return Err(GraphError::Source(e.to_string())),
                None => return Err(GraphError::Source("the event history ended".into())),
            },
            s = seen.recv() => if let Some((name, role, at)) = s {
                batch.add_user(&name, role, at);
            },
            _ = p.shared.resync.notified() => {
                cursor.event_sequence = 0;
                cursor.revision = resync(p, client, &cursor).await?.0;
                events = open_events(p, bus, 0).await?;
                written(p, &cursor);
            }
        }
    }
}

/// Adds a history event to `batch`, telling it whether the store still
/// holds the container a creation or removal is about.
fn take_event(p: &Projection, batch: &mut Batch, ev: &devctl_proto::pb::Event, left: u64) {
    let gone = Batch::asks_if_gone(ev)
        && p.shared
            .store
            .container_name_by_id(&ev.container_id)
            .ok()
            .flatten()
            .is_none();
    batch.add_event(ev, gone);
    let at = ev.time.and_then(|t| SystemTime::try_from(t).ok());
    note_events(p, left, at);
}

/// Reads the history after event `after` (0: from its start), noting how
/// many events wait.
async fn open_events(p: &Projection, bus: &Bus, after: u64) -> Result<EventReader, GraphError> {
    let start = if after == 0 {
        EventStart::All
    } else {
        EventStart::Sequence(after + 1)
    };
    let events = bus
        .watch_events(String::new(), start)
        .await
        .map_err(|e| GraphError::Source(e.to_string()))?;
    note_events(p, events.pending, None);
    Ok(events)
}

/// Notes that `pending` events wait in the history after the one read
/// (which happened at `read`, if one was).
fn note_events(p: &Projection, pending: u64, read: Option<SystemTime>) {
    let mut pr = p.progress();
    pr.events_pending = pending;
    if pending == 0 {
        pr.events_oldest = None;
    } else if let Some(t) = read {
        // The next unread event is no older than the one just read.
        pr.events_oldest = Some(t);
    } else if pr.events_oldest.is_none() {
        pr.events_oldest = Some(SystemTime::now());
    }
}

/// Notes a successful write reaching `cursor`, and logs the lag now and
/// then.
fn written(p: &Projection, cursor: &Cursor) {
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

/// Writes the store's snapshot (every container and node) again, stamped
/// with a new generation, marks containers it did not write deleted, and
/// returns the snapshot's revision (stored as the cursor with the last
/// write) and how many containers it wrote. A failure midway leaves the
/// old cursor: the next round resyncs again.
async fn resync(
    p: &Projection,
    client: &Client,
    cursor: &Cursor,
) -> Result<(u64, usize), GraphError> {
    let started = Instant::now();
    p.progress().resyncing = true;
    let snap = p
        .shared
        .store
        .snapshot()
        .await
        .map_err(|e| GraphError::Source(e.to_string()))?;
    let now = SystemTime::now();
    let generation = uuid::Uuid::new_v4().to_string();
    // Until the last write, the cursor stays where it was.
    let before = Cursor {
        revision: 0,
        ..cursor.clone()
    };
    let mut batch = Batch::default();
    snap.nodes.iter().for_each(|n| batch.add_node(n));
    client.write(&batch, &before).await?;
    for chunk in snap.containers.chunks(ROWS_PER_STATEMENT) {
        // What the graph already holds is only updated (its creator,
        // image and predecessor do not change).
        let known = client
            .known(chunk.iter().map(|c| c.id.clone()).collect())
            .await?;
        let mut batch = Batch::default();
        batch.generation = Some(generation.clone());
        chunk
            .iter()
            .for_each(|c| batch.add_known_container(c, now, known.get(&c.id).map(String::as_str)));
        client.write(&batch, &before).await?;
    }
    let done = Cursor {
        revision: snap.revision,
        ..cursor.clone()
    };
    client.mark_gone(&generation, &done).await?;
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
    Ok((snap.revision, snap.containers.len()))
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
/// graph resync`): the store's snapshot, then every retained event. A
/// scheduler started next resyncs its feed (as after any restart) and
/// resumes the history after the last event read here.
pub async fn resync_once(
    config: GraphConfig,
    store: Store,
    bus: Bus,
) -> Result<Resynced, GraphError> {
    let (seen_tx, _seen_rx) = mpsc::channel(1);
    let p = Projection {
        shared: Arc::new(Shared::new(config, store, seen_tx)),
    };
    let client = Client::connect(&p.shared.config).await?;
    client.ensure_schema().await?;
    let (_, _, created) = bus
        .event_history_bounds()
        .await
        .map_err(|e| GraphError::Source(e.to_string()))?;
    let mut cursor = Cursor {
        store: store_id(&p.shared.store),
        event_stream: humantime::format_rfc3339_seconds(created).to_string(),
        ..Cursor::default()
    };
    let (revision, containers) = resync(&p, &client, &cursor).await?;
    cursor.revision = revision;
    let mut events = open_events(&p, &bus, 0).await?;
    let mut read = 0;
    let mut batch = Batch::default();
    let mut left = events.pending;
    while left > 0 {
        let next = tokio::time::timeout(p.shared.config.timeout, events.next())
            .await
            .map_err(|_| GraphError::Source("the event history stopped answering".into()))?;
        let Some(ev) = next else { break };
        let (ev, pending) = ev.map_err(|e| GraphError::Source(e.to_string()))?;
        take_event(&p, &mut batch, &ev, pending);
        read += 1;
        left = pending;
        if batch.len() >= BATCH || left == 0 {
            cursor.event_sequence = ev.sequence;
            client.write(&batch, &cursor).await?;
            batch = Batch::default();
        }
    }
    Ok(Resynced {
        containers,
        events: read,
    })
}
