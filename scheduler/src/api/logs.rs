//! `devctl.v1.LogService`.

use devctl_proto::pb::{self, log_service_server::LogService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};

use super::{auth::caller, send_or_stop};
use crate::{bus::BusError, cluster::Cluster};

/// How often a stream checks that its node is still up.
pub(crate) const NODE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Chunks buffered per reader before the agent is held back.
const BUFFER: usize = 16;

/// The log service over a cluster.
#[derive(Debug, Clone)]
pub struct LogApi {
    cluster: Cluster,
    stop: CancellationToken,
    streams: TaskTracker,
}

impl LogApi {
    /// The service; its streams end when `stop` is cancelled.
    pub fn new(cluster: Cluster, stop: CancellationToken, streams: TaskTracker) -> Self {
        Self {
            cluster,
            stop,
            streams,
        }
    }
}

#[tonic::async_trait]
impl LogService for LogApi {
    type StreamLogsStream = ReceiverStream<Result<pb::LogChunk, Status>>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        caller(&req)?;
        let r = req.into_inner();
        let mut reader = self.cluster.open_logs(&r.name, &r).await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let (stop, cluster) = (self.stop.clone(), self.cluster.clone());
        self.streams.spawn(async move {
            let node = reader.node().to_string();
            let mut alive = tokio::time::interval(NODE_CHECK);
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    next = reader.next() => next,
                    // A dead node sends nothing more: say so instead of
                    // waiting forever.
                    _ = alive.tick() => {
                        if cluster.node_ready(&node) {
                            continue;
                        }
                        Some(Err(BusError::Nats(format!("node {node:?} went down; the stream is cut"))))
                    }
                };
                let item = match next {
                    None => break,
                    Some(Ok((stream, data))) => Ok(pb::LogChunk {
                        stream: stream as i32,
                        data,
                    }),
                    Some(Err(e)) => Err(Status::unavailable(e.to_string())),
                };
                let failed = item.is_err();
                // Waits while the client is slow; the agent is held back
                // by the credit it does not get meanwhile.
                if !send_or_stop(&tx, item, &stop).await || failed {
                    break;
                }
            }
            reader.close().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
