//! API enum values as the words people and the graph read them:
//! `CONTAINER_STATE_RUNNING` → `running` (the CLI's tables, the graph's
//! `status` and `state` properties).

use crate::pb;

/// A proto enum value's name without its type `prefix`, lowercase:
/// `word("NODE_STATE_READY", "NODE_STATE_")` → `ready`.
pub fn word(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase()
}

/// `CONTAINER_STATE_RUNNING` → `running`.
pub fn container_state(s: pb::ContainerState) -> String {
    word(s.as_str_name(), "CONTAINER_STATE_")
}

/// `NODE_STATE_READY` → `ready`.
pub fn node_state(s: pb::NodeState) -> String {
    word(s.as_str_name(), "NODE_STATE_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_values_read_as_lowercase_words() {
        assert_eq!(container_state(pb::ContainerState::Running), "running");
        assert_eq!(node_state(pb::NodeState::Down), "down");
        assert_eq!(
            word("STOP_REASON_LEASE_EXPIRED", "STOP_REASON_"),
            "lease_expired"
        );
    }
}
