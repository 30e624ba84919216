//! Labels devctl puts on every engine container and network it creates. The `io.devctl.`
//! prefix is reserved: users cannot set labels under it.

/// Reserved prefix.
pub const PREFIX: &str = "io.devctl.";
/// Always `"true"` on containers devctl manages.
pub const MANAGED: &str = "io.devctl.managed";
/// The container's devctl name.
pub const NAME: &str = "io.devctl.name";
/// The container's devctl id.
pub const ID: &str = "io.devctl.id";
/// The identity that created the container.
pub const OWNER: &str = "io.devctl.owner";
/// The node (agent) the container belongs to: an agent only ever touches
/// containers carrying its own node name here.
pub const NODE: &str = "io.devctl.node";
/// On an engine network devctl manages: what it is for (`owner`: the
/// network of one owner's containers on one node).
pub const NETWORK: &str = "io.devctl.network";
/// On a workspace volume: the workspace's devctl name.
pub const WORKSPACE: &str = "io.devctl.workspace";
/// On a workspace volume: the workspace's devctl id.
pub const WORKSPACE_ID: &str = "io.devctl.workspace-id";

/// The engine volume of workspace `name` on `node`. The node is part of it
/// because one engine may serve several nodes (agents sharing an engine):
/// each node's workspaces are its own volumes, and a move between two such
/// nodes copies as between two hosts. Both are DNS labels, in which `_`
/// cannot occur, so the name is unambiguous.
pub fn workspace_volume(node: &str, name: &str) -> String {
    format!("devctl-ws_{node}_{name}")
}
