//! The only code that speaks Bolt (neo4rs): connecting, the schema, the
//! projection's writes and cursor, and the fixed analytics queries.
//!
//! Every call has a deadline: neo4rs "connects" to a closed port and then
//! waits for ever on the first query. Cypher stays within what Neo4j 4.4
//! and 5.x both run (and ArcadeDB's Bolt plugin, which CI uses): `FOR …
//! REQUIRE` constraints, `MERGE` on the natural keys, `UNWIND` batches.

use std::{
    future::Future,
    time::{Duration, SystemTime},
};

use chrono::{DateTime, FixedOffset, Utc};
use neo4rs::{BoltType, Query, query};

use super::{
    GraphConfig, GraphError,
    model::{Batch, image_parts},
};

/// Rows sent per statement: large enough to amortise a round trip, small
/// enough to keep one transaction's parameters in the low megabytes.
pub const ROWS_PER_STATEMENT: usize = 500;

/// The constraints the projection needs (created at start if missing).
const SCHEMA: &[&str] = &[
    "CREATE CONSTRAINT devctl_user_username IF NOT EXISTS FOR (u:User) REQUIRE u.username IS UNIQUE",
    "CREATE CONSTRAINT devctl_container_id IF NOT EXISTS FOR (c:Container) REQUIRE c.id IS UNIQUE",
    "CREATE CONSTRAINT devctl_image_ref IF NOT EXISTS FOR (i:Image) REQUIRE i.ref IS UNIQUE",
    "CREATE CONSTRAINT devctl_host_hostname IF NOT EXISTS FOR (h:Host) REQUIRE h.hostname IS UNIQUE",
    "CREATE CONSTRAINT devctl_session_id IF NOT EXISTS FOR (s:Session) REQUIRE s.id IS UNIQUE",
    "CREATE CONSTRAINT devctl_projection_key IF NOT EXISTS FOR (p:DevctlProjection) REQUIRE p.key IS UNIQUE",
];

/// Containers: the record, its creator, its image and (for new ones) the
/// container it succeeds: the latest older container of the same name or
/// workspace that has no successor yet.
const UPSERT_CONTAINERS: &str = "
UNWIND $rows AS r
MERGE (c:Container {id: r.id})
SET c.name = r.name, c.image = r.image, c.status = r.status, c.host_name = r.host,
    c.owner = r.owner, c.workspace = r.workspace, c.created_at = r.created_at,
    c.updated_at = r.updated_at, c.cpus = r.cpus, c.memory_bytes = r.memory_bytes
MERGE (u:User {username: r.owner})
SET u.created_at = coalesce(u.created_at, r.created_at),
    u.last_active = CASE WHEN u.last_active IS NULL OR u.last_active < r.created_at
                         THEN r.created_at ELSE u.last_active END
MERGE (u)-[cr:CREATED]->(c)
SET cr.at = r.created_at
MERGE (i:Image {ref: r.image})
SET i.name = r.image_name, i.tag = r.image_tag
MERGE (c)-[:USES]->(i)";

/// The current host of each placed container: a move replaces the edge.
const RUNS_ON: &str = "
UNWIND $rows AS r
MATCH (c:Container {id: r.id})
OPTIONAL MATCH (c)-[old:RUNS_ON]->(h:Host)
WHERE h.hostname <> r.host
DELETE old
WITH DISTINCT c, r
MERGE (h2:Host {hostname: r.host})
MERGE (c)-[:RUNS_ON]->(h2)";

const SUCCEEDED_BY: &str = "
UNWIND $rows AS r
MATCH (n:Container {id: r.id})
MATCH (o:Container)
WHERE o.id <> r.id AND o.created_at < r.created_at
  AND (o.name = r.name OR (r.workspace <> '' AND o.workspace = r.workspace))
  AND NOT (o)-[:SUCCEEDED_BY]->()
WITH n, o ORDER BY o.created_at DESC
WITH n, collect(o) AS older
WHERE size(older) > 0
WITH n, older[0] AS prev
MERGE (prev)-[:SUCCEEDED_BY]->(n)";

const DELETED: &str = "
UNWIND $rows AS r
MATCH (c:Container {id: r.id})
SET c.status = 'deleted', c.deleted_at = coalesce(c.deleted_at, r.at)";

const HOSTS: &str = "
UNWIND $rows AS r
MERGE (h:Host {hostname: r.hostname})
SET h.total_memory = r.total_memory, h.total_cpu = r.total_cpu,
    h.docker_version = r.docker_version, h.labels = r.labels, h.state = r.state,
    h.cordoned = r.cordoned";

const SESSIONS_STARTED: &str = "
UNWIND $rows AS r
MERGE (s:Session {id: r.id})
SET s.kind = r.kind, s.started_at = r.at
MERGE (u:User {username: r.actor})
SET u.created_at = coalesce(u.created_at, r.at),
    u.last_active = CASE WHEN u.last_active IS NULL OR u.last_active < r.at
                         THEN r.at ELSE u.last_active END
MERGE (u)-[:STARTED]->(s)
MERGE (c:Container {id: r.container_id})
MERGE (s)-[:IN_CONTAINER]->(c)";

const SESSIONS_ENDED: &str = "
UNWIND $rows AS r
MERGE (s:Session {id: r.id})
SET s.kind = r.kind, s.ended_at = r.at
WITH s
WHERE s.started_at IS NOT NULL
SET s.duration_seconds = duration.inSeconds(s.started_at, s.ended_at).seconds";

const USERS: &str = "
UNWIND $rows AS r
MERGE (u:User {username: r.username})
SET u.role = r.role, u.created_at = coalesce(u.created_at, r.at)";

/// Containers the store no longer holds (removed while the projection was
/// not following the feed) become history.
const MARK_GONE: &str = "
MATCH (c:Container)
WHERE c.status <> 'deleted' AND NOT c.id IN $live
SET c.status = 'deleted', c.deleted_at = coalesce(c.deleted_at, $now)";

const SAVE_CURSOR: &str = "
MERGE (p:DevctlProjection {key: 'cursor'})
SET p.revision = $revision, p.event_sequence = $event_sequence, p.updated_at = $now";

const READ_CURSOR: &str = "
MATCH (p:DevctlProjection {key: 'cursor'})
RETURN p.revision AS revision, p.event_sequence AS event_sequence";

/// Where the projection stands, as the graph itself records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last feed revision written.
    pub revision: u64,
    /// The last event-history sequence written.
    pub event_sequence: u64,
}

/// `t` as a Cypher datetime.
pub fn datetime(t: SystemTime) -> BoltType {
    DateTime::<Utc>::from(t).fixed_offset().into()
}

/// A Cypher datetime read back.
pub fn system_time(t: DateTime<FixedOffset>) -> SystemTime {
    t.with_timezone(&Utc).into()
}

fn map(entries: Vec<(&str, BoltType)>) -> BoltType {
    let mut m = neo4rs::BoltMap::with_capacity(entries.len());
    for (k, v) in entries {
        m.put(k.into(), v);
    }
    BoltType::Map(m)
}

fn list(rows: Vec<BoltType>) -> BoltType {
    BoltType::List(neo4rs::BoltList::from(rows))
}

fn int(n: u64) -> BoltType {
    BoltType::from(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A connection (a small pool) to the graph server.
#[derive(Clone)]
pub struct Client {
    graph: neo4rs::Graph,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and checks the server answers a query.
    pub async fn connect(config: &GraphConfig) -> Result<Self, GraphError> {
        let mut builder = neo4rs::ConfigBuilder::default()
            .uri(config.uri.as_str())
            .user(config.user.as_str())
            .password(config.password.expose())
            .fetch_size(500)
            .max_connections(4);
        if let Some(db) = &config.database {
            builder = builder.db(db.as_str());
        }
        let neo = builder
            .build()
            .map_err(|e| GraphError::Config(e.to_string()))?;
        let graph = deadline(config.timeout, "connecting", neo4rs::Graph::connect(neo)).await?;
        let client = Self {
            graph,
            timeout: config.timeout,
        };
        client.ping().await?;
        Ok(client)
    }

    /// Runs `RETURN 1`.
    pub async fn ping(&self) -> Result<(), GraphError> {
        self.rows(query("RETURN 1 AS one")).await.map(drop)
    }

    /// Creates the uniqueness constraints if missing.
    pub async fn ensure_schema(&self) -> Result<(), GraphError> {
        for stmt in SCHEMA {
            deadline(
                self.timeout,
                "creating constraints",
                self.graph.run(query(stmt)),
            )
            .await?;
        }
        Ok(())
    }

    /// Where the projection stands (zeros: never written).
    pub async fn cursor(&self) -> Result<Cursor, GraphError> {
        let rows = self.rows(query(READ_CURSOR)).await?;
        let Some(row) = rows.first() else {
            return Ok(Cursor::default());
        };
        let get = |k: &str| -> u64 {
            row.get::<i64>(k)
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)
        };
        Ok(Cursor {
            revision: get("revision"),
            event_sequence: get("event_sequence"),
        })
    }

    /// Writes `batch` and the cursor it reaches in one transaction.
    pub async fn write(&self, batch: &Batch, cursor: Cursor) -> Result<(), GraphError> {
        let mut queries = statements(batch);
        queries.push(save_cursor(cursor));
        self.transaction(queries).await
    }

    /// Marks every container not in `live` (ids) deleted, and stores
    /// `cursor`, in one transaction.
    pub async fn mark_gone(&self, live: Vec<String>, cursor: Cursor) -> Result<(), GraphError> {
        let live = list(live.into_iter().map(BoltType::from).collect());
        self.transaction(vec![
            query(MARK_GONE)
                .param("live", live)
                .param("now", datetime(SystemTime::now())),
            save_cursor(cursor),
        ])
        .await
    }

    async fn transaction(&self, queries: Vec<Query>) -> Result<(), GraphError> {
        deadline(self.timeout, "writing", async {
            let mut txn = self.graph.start_txn().await?;
            txn.run_queries(queries).await?;
            txn.commit().await
        })
        .await
    }

    /// Every row of a read.
    pub async fn rows(&self, q: Query) -> Result<Vec<neo4rs::Row>, GraphError> {
        deadline(self.timeout, "querying", async {
            let mut stream = self.graph.execute(q).await?;
            let mut rows = Vec::new();
            while let Some(row) = stream.next().await? {
                rows.push(row);
            }
            Ok(rows)
        })
        .await
    }
}

fn save_cursor(cursor: Cursor) -> Query {
    query(SAVE_CURSOR)
        .param("revision", int(cursor.revision))
        .param("event_sequence", int(cursor.event_sequence))
        .param("now", datetime(SystemTime::now()))
}

/// The statements writing `batch` (without the cursor), in dependency
/// order: hosts and users before the containers and sessions that point at
/// them, starts before ends.
fn statements(batch: &Batch) -> Vec<Query> {
    let mut out = Vec::new();
    let mut push = |stmt: &str, rows: Vec<BoltType>| {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            out.push(query(stmt).param("rows", list(chunk.to_vec())));
        }
    };
    push(
        HOSTS,
        batch
            .hosts()
            .map(|h| {
                map(vec![
                    ("hostname", h.hostname.as_str().into()),
                    ("total_memory", h.total_memory.into()),
                    ("total_cpu", h.total_cpu.into()),
                    ("docker_version", h.docker_version.as_str().into()),
                    (
                        "labels",
                        list(h.labels.iter().map(|l| l.as_str().into()).collect()),
                    ),
                    ("state", h.state.as_str().into()),
                    ("cordoned", h.cordoned.into()),
                ])
            })
            .collect(),
    );
    push(
        USERS,
        batch
            .users()
            .map(|u| {
                map(vec![
                    ("username", u.username.as_str().into()),
                    ("role", u.role.as_str().into()),
                    ("at", datetime(u.at)),
                ])
            })
            .collect(),
    );
    let container = |c: &super::model::ContainerRow| {
        let (name, tag) = image_parts(&c.image);
        map(vec![
            ("id", c.id.as_str().into()),
            ("name", c.name.as_str().into()),
            ("image", c.image.as_str().into()),
            ("image_name", name.into()),
            ("image_tag", tag.into()),
            ("status", c.status.as_str().into()),
            ("host", c.host.as_str().into()),
            ("owner", c.owner.as_str().into()),
            ("workspace", c.workspace.as_str().into()),
            ("created_at", datetime(c.created_at)),
            ("updated_at", datetime(c.updated_at)),
            ("cpus", c.cpus.into()),
            ("memory_bytes", c.memory_bytes.into()),
        ])
    };
    push(
        UPSERT_CONTAINERS,
        batch.containers().map(container).collect(),
    );
    push(
        RUNS_ON,
        batch
            .containers()
            .filter(|c| !c.host.is_empty())
            .map(container)
            .collect(),
    );
    push(
        SUCCEEDED_BY,
        batch
            .containers()
            .filter(|c| c.added)
            .map(container)
            .collect(),
    );
    push(
        DELETED,
        batch
            .deleted()
            .map(|d| map(vec![("id", d.id.as_str().into()), ("at", datetime(d.at))]))
            .collect(),
    );
    let session = |s: &super::model::SessionRow| {
        map(vec![
            ("id", s.id.as_str().into()),
            ("kind", s.kind.into()),
            ("actor", s.actor.as_str().into()),
            ("container_id", s.container_id.as_str().into()),
            ("at", datetime(s.at)),
        ])
    };
    push(
        SESSIONS_STARTED,
        batch.started().iter().map(session).collect(),
    );
    push(SESSIONS_ENDED, batch.ended().iter().map(session).collect());
    out
}

/// Runs `f` within `limit`; a timeout or a Bolt error is a [`GraphError`].
async fn deadline<T>(
    limit: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, neo4rs::Error>>,
) -> Result<T, GraphError> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(GraphError::Server {
            what,
            detail: e.to_string(),
        }),
        Err(_) => Err(GraphError::Timeout { what, limit }),
    }
}
