//! The graph projection: users, containers, images, hosts and sessions in a
//! Bolt/Cypher server (Neo4j 4.4 or 5.x; CI uses ArcadeDB), kept current
//! from the change feed and the event history, and the analytics read from
//! it (docs/graph.md).
//!
//! The store stays the source of truth; the graph may lag but is never left
//! wrong or incomplete:
//!
//! ```text
//! store commit ─► feed (last 10,000 changes) ─┐
//! JetStream DEVCTL_EVENTS (sessions) ─────────┼─► projector ─► Batch ─► one transaction:
//! API callers (name, role; bounded, lossy) ───┘     (one task)           UNWIND … MERGE rows
//!                                                                        + the cursor node
//! ```
//!
//! - The API never waits on the graph: the feed and the history are read
//!   at the projector's pace. Falling further behind than the feed keeps,
//!   or a cursor from an earlier scheduler process, means a resync: the
//!   store's snapshot is written again (idempotent `MERGE`) and containers
//!   it no longer holds are marked deleted.
//! - The cursor (last feed revision, last event sequence) is stored in the
//!   graph with each batch, in the same transaction: a restarted scheduler
//!   resumes the history where the graph says, and nothing is written twice.
//! - Every Bolt call has a deadline ([`client`]); failures retry with
//!   backoff, and the status ([`Projection::status`]) says how far behind
//!   the graph is.
//!
//! - [`model`]: rows (pure).
//! - [`client`]: the only module that speaks Bolt.
//! - [`project`]: the projector task.
//! - [`insights`]: the analytics queries.

pub mod client;
pub mod insights;
pub mod model;
#[cfg(test)]
mod model_tests;
pub mod project;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use devctl_proto::{identity::Identity, pb};
use thiserror::Error;
use tokio::sync::{Notify, mpsc};

use crate::store::Store;

/// How long one Bolt call may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Callers noted per second at most before the lossy queue drops some.
const SEEN_QUEUE: usize = 256;

/// A caller is noted again after this long (their last activity).
const SEEN_AGAIN: Duration = Duration::from_secs(60);

/// A password that never prints.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The password itself (for the Bolt handshake only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the graph is and how to log in (`serve --neo4j-*`).
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// `bolt://HOST:PORT` (or `neo4j://`, `bolt+s://`, …).
    pub uri: String,
    /// The user.
    pub user: String,
    /// Its password.
    pub password: Secret,
    /// The database (unset: the server's default).
    pub database: Option<String>,
    /// The deadline of each Bolt call.
    pub timeout: Duration,
}

/// A graph operation that failed.
#[derive(Debug, Error)]
pub enum GraphError {
    /// The configuration is unusable.
    #[error("graph configuration: {0}")]
    Config(String),
    /// The server refused or failed.
    #[error("graph server: {what}: {detail}")]
    Server {
        /// What was being done.
        what: &'static str,
        /// What the server or driver said.
        detail: String,
    },
    /// The server did not answer in time.
    #[error("graph server: {what} took longer than {limit:?} (is it running and reachable?)")]
    Timeout {
        /// What was being done.
        what: &'static str,
        /// The deadline.
        limit: Duration,
    },
    /// The store or the event history could not be read.
    #[error("reading the cluster's state: {0}")]
    Source(String),
    /// The graph is not connected now.
    #[error("the graph server is not connected: {0}")]
    Unavailable(String),
}

/// Analytics queries running at once at most (each may read the whole
/// graph; the projector's own connections are not shared with them).
const READERS: usize = 4;

/// The projector's progress, as it records it.
#[derive(Debug, Default)]
struct Progress {
    connected: bool,
    revision: u64,
    event_sequence: u64,
    /// Events stored after the last one read, when it was read.
    events_pending: u64,
    /// When the oldest event not yet written happened (while any is
    /// pending).
    events_oldest: Option<SystemTime>,
    last_write: Option<SystemTime>,
    last_error: String,
    resyncs: u64,
    resyncing: bool,
    /// When the lag was last logged.
    logged: Option<Instant>,
}

/// A caller the API saw: name, role (certificates only), when.
type SeenUser = (String, Option<devctl_proto::identity::Role>, SystemTime);

#[derive(Debug)]
struct Shared {
    config: GraphConfig,
    store: Store,
    progress: Mutex<Progress>,
    /// The analytics' own connection (pool), made on first use.
    reader: tokio::sync::Mutex<Option<client::Client>>,
    reads: tokio::sync::Semaphore,
    resync: Notify,
    seen_tx: mpsc::Sender<SeenUser>,
    seen: Mutex<HashMap<String, (Option<devctl_proto::identity::Role>, Instant)>>,
}

impl Shared {
    fn new(config: GraphConfig, store: Store, seen_tx: mpsc::Sender<SeenUser>) -> Self {
        Self {
            config,
            store,
            progress: Mutex::default(),
            reader: tokio::sync::Mutex::new(None),
            reads: tokio::sync::Semaphore::new(READERS),
            resync: Notify::new(),
            seen_tx,
            seen: Mutex::new(HashMap::new()),
        }
    }
}

/// The running projection: its status, the analytics, and the note of API
/// callers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Projection {
    shared: Arc<Shared>,
}

impl Projection {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.shared.progress.lock().expect("graph progress lock")
    }

    /// The graph server's address (no credentials).
    pub fn uri(&self) -> &str {
        &self.shared.config.uri
    }

    /// Notes that `id` called the API (their role and activity), without
    /// waiting: when the queue is full the note is dropped (the next call
    /// notes them again). A role is noted from certificates only: an API
    /// token's role may be narrower than its owner's.
    pub fn saw(&self, id: &Identity) {
        let role = (!id.serial.starts_with("token:")).then_some(id.role);
        let now = Instant::now();
        {
            let mut seen = self.shared.seen.lock().expect("graph seen lock");
            if let Some((known, at)) = seen.get(&id.name)
                && (role.is_none() || *known == role)
                && now.duration_since(*at) < SEEN_AGAIN
            {
                return;
            }
            if seen.len() > 10_000 {
                seen.clear();
            }
            seen.insert(id.name.clone(), (role, now));
        }
        let _ = self
            .shared
            .seen_tx
            .try_send((id.name.clone(), role, SystemTime::now()));
    }

    /// Asks for a full re-projection (store snapshot and every retained
    /// event).
    pub fn resync(&self) {
        self.shared.resync.notify_one();
    }

    /// Runs an analytics read `f` on the readers' connection, at most
    /// [`READERS`] at once; fails at once while the projection cannot
    /// reach the server.
    pub async fn read<T, F, Fut>(&self, f: F) -> Result<T, GraphError>
    where
        F: FnOnce(client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, GraphError>>,
    {
        {
            let p = self.progress();
            if !p.connected && !p.last_error.is_empty() {
                return Err(GraphError::Unavailable(p.last_error.clone()));
            }
        }
        let _permit = self
            .shared
            .reads
            .acquire()
            .await
            .map_err(|_| GraphError::Unavailable("shutting down".into()))?;
        let client = {
            let mut reader = self.shared.reader.lock().await;
            match reader.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = client::Client::connect(&self.shared.config).await?;
                    *reader = Some(c.clone());
                    c
                }
            }
        };
        let out = f(client).await;
        if out.is_err() {
            // A timed-out query may leave its connection mid-reply: start
            // the next read on fresh connections.
            *self.shared.reader.lock().await = None;
        }
        out
    }

    /// How far behind the graph is.
    pub fn status(&self) -> pb::GraphStatus {
        let feed = self.shared.store.feed();
        let latest = feed.latest();
        let p = self.progress();
        let mut lag_seconds = 0.0;
        let mut behind = 0;
        // Revisions of one process are consecutive; a revision from an
        // earlier process is not readable, and the whole feed is behind.
        if p.revision < latest {
            behind = match feed.read_after(p.revision, 1) {
                Ok(next) => {
                    if let Some(e) = next.first() {
                        lag_seconds = age(e.time);
                    }
                    latest - p.revision
                }
                Err(_) => latest & ((1 << 40) - 1),
            };
        }
        if p.events_pending > 0
            && let Some(oldest) = p.events_oldest
        {
            lag_seconds = lag_seconds.max(age(oldest));
        }
        pb::GraphStatus {
            configured: true,
            uri: self.shared.config.uri.clone(),
            connected: p.connected,
            latest_revision: latest,
            projected_revision: p.revision,
            projected_event_sequence: p.event_sequence,
            lag_changes: behind + p.events_pending,
            lag_seconds,
            last_write_time: p.last_write.map(prost_types::Timestamp::from),
            last_error: p.last_error.clone(),
            resyncs: p.resyncs,
            resyncing: p.resyncing,
        }
    }
}

fn age(t: SystemTime) -> f64 {
    SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs_f64()
}
