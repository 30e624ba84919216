//! View models: what the CLI shows people of the API's objects (lowercase
//! state words, RFC 3339 times, CPUs rather than thousandths), built from
//! the `pb` types. Plain structs with public fields, so a terminal UI can
//! read them too. They are never what -o json/yaml prints: that is the API
//! objects themselves (see [`devctl_proto::json`]).

use devctl_proto::container::ContainerExt;
use std::{collections::BTreeMap, time::SystemTime};

use devctl_proto::{pb, words};

/// A container as printed.
#[derive(Debug)]
pub struct ContainerView {
    pub name: String,
    pub id: String,
    pub image: String,
    pub command: Vec<String>,
    pub state: String,
    pub desired_state: String,
    pub node: String,
    /// CPU limit in CPUs; absent when unlimited.
    pub cpus: Option<f64>,
    /// Memory limit in bytes; absent when unlimited.
    pub memory_bytes: Option<i64>,
    pub env: BTreeMap<String, String>,
    /// The env values were withheld (only the owner and admins see them).
    pub env_redacted: bool,
    pub labels: BTreeMap<String, String>,
    pub constraints: BTreeMap<String, String>,
    pub owner: String,
    pub created: Option<String>,
    pub updated: Option<String>,
    pub started: Option<String>,
    pub exit_code: Option<i32>,
    pub last_error: String,
    pub runtime_id: String,
    /// Why it is not running (`lease_expired`, `inactivity`, ...).
    pub stop_reason: String,
    /// Lease length in seconds (0: no lease).
    pub ttl_seconds: i64,
    /// When the lease runs out.
    pub lease_expires: Option<String>,
    pub health: String,
    pub health_restarts: i32,
    /// Seconds since it was last in use (while it runs).
    pub idle_seconds: Option<u64>,
    /// The cluster's idle window (0: inactivity stop off).
    pub idle_timeout_seconds: i64,
}

impl From<&pb::Container> for ContainerView {
    fn from(c: &pb::Container) -> Self {
        let r = c.spec().resources.unwrap_or_default();
        Self {
            name: c.name.clone(),
            id: c.id.clone(),
            image: c.spec().image.clone(),
            command: c.spec().command.clone(),
            state: words::container_state(c.status().state()),
            desired_state: desired_word(c.spec().desired_state()),
            node: c.status().node.clone(),
            cpus: (r.milli_cpus > 0).then(|| r.milli_cpus as f64 / 1000.0),
            memory_bytes: (r.memory_bytes > 0).then_some(r.memory_bytes),
            env: c.spec().env.clone().into_iter().collect(),
            env_redacted: c.env_redacted,
            labels: c.spec().labels.clone().into_iter().collect(),
            constraints: c.spec().constraints.clone().into_iter().collect(),
            owner: c.owner.clone(),
            created: time(c.create_time),
            updated: time(c.update_time),
            started: time(c.status().start_time),
            exit_code: c.status().exit_code,
            last_error: c.status().last_error.clone(),
            runtime_id: c.status().runtime_id.clone(),
            stop_reason: stop_reason_word(c.status().stop_reason()),
            ttl_seconds: c.spec().ttl_seconds.unwrap_or(0),
            lease_expires: time(c.status().lease_expire_time),
            health: health_word(c.status().health()),
            health_restarts: c.status().health_restarts,
            idle_seconds: idle_seconds(c),
            idle_timeout_seconds: c.status().idle_timeout_seconds,
        }
    }
}

/// A node as printed.
#[derive(Debug)]
pub struct NodeView {
    pub name: String,
    pub state: String,
    pub cpus: i32,
    pub memory_bytes: i64,
    pub containers: i32,
    pub reserved_milli_cpus: i64,
    pub reserved_memory_bytes: i64,
    pub open_streams: i32,
    pub cordoned: bool,
    pub cpu_percent: Option<f64>,
    pub memory_used_bytes: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub docker_version: String,
    pub agent_version: String,
    pub platform: String,
    pub last_seen: Option<String>,
    pub created: Option<String>,
}

impl From<&pb::Node> for NodeView {
    fn from(n: &pb::Node) -> Self {
        Self {
            name: n.name.clone(),
            state: words::node_state(n.state()),
            cpus: n.cpus,
            memory_bytes: n.memory_bytes,
            containers: n.container_count,
            reserved_milli_cpus: n.reserved_milli_cpus,
            reserved_memory_bytes: n.reserved_memory_bytes,
            open_streams: n.open_streams,
            cordoned: n.cordoned,
            cpu_percent: n
                .usage
                .as_ref()
                .map(|u| (u.cpu_percent * 10.0).round() / 10.0),
            memory_used_bytes: n.usage.as_ref().map(|u| u.memory_used_bytes),
            labels: n.labels.clone().into_iter().collect(),
            docker_version: n.docker_version.clone(),
            agent_version: n.agent_version.clone(),
            platform: n.platform.clone(),
            last_seen: time(n.last_seen),
            created: time(n.create_time),
        }
    }
}

/// One change of the change feed as printed (`devctl watch`).
#[derive(Debug)]
pub struct ChangeView {
    /// The revision the change brings the watch to (resume with
    /// --after-revision).
    pub revision: u64,
    /// snapshot, snapshot-end, added, modified or deleted.
    pub kind: String,
    /// The container, for a container's change.
    pub container: Option<ContainerView>,
    /// The node, for a node's change.
    pub node: Option<NodeView>,
}

impl From<&pb::WatchChangesResponse> for ChangeView {
    fn from(r: &pb::WatchChangesResponse) -> Self {
        use pb::watch_changes_response::Object;
        let kind = match r.r#type() {
            pb::ChangeType::Snapshot => "snapshot",
            pb::ChangeType::SnapshotEnd => "snapshot-end",
            pb::ChangeType::Added => "added",
            pb::ChangeType::Modified => "modified",
            pb::ChangeType::Deleted => "deleted",
            pb::ChangeType::Unspecified => "unknown",
        };
        Self {
            revision: r.revision,
            kind: kind.to_string(),
            container: match &r.object {
                Some(Object::Container(c)) => Some(c.into()),
                _ => None,
            },
            node: match &r.object {
                Some(Object::Node(n)) => Some(n.into()),
                _ => None,
            },
        }
    }
}

/// An event as printed.
#[derive(Debug)]
pub struct EventView {
    pub sequence: u64,
    pub time: Option<String>,
    pub kind: String,
    pub container: String,
    pub container_id: String,
    pub node: String,
    pub actor: String,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub message: String,
    pub session: String,
}

impl From<&pb::Event> for EventView {
    fn from(e: &pb::Event) -> Self {
        Self {
            sequence: e.sequence,
            time: time_millis(e.time),
            kind: event_word(e.r#type()),
            container: e.container.clone(),
            container_id: e.container_id.clone(),
            node: e.node.clone(),
            actor: e.actor.clone(),
            reason: e.reason.clone(),
            exit_code: e.exit_code,
            message: e.message.clone(),
            session: e.session.clone(),
        }
    }
}

/// A time as RFC 3339 in seconds.
pub(crate) fn time(t: Option<prost_types::Timestamp>) -> Option<String> {
    let st = SystemTime::try_from(t?).ok()?;
    Some(humantime::format_rfc3339_seconds(st).to_string())
}

/// A time as RFC 3339 in milliseconds (events and usage samples).
fn time_millis(t: Option<prost_types::Timestamp>) -> Option<String> {
    let st = SystemTime::try_from(t?).ok()?;
    Some(humantime::format_rfc3339_millis(st).to_string())
}

/// Seconds from now until `t` (negative: past).
pub(super) fn until(t: Option<prost_types::Timestamp>) -> Option<i64> {
    let t = SystemTime::try_from(t?).ok()?;
    Some(match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// Seconds since the container was last in use.
pub(super) fn idle_seconds(c: &pb::Container) -> Option<u64> {
    until(c.status().last_active_time).map(|s| (-s).max(0) as u64)
}

/// `DESIRED_STATE_RUNNING` → `running`.
pub(super) fn desired_word(s: pb::DesiredState) -> String {
    words::word(s.as_str_name(), "DESIRED_STATE_")
}

/// `STOP_REASON_LEASE_EXPIRED` → `lease_expired` (empty when unset).
pub fn stop_reason_word(r: pb::StopReason) -> String {
    match r {
        pb::StopReason::Unspecified => String::new(),
        r => words::word(r.as_str_name(), "STOP_REASON_"),
    }
}

/// `HEALTH_STATUS_UNHEALTHY` → `unhealthy` (empty when unset).
pub(super) fn health_word(h: pb::HealthStatus) -> String {
    match h {
        pb::HealthStatus::Unspecified => String::new(),
        h => words::word(h.as_str_name(), "HEALTH_STATUS_"),
    }
}

/// `EVENT_TYPE_CONTAINER_STARTED` → `container.started`.
pub fn event_word(t: pb::EventType) -> String {
    let s = words::word(t.as_str_name(), "EVENT_TYPE_");
    match s.split_once('_') {
        Some((kind, what)) => format!("{kind}.{what}"),
        None => s,
    }
}
