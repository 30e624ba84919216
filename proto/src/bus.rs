//! Subjects of the scheduler ↔ agent bus.
//!
//! ```text
//! devctl.node.<node>.cmd        scheduler -> agent   request/reply  AgentCommand -> AgentReply
//! devctl.node.<node>.heartbeat  agent -> scheduler   publish        Heartbeat
//! ```
//!
//! Node names are DNS labels (see [`crate::validate::dns_label`]), so they never
//! contain the NATS separators `.`, `*` or `>`.

/// Root of every devctl subject.
pub const ROOT: &str = "devctl";

/// Commands for one node's agent.
pub fn command_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.cmd")
}

/// Heartbeats of one node.
pub fn heartbeat_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.heartbeat")
}

/// Engine events of one node (JetStream stream [`NODE_EVENTS_STREAM`]).
pub fn engine_events_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.events")
}

/// The JetStream stream of every node's engine events (a work queue the
/// scheduler consumes).
pub const NODE_EVENTS_STREAM: &str = "DEVCTL_NODE_EVENTS";
/// Its subjects.
pub const ALL_ENGINE_EVENTS: &str = "devctl.node.*.events";

/// The JetStream stream of the cluster's event history.
pub const EVENTS_STREAM: &str = "DEVCTL_EVENTS";
/// Its subjects.
pub const ALL_EVENTS: &str = "devctl.events.>";

/// Subject of a container's events: `devctl.events.<node>.container.<name>`.
pub fn container_event_subject(node: &str, name: &str) -> String {
    format!("{ROOT}.events.{node}.container.{name}")
}

/// Subject of a node's own events: `devctl.events.<node>.node`.
pub fn node_event_subject(node: &str) -> String {
    format!("{ROOT}.events.{node}.node")
}

/// The subject filter selecting the events of `node` and/or `container`
/// (each `None` for any).
pub fn event_filter(node: Option<&str>, container: Option<&str>) -> String {
    match (node, container) {
        (None, None) => ALL_EVENTS.to_string(),
        (Some(n), None) => format!("{ROOT}.events.{n}.>"),
        (None, Some(c)) => format!("{ROOT}.events.*.container.{c}"),
        (Some(n), Some(c)) => container_event_subject(n, c),
    }
}

/// Chunks an agent may send before it waits for credit.
pub const STREAM_WINDOW: u32 = 64;
/// Largest chunk payload an agent sends (well under NATS's 1 MiB default).
pub const STREAM_CHUNK_MAX: usize = 64 * 1024;
/// How often a reading scheduler sends a keepalive.
pub const STREAM_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an agent keeps a stream without hearing from its reader.
pub const STREAM_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Input subject of exec session `id`.
pub fn exec_input_subject(id: &str) -> String {
    format!("{ROOT}.stream.{id}.input")
}

/// Data and control subjects of stream `id`.
pub fn stream_subjects(id: &str) -> (String, String) {
    (
        format!("{ROOT}.stream.{id}.data"),
        format!("{ROOT}.stream.{id}.control"),
    )
}

/// Stats reports of one node.
pub fn stats_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.stats")
}

/// Stats reports of every node.
pub const ALL_STATS: &str = "devctl.node.*.stats";

/// Heartbeats of every node (for the scheduler's subscription).
pub const ALL_HEARTBEATS: &str = "devctl.node.*.heartbeat";

/// The node name in a subject of the form `devctl.node.<node>.…`.
pub fn node_of_subject(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ROOT), Some("node"), Some(node)) if !node.is_empty() => Some(node),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_the_node_name() {
        assert_eq!(command_subject("node-a"), "devctl.node.node-a.cmd");
        assert_eq!(node_of_subject(&heartbeat_subject("n1")), Some("n1"));
        assert_eq!(node_of_subject("other.node.x.heartbeat"), None);
        assert_eq!(node_of_subject("devctl.node"), None);
    }
}
