//! The public gRPC API: one file per service. Each handler decodes,
//! authorizes, calls [`crate::cluster::Cluster`] and encodes; `status`
//! turns the cluster's errors into statuses with machine-readable details.

pub mod audit;
pub mod auth;
pub mod build;
pub mod containers;
pub mod enroll;
pub mod events;
pub mod exec;
pub mod graph;
pub mod images;
pub mod logs;
pub mod nodes;
pub mod push;
pub mod registry;
pub mod ssh;
pub mod stats;
mod status;
pub mod templates;
pub mod tokens;
pub mod tunnel;
#[cfg(test)]
mod tunnel_tests;
pub mod watch;
pub mod workspaces;

pub use status::ERROR_DOMAIN;
use tonic::Status;

/// The latest time a stream may start from: 9999-12-31T23:59:59Z (the
/// event store's calendar ends there).
const LATEST_START: i64 = 253_402_300_799;

/// A request's start time `field`, refused with INVALID_ARGUMENT unless it
/// lies between 1970 and the end of year 9999.
pub(crate) fn start_time(
    field: &str,
    t: prost_types::Timestamp,
) -> Result<std::time::SystemTime, Status> {
    if !(0..=LATEST_START).contains(&t.seconds) {
        return Err(Status::invalid_argument(format!(
            "{field}: {}s since 1970 is out of range; give a time between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z (e.g. --since 10m)",
            t.seconds
        )));
    }
    std::time::SystemTime::try_from(t)
        .map_err(|_| Status::invalid_argument(format!("{field}: not a valid time")))
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

/// How often a stream checks that its node is still up.
const NODE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// A node's output stream read for one client (logs, exec).
#[derive(Debug)]
pub(crate) struct NodeStream {
    reader: crate::bus::StreamReader,
    node: String,
    alive: tokio::time::Interval,
    cluster: crate::cluster::Cluster,
}

impl NodeStream {
    pub(crate) fn new(reader: crate::bus::StreamReader, cluster: crate::cluster::Cluster) -> Self {
        Self {
            node: reader.node().to_string(),
            reader,
            alive: tokio::time::interval(NODE_CHECK),
            cluster,
        }
    }

    /// The next piece of output; `None` when the stream ended, the client
    /// is gone (`tx` closed) or the server stops. A node that goes down is
    /// an error (it would otherwise send nothing more, ever).
    pub(crate) async fn next<T>(
        &mut self,
        tx: &tokio::sync::mpsc::Sender<T>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<Result<(devctl_proto::pb::OutputStream, Vec<u8>), crate::bus::BusError>> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tx.closed() => return None,
                next = self.reader.next() => return next,
                _ = self.alive.tick() => {
                    if !self.cluster.node_ready(&self.node) {
                        return Some(Err(crate::bus::BusError::Nats(format!(
                            "node {:?} went down; the stream is cut",
                            self.node
                        ))));
                    }
                }
            }
        }
    }

    /// The exit code the stream ended with (exec).
    pub(crate) fn exit_code(&self) -> Option<i32> {
        self.reader.exit_code()
    }

    /// Ends the stream on the agent too.
    pub(crate) async fn close(self) {
        self.reader.close().await;
    }
}

/// The streaming services (events, logs, exec, stats, tunnels), one handle
/// for all of them: the cluster, the server's stop signal (every stream
/// ends at shutdown) and the tracker the streams' tasks run on.
#[derive(Debug, Clone)]
pub struct StreamApi {
    cluster: crate::cluster::Cluster,
    auth: auth::Authenticator,
    stop: tokio_util::sync::CancellationToken,
    streams: tokio_util::task::TaskTracker,
}

impl StreamApi {
    /// The services over `cluster`; their streams end when `stop` is
    /// cancelled and run as tasks of `streams`.
    pub fn new(
        cluster: crate::cluster::Cluster,
        auth: auth::Authenticator,
        stop: tokio_util::sync::CancellationToken,
        streams: tokio_util::task::TaskTracker,
    ) -> Self {
        Self {
            cluster,
            auth,
            stop,
            streams,
        }
    }

    /// Registers a stream of `id`: it ends at shutdown or when `id`'s
    /// credential is revoked.
    fn session(&self, id: &devctl_proto::identity::Identity) -> Result<auth::Session, Status> {
        self.auth.open_session(id, &self.stop)
    }

    /// Admits `id` to a session in container `name` for `method` (exec, a
    /// tunnel): the container's owner and admins; read-only roles and other
    /// developers are refused. The session is a stream of `id` (see
    /// [`StreamApi::session`]), registered before the node is asked: a
    /// refused stream costs the node nothing.
    fn container_session(
        &self,
        id: &devctl_proto::identity::Identity,
        method: &str,
        name: &str,
    ) -> Result<auth::Session, Status> {
        auth::may_operate(id, method, &self.cluster.get(name)?)?;
        self.session(id)
    }
}
