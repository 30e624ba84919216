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
    model::{Batch, ContainerRow, DeletedRow, SessionRow, image_ref},
};

/// Rows sent per statement: large enough to amortise a round trip, small
/// enough to keep one transaction's parameters in the low megabytes.
pub const ROWS_PER_STATEMENT: usize = 500;

/// The constraints and indexes the projection needs (created at start if
/// missing).
const SCHEMA: &[&str] = &[
    "CREATE CONSTRAINT devctl_user_username IF NOT EXISTS FOR (u:User) REQUIRE u.username IS UNIQUE",
    "CREATE CONSTRAINT devctl_container_id IF NOT EXISTS FOR (c:Container) REQUIRE c.id IS UNIQUE",
    "CREATE CONSTRAINT devctl_image_ref IF NOT EXISTS FOR (i:Image) REQUIRE i.ref IS UNIQUE",
    "CREATE CONSTRAINT devctl_host_hostname IF NOT EXISTS FOR (h:Host) REQUIRE h.hostname IS UNIQUE",
    "CREATE CONSTRAINT devctl_session_id IF NOT EXISTS FOR (s:Session) REQUIRE s.id IS UNIQUE",
    "CREATE CONSTRAINT devctl_projection_key IF NOT EXISTS FOR (p:DevctlProjection) REQUIRE p.key IS UNIQUE",
    // Predecessors are looked up by name and by workspace.
    "CREATE INDEX devctl_container_name IF NOT EXISTS FOR (c:Container) ON (c.name)",
    "CREATE INDEX devctl_container_workspace IF NOT EXISTS FOR (c:Container) ON (c.workspace)",
];

/// Containers: the record (a resync stamps its generation on each).
const UPSERT_CONTAINERS: &str = "
UNWIND $rows AS r
MERGE (c:Container {id: r.id})
SET c.name = r.name, c.image = r.image, c.status = r.status, c.host_name = r.host,
    c.owner = r.owner, c.workspace = r.workspace, c.created_at = r.created_at,
    c.updated_at = r.updated_at, c.cpus = r.cpus, c.memory_bytes = r.memory_bytes,
    c.resync = coalesce(r.generation, c.resync)";

/// New containers: their creator and image (these never change).
const LINK_CONTAINERS: &str = "
UNWIND $rows AS r
MATCH (c:Container {id: r.id})
MERGE (u:User {username: r.owner})
SET u.created_at = coalesce(u.created_at, r.created_at),
    u.last_active = CASE WHEN u.last_active IS NULL OR u.last_active < r.created_at
                         THEN r.created_at ELSE u.last_active END
MERGE (u)-[cr:CREATED]->(c)
SET cr.at = r.created_at
MERGE (i:Image {ref: r.image_ref})
SET i.name = r.image_name, i.tag = r.image_tag,
    i.digest = CASE WHEN r.image_digest = '' THEN i.digest ELSE r.image_digest END
MERGE (c)-[:USES]->(i)";

/// Images built from a known base (a template's recipe).
const BASED_ON: &str = "
UNWIND $rows AS r
MERGE (i:Image {ref: r.image_ref})
MERGE (b:Image {ref: r.base_ref})
SET b.name = r.base_name, b.tag = r.base_tag
MERGE (i)-[:BASED_ON]->(b)";

/// Images built or pushed onto a node.
const IMAGES_SEEN: &str = "
UNWIND $rows AS r
MERGE (i:Image {ref: r.image_ref})
SET i.name = r.image_name, i.tag = r.image_tag,
    i.digest = CASE WHEN r.image_digest = '' THEN i.digest ELSE r.image_digest END,
    i.built_at = CASE WHEN r.built THEN r.at ELSE i.built_at END";

/// Removals: the earliest time known wins (a resync stamps its own time
/// on containers it finds gone; the history may know the real one).
const DELETED: &str = "
UNWIND $rows AS r
MATCH (c:Container {id: r.id})
SET c.status = 'deleted',
    c.deleted_at = CASE WHEN c.deleted_at IS NULL OR c.deleted_at > r.at
                        THEN r.at ELSE c.deleted_at END";

/// A container that moved keeps its old host as history (RAN_ON, until
/// when).
const MOVED_OFF: &str = "
UNWIND $rows AS r
MATCH (c:Container {id: r.id})-[old:RUNS_ON]->(h:Host)
WHERE h.hostname <> r.host
MERGE (c)-[ran:RAN_ON]->(h)
SET ran.until = r.updated_at
DELETE old";

/// The current host of each new or moved container.
const RUNS_ON: &str = "
UNWIND $rows AS r
MATCH (c:Container {id: r.id})
MERGE (h:Host {hostname: r.host})
MERGE (c)-[:RUNS_ON]->(h)";

/// A new container succeeds the latest older, removed container of the
/// same owner with its name or workspace that has no successor yet.
const SUCCEEDED_BY: &str = "
UNWIND $rows AS r
MATCH (n:Container {id: r.id})
OPTIONAL MATCH (a:Container {name: r.name})
WHERE a.id <> r.id AND a.owner = r.owner AND a.status = 'deleted'
  AND a.created_at < r.created_at AND NOT (a)-[:SUCCEEDED_BY]->()
WITH n, r, collect(a) AS by_name
OPTIONAL MATCH (b:Container {workspace: r.workspace})
WHERE r.workspace <> '' AND b.id <> r.id AND b.owner = r.owner AND b.status = 'deleted'
  AND b.created_at < r.created_at AND NOT (b)-[:SUCCEEDED_BY]->()
WITH n, by_name, collect(b) AS by_workspace
WITH n, by_name + by_workspace AS older
UNWIND older AS o
WITH n, o ORDER BY o.created_at DESC
WITH n, collect(o)[0] AS prev
WHERE prev IS NOT NULL
MERGE (prev)-[:SUCCEEDED_BY]->(n)";

/// Containers created and removed while the projection was away, from the
/// event history (image and resources unknown).
const GONE_CREATED: &str = "
UNWIND $rows AS r
MERGE (c:Container {id: r.id})
ON CREATE SET c.name = r.name, c.host_name = r.host, c.owner = r.actor,
    c.created_at = r.at, c.updated_at = r.at, c.status = 'deleted'
WITH c, r
WHERE r.actor <> 'system' AND NOT ()-[:CREATED]->(c)
MERGE (u:User {username: r.actor})
MERGE (u)-[cr:CREATED]->(c)
SET cr.at = r.at";

const GONE_HOST: &str = "
UNWIND $rows AS r
MATCH (c:Container {id: r.id})
WHERE NOT (c)-[:RUNS_ON]->()
MERGE (h:Host {hostname: r.host})
MERGE (c)-[:RUNS_ON]->(h)";

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
ON CREATE SET c.status = 'unknown'
MERGE (s)-[:IN_CONTAINER]->(c)";

const SESSIONS_ENDED: &str = "
UNWIND $rows AS r
MERGE (s:Session {id: r.id})
SET s.kind = r.kind, s.ended_at = r.at
WITH s
WHERE s.started_at IS NOT NULL
SET s.duration_seconds = duration.inSeconds(s.started_at, s.ended_at).seconds";

/// Callers the API saw: their role (certificates only; a token's role may
/// be narrower) and their latest activity.
const USERS: &str = "
UNWIND $rows AS r
MERGE (u:User {username: r.username})
SET u.role = CASE WHEN r.role = '' THEN u.role ELSE r.role END,
    u.created_at = coalesce(u.created_at, r.at),
    u.last_active = CASE WHEN u.last_active IS NULL OR u.last_active < r.at
                         THEN r.at ELSE u.last_active END";

/// After a resync: containers it did not write (the store no longer holds
/// them) become history.
const MARK_GONE: &str = "
MATCH (c:Container)
WHERE coalesce(c.status, '') <> 'deleted' AND coalesce(c.resync, '') <> $generation
SET c.status = 'deleted', c.deleted_at = coalesce(c.deleted_at, $now)";

/// Which of the given containers the graph holds (linked to their image:
/// not a stub a session made), and their hosts.
const KNOWN: &str = "
UNWIND $ids AS id
MATCH (c:Container {id: id})
WHERE (c)-[:USES]->()
OPTIONAL MATCH (c)-[:RUNS_ON]->(h:Host)
RETURN c.id AS id, coalesce(h.hostname, '') AS host";

const SAVE_CURSOR: &str = "
MERGE (p:DevctlProjection {key: 'cursor'})
SET p.revision = $revision, p.event_sequence = $event_sequence, p.store = $store,
    p.event_stream = $event_stream, p.updated_at = $now";

const READ_CURSOR: &str = "
MATCH (p:DevctlProjection {key: 'cursor'})
RETURN p.revision AS revision, p.event_sequence AS event_sequence,
       coalesce(p.store, '') AS store, coalesce(p.event_stream, '') AS event_stream";

/// Where the projection stands, as the graph itself records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last feed revision written.
    pub revision: u64,
    /// The last event-history sequence written.
    pub event_sequence: u64,
    /// The store the revision belongs to (its id, in hex): a cursor of
    /// another store (a data directory made again, another cluster writing
    /// to this database) is not resumed.
    pub store: String,
    /// The event history the sequence belongs to (its creation time): a
    /// stream made again numbers from 1 again.
    pub event_stream: String,
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
            store: row.get::<String>("store").unwrap_or_default(),
            event_stream: row.get::<String>("event_stream").unwrap_or_default(),
        })
    }

    /// Writes `batch` and the cursor it reaches in one transaction.
    pub async fn write(&self, batch: &Batch, cursor: &Cursor) -> Result<(), GraphError> {
        let mut queries = statements(batch);
        queries.push(save_cursor(cursor));
        self.transaction(queries).await
    }

    /// Which of `ids` the graph holds with their creator, and the host it
    /// has for each.
    pub async fn known(
        &self,
        ids: Vec<String>,
    ) -> Result<std::collections::HashMap<String, String>, GraphError> {
        let ids = list(ids.into_iter().map(BoltType::from).collect());
        let rows = self.rows(query(KNOWN).param("ids", ids)).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.get::<String>("id").ok()?,
                    r.get::<String>("host").unwrap_or_default(),
                ))
            })
            .collect())
    }

    /// Marks every container a resync of `generation` did not write
    /// deleted, and stores `cursor`, in one transaction.
    pub async fn mark_gone(&self, generation: &str, cursor: &Cursor) -> Result<(), GraphError> {
        self.transaction(vec![
            query(MARK_GONE)
                .param("generation", generation)
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

fn save_cursor(cursor: &Cursor) -> Query {
    query(SAVE_CURSOR)
        .param("revision", int(cursor.revision))
        .param("event_sequence", int(cursor.event_sequence))
        .param("store", cursor.store.as_str())
        .param("event_stream", cursor.event_stream.as_str())
        .param("now", datetime(SystemTime::now()))
}

/// The statements writing `batch` (without the cursor), in dependency
/// order: hosts and users before the containers and sessions that point at
/// them, deletions before successions, starts before ends.
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
    let generation: BoltType = batch.generation.as_deref().into();
    let container = |c: &ContainerRow| {
        let image = image_ref(&c.image);
        map(vec![
            ("id", c.id.as_str().into()),
            ("name", c.name.as_str().into()),
            ("image", c.image.as_str().into()),
            ("image_ref", image.reference.into()),
            ("image_name", image.name.into()),
            ("image_tag", image.tag.into()),
            ("image_digest", image.digest.into()),
            ("status", c.status.as_str().into()),
            ("host", c.host.as_str().into()),
            ("owner", c.owner.as_str().into()),
            ("workspace", c.workspace.as_str().into()),
            ("created_at", datetime(c.created_at)),
            ("updated_at", datetime(c.updated_at)),
            ("cpus", c.cpus.into()),
            ("memory_bytes", c.memory_bytes.into()),
            ("generation", generation.clone()),
        ])
    };
    let containers = |keep: fn(&ContainerRow) -> bool| -> Vec<BoltType> {
        batch
            .containers()
            .filter(|c| keep(c))
            .map(container)
            .collect()
    };
    push(UPSERT_CONTAINERS, containers(|_| true));
    push(LINK_CONTAINERS, containers(|c| c.added));
    push(
        IMAGES_SEEN,
        batch
            .images()
            .iter()
            .map(|i| {
                let image = image_ref(&i.image);
                map(vec![
                    ("image_ref", image.reference.into()),
                    ("image_name", image.name.into()),
                    ("image_tag", image.tag.into()),
                    ("image_digest", image.digest.into()),
                    ("built", i.built.into()),
                    ("at", datetime(i.at)),
                ])
            })
            .collect(),
    );
    // Lineage: new containers' template recipes, and images built.
    let based_on = |image: &str, base: &str| {
        let base = image_ref(base);
        map(vec![
            ("image_ref", image_ref(image).reference.into()),
            ("base_ref", base.reference.into()),
            ("base_name", base.name.into()),
            ("base_tag", base.tag.into()),
        ])
    };
    push(
        BASED_ON,
        batch
            .containers()
            .filter(|c| c.added)
            .filter_map(|c| Some(based_on(&c.image, c.base_image.as_deref()?)))
            .chain(
                batch
                    .images()
                    .iter()
                    .filter_map(|i| Some(based_on(&i.image, i.base.as_deref()?))),
            )
            .collect(),
    );
    let deleted = |d: &DeletedRow| map(vec![("id", d.id.as_str().into()), ("at", datetime(d.at))]);
    push(DELETED, batch.deleted().map(deleted).collect());
    push(MOVED_OFF, containers(|c| c.moved && !c.host.is_empty()));
    push(RUNS_ON, containers(|c| c.moved && !c.host.is_empty()));
    push(SUCCEEDED_BY, containers(|c| c.added));
    let gone: Vec<BoltType> = batch
        .gone_created()
        .iter()
        .map(|g| {
            map(vec![
                ("id", g.id.as_str().into()),
                ("name", g.name.as_str().into()),
                ("host", g.host.as_str().into()),
                ("actor", g.actor.as_str().into()),
                ("at", datetime(g.at)),
            ])
        })
        .collect();
    push(GONE_CREATED, gone.clone());
    push(
        GONE_HOST,
        batch
            .gone_created()
            .iter()
            .filter(|g| !g.host.is_empty())
            .map(|g| {
                map(vec![
                    ("id", g.id.as_str().into()),
                    ("host", g.host.as_str().into()),
                ])
            })
            .collect(),
    );
    push(DELETED, batch.gone_removed().iter().map(deleted).collect());
    let session = |s: &SessionRow| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_show_the_schema_as_it_is_created() {
        let docs = include_str!("../../../docs/graph.md");
        for stmt in SCHEMA {
            assert!(docs.contains(stmt), "docs/graph.md lacks {stmt}");
        }
    }
}
