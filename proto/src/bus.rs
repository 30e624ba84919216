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
