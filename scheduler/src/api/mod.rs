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

/// Sends `item` to a client stream, unless the server stops first (a client
/// that has stopped reading must not hold shutdown open). `false`: the
/// stream should end.
pub(crate) async fn send_or_stop<T>(
    tx: &tokio::sync::mpsc::Sender<T>,
    item: T,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        sent = tx.send(item) => sent.is_ok(),
    }
}
