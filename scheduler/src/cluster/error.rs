//! Why an operation failed: [`Error`], a kind ([`ErrorKind`], what went
//! wrong in the cluster's terms) with the message for people and the
//! underlying error, if any (as async-nats' `Error<Kind>`); the conversions
//! from store, bus, validation and quota errors; and the errors a missing
//! record, a placement failure or an agent's refusal stand for.
//!
//! The API edge (`api/status.rs`) maps each kind to a gRPC code and to
//! machine-readable details; code matches on [`Error::kind`], never on the
//! message.

use devctl_proto::container::ContainerExt;
use std::time::Duration;

use devctl_proto::{
    pb::{self, agent_reply::Result as Reply},
    validate::InvalidField,
};
use thiserror::Error;

use crate::{
    bus::BusError,
    placement::{PlacementError, Rejection},
    quota::Exceeded,
    store::StoreError,
};

/// What went wrong, in the cluster's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// A request field is malformed.
    InvalidSpec {
        /// The field at fault, as the API names it.
        field: String,
    },
    /// The engine of `node` refused the container's settings.
    EngineRejected {
        /// The node.
        node: String,
    },
    /// No such container or node in the cluster's records.
    NotFound {
        /// `"container"` or `"node"`.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A container of that name exists.
    NameTaken {
        /// The name.
        name: String,
    },
    /// The container's state does not allow the call (running, stopped,
    /// being removed).
    WrongState {
        /// The container.
        name: String,
    },
    /// The container's node is down.
    NodeNotReady {
        /// The node.
        node: String,
    },
    /// The container's node does not have it (removed outside devctl).
    MissingOnNode {
        /// The node.
        node: String,
        /// The container.
        name: String,
    },
    /// The node's engine does not have the image.
    ImageNotFound {
        /// The node.
        node: String,
    },
    /// The node's engine reports a conflict with the call.
    EngineConflict {
        /// The node.
        node: String,
    },
    /// The cluster has no nodes.
    NoNodes,
    /// Every node is unsuitable, none only for lack of capacity: each
    /// node's reason.
    NoSuitableNode {
        /// Why each node was rejected.
        rejections: Vec<Rejection>,
    },
    /// Some node is short of capacity now (retrying later may succeed):
    /// each node's reason.
    NoCapacity {
        /// Why each node was rejected.
        rejections: Vec<Rejection>,
    },
    /// The create would go over the owner's quota (boxed: the largest
    /// kind by far).
    QuotaExceeded(Box<Exceeded>),
    /// The caller made too many calls.
    RateLimited {
        /// How long until the next call is admitted.
        retry_after: Duration,
    },
    /// The node's agent is not connected or did not answer in time.
    AgentUnreachable {
        /// The node.
        node: String,
    },
    /// The node's agent is shutting down.
    AgentShuttingDown {
        /// The node.
        node: String,
    },
    /// The node's agent runs no SSH server (it reports no host key).
    NoSshServer {
        /// The node.
        node: String,
    },
    /// The node's agent does not know the command (an older release).
    AgentTooOld {
        /// The node.
        node: String,
    },
    /// The node's agent could not reach a tunnel's target in the container
    /// (e.g. nothing listens on the port).
    TunnelRefused {
        /// The node.
        node: String,
        /// The container.
        name: String,
    },
    /// The image's registry refused the pull's credentials (or wanted some
    /// and none are stored): fixed with `devctl registries add HOST`.
    RegistryAuthFailed {
        /// The node that pulled.
        node: String,
        /// The registry host.
        host: String,
    },
    /// The image's registry could not be reached from the node.
    RegistryUnreachable {
        /// The node that pulled.
        node: String,
        /// The registry host.
        host: String,
    },
    /// The event history could not be read or written.
    HistoryUnavailable,
    /// The workspace is used by a container (or being moved).
    WorkspaceInUse {
        /// The workspace.
        workspace: String,
        /// The container using it (empty: a move).
        container: String,
    },
    /// The node a container's workspace lives on is cordoned or down: the
    /// container is not started elsewhere without its data.
    WorkspaceNodeUnavailable {
        /// The workspace.
        workspace: String,
        /// Its node.
        node: String,
    },
    /// The workspace's volume is gone from its node.
    WorkspaceMissing {
        /// The workspace.
        workspace: String,
        /// Its node.
        node: String,
    },
    /// The node's agent does not allow one of the container's mounts (a
    /// host path outside its --allow-bind list).
    MountRefused {
        /// The node.
        node: String,
    },
    /// The workspace belongs to someone else.
    WorkspaceNotYours {
        /// The workspace.
        workspace: String,
    },
    /// The store, the engine or the scheduler itself failed.
    Internal,
}

/// Why an operation failed: a [`kind`](Error::kind) to match on, a message
/// that says what to fix (it already includes the source's text), and the
/// underlying error, if any.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`, saying its text.
    pub fn with_source<S>(kind: ErrorKind, source: S) -> Self
    where
        S: std::error::Error + Send + Sync + 'static,
    {
        Self {
            kind,
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// An internal error saying `message`.
    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The same error with `note` appended to its message.
    pub(super) fn annotate(mut self, note: &str) -> Self {
        self.message = format!("{}; {note}", self.message);
        self
    }
}

impl From<InvalidField> for Error {
    fn from(f: InvalidField) -> Self {
        let field = f.field.clone();
        Self::new(ErrorKind::InvalidSpec { field }, f.to_string())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(name) => name_taken(name),
            other => Self::with_source(ErrorKind::Internal, other),
        }
    }
}

impl From<BusError> for Error {
    fn from(e: BusError) -> Self {
        match &e {
            BusError::NoResponders(node) | BusError::Timeout { node, .. } => {
                let node = node.clone();
                Self::with_source(ErrorKind::AgentUnreachable { node }, e)
            }
            _ => Self::with_source(ErrorKind::Internal, e),
        }
    }
}

impl From<Box<Exceeded>> for Error {
    fn from(e: Box<Exceeded>) -> Self {
        let message = e.to_string();
        Self::new(ErrorKind::QuotaExceeded(e), message)
    }
}

impl From<PlacementError> for Error {
    fn from(e: PlacementError) -> Self {
        let message = e.to_string();
        Self::new(placement_kind(e), message)
    }
}

/// The kind a placement failure stands for.
pub(super) fn placement_kind(e: PlacementError) -> ErrorKind {
    let capacity = e.is_capacity();
    match e {
        PlacementError::UnknownNode(name) => ErrorKind::NotFound { what: "node", name },
        PlacementError::NoNodes => ErrorKind::NoNodes,
        PlacementError::NoFit(rejections) if capacity => ErrorKind::NoCapacity { rejections },
        PlacementError::NoFit(rejections) => ErrorKind::NoSuitableNode { rejections },
    }
}

/// A container named `name` exists.
pub(super) fn name_taken(name: String) -> Error {
    let message = format!(
        "a container named {name:?} already exists; choose another name or remove it first (devctl rm {name})"
    );
    Error::new(ErrorKind::NameTaken { name }, message)
}

/// No container named `name`.
pub(super) fn not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound {
            what: "container",
            name: name.to_string(),
        },
        format!("container {name:?} not found; `devctl ls` lists containers"),
    )
}

/// No node named `name`.
pub(super) fn node_not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound {
            what: "node",
            name: name.to_string(),
        },
        format!("node {name:?} not found; `devctl nodes` lists nodes"),
    )
}

/// `c`'s state does not allow the call: `message` says why.
pub(super) fn wrong_state(c: &str, message: String) -> Error {
    let name = c.to_string();
    Error::new(ErrorKind::WrongState { name }, message)
}

/// `node` is down: `message` says what cannot be done.
pub(super) fn node_not_ready(node: &str, message: String) -> Error {
    let node = node.to_string();
    Error::new(ErrorKind::NodeNotReady { node }, message)
}

/// The event history failed: `what` did not happen.
pub(super) fn history_unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::HistoryUnavailable, format!("{what}: {e}"))
}

/// The error an agent's refusal to open a tunnel into `c` stands for: as
/// [`agent_error`], but for what a tunnel's refusals mean (CONFLICT: the
/// container is not running on its node; INVALID: its target cannot be
/// reached; BAD_COMMAND: the agent predates tunnels).
pub(super) fn tunnel_error(reply: Reply, c: &pb::Container) -> Error {
    let Reply::Error(e) = &reply else {
        return agent_error(reply, c);
    };
    let node = c.status().node.clone();
    let name = c.name.clone();
    match pb::AgentErrorCode::try_from(e.code).unwrap_or_default() {
        pb::AgentErrorCode::Conflict => wrong_state(
            &name,
            format!(
                "container {name:?} is not running on node {node:?} ({}); start it (devctl start {name})",
                e.message
            ),
        ),
        pb::AgentErrorCode::Invalid => {
            Error::new(ErrorKind::TunnelRefused { node, name }, e.message.clone())
        }
        pb::AgentErrorCode::BadCommand => Error::new(
            ErrorKind::AgentTooOld { node: node.clone() },
            format!(
                "the agent of node {node:?} did not take the tunnel command ({}); an agent older than the scheduler cannot open tunnels: upgrade it",
                e.message
            ),
        ),
        _ => agent_error(reply, c),
    }
}

/// The error an unexpected or failed reply stands for.
pub(super) fn agent_error(reply: Reply, c: &pb::Container) -> Error {
    let e = match reply {
        Reply::Error(e) => e,
        other => {
            return Error::internal(format!(
                "the agent of node {:?} sent an unexpected reply: {other:?}",
                c.status().node
            ));
        }
    };
    let node = c.status().node.clone();
    match pb::AgentErrorCode::try_from(e.code).unwrap_or_default() {
        pb::AgentErrorCode::ImageNotFound => {
            Error::new(ErrorKind::ImageNotFound { node }, e.message)
        }
        pb::AgentErrorCode::Conflict => Error::new(ErrorKind::EngineConflict { node }, e.message),
        pb::AgentErrorCode::RegistryAuthFailed => Error::new(
            ErrorKind::RegistryAuthFailed {
                node,
                host: devctl_proto::registry::registry_host(&c.spec().image),
            },
            e.message,
        ),
        pb::AgentErrorCode::RegistryUnreachable => Error::new(
            ErrorKind::RegistryUnreachable {
                node,
                host: devctl_proto::registry::registry_host(&c.spec().image),
            },
            e.message,
        ),
        pb::AgentErrorCode::ContainerNotFound => Error::new(
            ErrorKind::MissingOnNode {
                node,
                name: c.name.clone(),
            },
            format!(
                "container {:?} is missing on node {:?} (removed outside devctl?); remove it with `devctl rm {}`",
                c.name,
                c.status().node,
                c.name
            ),
        ),
        pb::AgentErrorCode::Invalid => Error::new(ErrorKind::EngineRejected { node }, e.message),
        pb::AgentErrorCode::WorkspaceMissing => Error::new(
            ErrorKind::WorkspaceMissing {
                workspace: c.spec().workspace.clone(),
                node,
            },
            format!(
                "{}; remove the workspace record (devctl workspaces rm {}) to start afresh",
                e.message,
                c.spec().workspace
            ),
        ),
        pb::AgentErrorCode::MountRefused => Error::new(ErrorKind::MountRefused { node }, e.message),
        pb::AgentErrorCode::ShuttingDown => Error::new(
            ErrorKind::AgentShuttingDown { node },
            format!(
                "the agent of node {:?} is shutting down; retry when it is back",
                c.status().node
            ),
        ),
        _ => Error::internal(format!("node {:?}: {}", c.status().node, e.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: pb::AgentErrorCode) -> Reply {
        Reply::Error(pb::AgentError {
            code: code as i32,
            message: "engine says no".into(),
        })
    }

    #[test]
    fn agent_refusals_have_kinds_and_the_same_messages() {
        let c = pb::Container {
            name: "web".into(),
            status: Some(pb::ContainerStatus {
                node: "n1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = agent_error(refusal(pb::AgentErrorCode::ContainerNotFound), &c);
        assert_eq!(
            e.kind(),
            &ErrorKind::MissingOnNode {
                node: "n1".into(),
                name: "web".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "container \"web\" is missing on node \"n1\" (removed outside devctl?); remove it with `devctl rm web`"
        );
        let node = || "n1".to_string();
        let cases = [
            (
                pb::AgentErrorCode::ImageNotFound,
                ErrorKind::ImageNotFound { node: node() },
            ),
            (
                pb::AgentErrorCode::Conflict,
                ErrorKind::EngineConflict { node: node() },
            ),
            (
                pb::AgentErrorCode::Invalid,
                ErrorKind::EngineRejected { node: node() },
            ),
            (pb::AgentErrorCode::Engine, ErrorKind::Internal),
        ];
        for (code, kind) in cases {
            assert_eq!(agent_error(refusal(code), &c).kind(), &kind, "{code:?}");
        }
        let e = agent_error(refusal(pb::AgentErrorCode::ShuttingDown), &c);
        assert_eq!(e.kind(), &ErrorKind::AgentShuttingDown { node: node() });
    }

    #[test]
    fn tunnel_refusals_say_what_they_mean_for_a_tunnel() {
        let c = pb::Container {
            name: "web".into(),
            status: Some(pb::ContainerStatus {
                node: "n1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = tunnel_error(refusal(pb::AgentErrorCode::Conflict), &c);
        assert_eq!(e.kind(), &ErrorKind::WrongState { name: "web".into() });
        assert!(e.to_string().contains("devctl start web"), "{e}");
        let e = tunnel_error(refusal(pb::AgentErrorCode::Invalid), &c);
        assert_eq!(
            e.kind(),
            &ErrorKind::TunnelRefused {
                node: "n1".into(),
                name: "web".into()
            }
        );
        assert_eq!(e.to_string(), "engine says no", "the agent's words");
        let e = tunnel_error(refusal(pb::AgentErrorCode::BadCommand), &c);
        assert_eq!(e.kind(), &ErrorKind::AgentTooOld { node: "n1".into() });
        // The rest as for any command.
        let e = tunnel_error(refusal(pb::AgentErrorCode::ContainerNotFound), &c);
        assert!(matches!(e.kind(), ErrorKind::MissingOnNode { .. }), "{e:?}");
    }

    #[test]
    fn an_annotated_error_keeps_its_kind() {
        let e = not_found("web").annotate("note");
        assert_eq!(
            e.to_string(),
            "container \"web\" not found; `devctl ls` lists containers; note"
        );
        assert!(matches!(
            e.kind(),
            ErrorKind::NotFound {
                what: "container",
                ..
            }
        ));
    }
}
