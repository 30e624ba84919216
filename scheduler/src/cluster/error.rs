//! Why an operation failed: [`Error`], one variant per gRPC status code,
//! with the conversions from store and bus errors, and the errors a
//! missing record or an agent's refusal stands for.

use devctl_proto::{
    pb::{self, agent_reply::Result as Reply},
    validate::InvalidField,
};
use thiserror::Error;

use crate::{bus::BusError, store::StoreError};

/// Why an operation failed. Each variant maps to one gRPC status code.
#[derive(Debug, Error)]
pub enum Error {
    /// INVALID_ARGUMENT: a field is malformed.
    #[error("{0}")]
    Invalid(#[from] InvalidField),
    /// INVALID_ARGUMENT: the engine refused the container's settings.
    #[error("{0}")]
    Rejected(String),
    /// NOT_FOUND: no such container or node (in the cluster's records).
    #[error("{0}")]
    NotFound(String),
    /// ALREADY_EXISTS: the name is taken.
    #[error(
        "a container named {0:?} already exists; choose another name or remove it first (devctl rm {0})"
    )]
    AlreadyExists(String),
    /// FAILED_PRECONDITION: the cluster's state does not allow the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// RESOURCE_EXHAUSTED: no node has the capacity now.
    #[error("{0}")]
    ResourceExhausted(String),
    /// UNAVAILABLE: a node's agent did not answer; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// INTERNAL: the store or the engine failed.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The same error with `note` appended to its message.
    pub(super) fn annotate(self, note: &str) -> Self {
        let with = |m: String| format!("{m}; {note}");
        match self {
            Error::Invalid(f) => Error::Rejected(with(f.to_string())),
            Error::Rejected(m) => Error::Rejected(with(m)),
            Error::NotFound(m) => Error::NotFound(with(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(m),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(with(m)),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(with(m)),
            Error::Unavailable(m) => Error::Unavailable(with(m)),
            Error::Internal(m) => Error::Internal(with(m)),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(name) => Error::AlreadyExists(name),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<BusError> for Error {
    fn from(e: BusError) -> Self {
        match e {
            BusError::NoResponders(_) | BusError::Timeout { .. } => {
                Error::Unavailable(e.to_string())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

pub(super) fn not_found(name: &str) -> Error {
    Error::NotFound(format!(
        "container {name:?} not found; `devctl ls` lists containers"
    ))
}

/// The error an unexpected or failed reply stands for.
pub(super) fn agent_error(reply: Reply, c: &pb::Container) -> Error {
    let e = match reply {
        Reply::Error(e) => e,
        other => {
            return Error::Internal(format!(
                "the agent of node {:?} sent an unexpected reply: {other:?}",
                c.node
            ));
        }
    };
    match pb::AgentErrorCode::try_from(e.code).unwrap_or_default() {
        pb::AgentErrorCode::ImageNotFound | pb::AgentErrorCode::Conflict => {
            Error::FailedPrecondition(e.message)
        }
        pb::AgentErrorCode::ContainerNotFound => Error::FailedPrecondition(format!(
            "container {:?} is missing on node {:?} (removed outside devctl?); remove it with `devctl rm {}`",
            c.name, c.node, c.name
        )),
        pb::AgentErrorCode::Invalid => Error::Rejected(e.message),
        pb::AgentErrorCode::ShuttingDown => Error::Unavailable(format!(
            "the agent of node {:?} is shutting down; retry when it is back",
            c.node
        )),
        _ => Error::Internal(format!("node {:?}: {}", c.node, e.message)),
    }
}
