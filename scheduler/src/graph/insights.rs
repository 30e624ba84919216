//! The analytics: fixed, parameterised Cypher over the projected graph
//! (docs/graph.md lists each query). The caller's text never reaches the
//! server: a window start and, for a developer, their own name are the only
//! parameters.

use std::{collections::BTreeMap, time::SystemTime};

use chrono::{DateTime, FixedOffset};
use devctl_proto::pb;
use neo4rs::{Row, query};

use super::{
    GraphError,
    client::{Client, datetime, system_time},
};

/// Who the rows are for: everyone's (admins) or one user's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    /// Every user's containers and sessions.
    All,
    /// Only this user's.
    Own(String),
}

impl Rows {
    fn all_and_owner(&self) -> (bool, &str) {
        match self {
            Rows::All => (true, ""),
            Rows::Own(name) => (false, name),
        }
    }
}

/// Containers per image, running now, distinct users, last creation.
pub const IMAGES: &str = "
MATCH (u:User)-[:CREATED]->(c:Container)-[:USES]->(i:Image)
WHERE c.created_at >= $since AND ($all OR u.username = $owner)
RETURN i.ref AS image, count(DISTINCT c) AS containers,
       sum(CASE WHEN c.status = 'running' THEN 1 ELSE 0 END) AS running,
       count(DISTINCT u) AS users, max(c.created_at) AS last_created
ORDER BY containers DESC, image";

/// The latest session start per image.
pub const IMAGE_SESSIONS: &str = "
MATCH (u:User)-[:STARTED]->(s:Session)-[:IN_CONTAINER]->(c:Container)-[:USES]->(i:Image)
WHERE s.started_at >= $since AND ($all OR u.username = $owner)
RETURN i.ref AS image, max(s.started_at) AS last_session";

/// Sessions per user: how many, how long (ended ones).
pub const USER_SESSIONS: &str = "
MATCH (u:User)-[:STARTED]->(s:Session)
WHERE s.started_at >= $since AND ($all OR u.username = $owner)
RETURN u.username AS username, count(s) AS sessions,
       sum(coalesce(s.duration_seconds, 0)) AS total_seconds,
       count(s.duration_seconds) AS ended";

/// Containers created per user.
pub const USER_CONTAINERS: &str = "
MATCH (u:User)-[:CREATED]->(c:Container)
WHERE c.created_at >= $since AND ($all OR u.username = $owner)
RETURN u.username AS username, count(c) AS containers";

/// Every user with their role and last activity.
pub const USERS: &str = "
MATCH (u:User)
WHERE $all OR u.username = $owner
RETURN u.username AS username, coalesce(u.role, '') AS role, u.last_active AS last_active
ORDER BY username";

/// Per host: containers placed there (in the window), its current or an
/// earlier host (RAN_ON: moved away since).
pub const HOSTS: &str = "
MATCH (h:Host)
OPTIONAL MATCH (u:User)-[:CREATED]->(c:Container)-[:RUNS_ON|RAN_ON]->(h)
WHERE ($all OR u.username = $owner) AND c.created_at >= $since
RETURN h.hostname AS host, coalesce(h.total_cpu, 0) AS total_cpu,
       coalesce(h.total_memory, 0) AS total_memory, count(DISTINCT c) AS placed
ORDER BY host";

/// Per host: what runs there now.
pub const HOST_LOAD: &str = "
MATCH (u:User)-[:CREATED]->(c:Container {status: 'running'})-[:RUNS_ON]->(h:Host)
WHERE $all OR u.username = $owner
RETURN h.hostname AS host, count(c) AS running, sum(c.cpus) AS running_cpus,
       sum(c.memory_bytes) AS running_memory";

fn params(q: &str, since: SystemTime, rows: &Rows) -> neo4rs::Query {
    let (all, owner) = rows.all_and_owner();
    query(q)
        .param("since", datetime(since))
        .param("all", all)
        .param("owner", owner)
}

fn count(row: &Row, key: &str) -> u64 {
    // Aggregates come back as integers, or as floats from some servers.
    row.get::<i64>(key)
        .map(|n| u64::try_from(n).unwrap_or(0))
        .or_else(|_| row.get::<f64>(key).map(|f| f.max(0.0).round() as u64))
        .unwrap_or(0)
}

fn float(row: &Row, key: &str) -> f64 {
    row.get::<f64>(key)
        .or_else(|_| row.get::<i64>(key).map(|n| n as f64))
        .unwrap_or(0.0)
}

fn time(row: &Row, key: &str) -> Option<SystemTime> {
    // Neo4j returns the datetime with its offset; some servers (ArcadeDB)
    // return stored datetimes as local ones, in UTC.
    row.get::<DateTime<FixedOffset>>(key)
        .map(system_time)
        .or_else(|_| {
            row.get::<chrono::NaiveDateTime>(key)
                .map(|t| t.and_utc().into())
        })
        .ok()
}

/// `rows` by their string column `key` (the rows of a second query, joined
/// to the first's in Rust).
fn keyed<'a>(rows: &'a [Row], key: &str) -> BTreeMap<String, &'a Row> {
    rows.iter()
        .filter_map(|r| Some((r.get::<String>(key).ok()?, r)))
        .collect()
}

fn timestamp(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(prost_types::Timestamp::from)
}

fn later(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    a.max(b)
}

/// Images by use.
pub async fn images(
    client: &Client,
    since: SystemTime,
    rows: &Rows,
) -> Result<Vec<pb::ImageInsight>, GraphError> {
    let created = client.rows(params(IMAGES, since, rows)).await?;
    let sessions = client.rows(params(IMAGE_SESSIONS, since, rows)).await?;
    let sessions = keyed(&sessions, "image");
    Ok(created
        .iter()
        .filter_map(|r| {
            let image = r.get::<String>("image").ok()?;
            let last = later(
                time(r, "last_created"),
                sessions.get(&image).and_then(|s| time(s, "last_session")),
            );
            Some(pb::ImageInsight {
                containers: count(r, "containers"),
                running: count(r, "running"),
                users: count(r, "users"),
                last_used: timestamp(last),
                image,
            })
        })
        .collect())
}

/// Users by name.
pub async fn users(
    client: &Client,
    since: SystemTime,
    rows: &Rows,
) -> Result<Vec<pb::UserInsight>, GraphError> {
    let users = client.rows(params(USERS, since, rows)).await?;
    let sessions = client.rows(params(USER_SESSIONS, since, rows)).await?;
    let containers = client.rows(params(USER_CONTAINERS, since, rows)).await?;
    let (sessions, containers) = (keyed(&sessions, "username"), keyed(&containers, "username"));
    Ok(users
        .iter()
        .filter_map(|r| {
            let username = r.get::<String>("username").ok()?;
            let s = sessions.get(&username);
            let n = s.map_or(0, |s| count(s, "sessions"));
            let total = s.map_or(0.0, |s| float(s, "total_seconds"));
            let ended = s.map_or(0, |s| count(s, "ended"));
            Some(pb::UserInsight {
                role: r.get::<String>("role").unwrap_or_default(),
                sessions: n,
                total_session_seconds: total,
                average_session_seconds: if ended == 0 {
                    0.0
                } else {
                    total / ended as f64
                },
                containers_created: containers
                    .get(&username)
                    .map_or(0, |c| count(c, "containers")),
                last_active: timestamp(time(r, "last_active")),
                username,
            })
        })
        .collect())
}

/// Hosts by name.
pub async fn hosts(
    client: &Client,
    since: SystemTime,
    rows: &Rows,
) -> Result<Vec<pb::HostInsight>, GraphError> {
    let found = client.rows(params(HOSTS, since, rows)).await?;
    let load = client.rows(params(HOST_LOAD, since, rows)).await?;
    let load = keyed(&load, "host");
    Ok(found
        .iter()
        .filter_map(|r| {
            let host = r.get::<String>("host").ok()?;
            let now = load.get(&host);
            Some(pb::HostInsight {
                containers_placed: count(r, "placed"),
                running: now.map_or(0, |l| count(l, "running")),
                running_cpus: now.map_or(0.0, |l| float(l, "running_cpus")),
                running_memory_bytes: now.map_or(0, |l| count(l, "running_memory")),
                total_cpus: float(r, "total_cpu"),
                total_memory_bytes: count(r, "total_memory"),
                host,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_show_every_analytics_query_as_it_runs() {
        let docs = include_str!("../../../docs/graph.md");
        for q in [
            IMAGES,
            IMAGE_SESSIONS,
            USER_SESSIONS,
            USER_CONTAINERS,
            USERS,
            HOSTS,
            HOST_LOAD,
        ] {
            assert!(
                docs.contains(q.trim()),
                "docs/graph.md lacks this query as it runs:\n{}",
                q.trim()
            );
        }
    }
}
