//! The public gRPC API: one file per service. Each handler decodes,
//! authorizes, calls [`crate::cluster::Cluster`] and encodes.

pub mod auth;
pub mod containers;
pub mod events;
pub mod exec;
pub mod logs;
pub mod nodes;
pub mod stats;

use tonic::Status;

use crate::cluster::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid(_) | Error::Rejected(_) => Status::invalid_argument(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Internal(_) => {
                tracing::error!(error = %msg, "internal error");
                Status::internal(msg)
            }
        }
    }
}
