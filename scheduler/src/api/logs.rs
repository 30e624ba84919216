//! `devctl.v1.LogService`.

use devctl_proto::pb::{self, log_service_server::LogService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    NodeStream, StreamApi, audit,
    auth::{caller, may_see},
    send_or_stop,
};

/// Chunks buffered per reader before the agent is held back.
const BUFFER: usize = 16;

#[tonic::async_trait]
impl LogService for StreamApi {
    type StreamLogsStream = ReceiverStream<Result<pb::LogChunk, Status>>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        let r = req.into_inner();
        may_see(&id, "StreamLogs", &self.cluster.get(&r.name)?)?;
        // Before the node opens its end: a refused stream costs it nothing.
        let session = self.session(&id)?;
        let reader = self.cluster.open_logs(&r.name, &r).await?;
        let mut stream = NodeStream::new(reader, self.cluster.clone());
        let (tx, rx) = mpsc::channel(BUFFER);
        let stop = session.stop().clone();
        self.streams.spawn(async move {
            while let Some(next) = stream.next(&tx, &stop).await {
                let item = match next {
                    Ok((which, data)) => Ok(pb::LogChunk {
                        stream: which as i32,
                        data,
                    }),
                    Err(e) => Err(Status::unavailable(e.to_string())),
                };
                let failed = item.is_err();
                // Waits while the client is slow; the agent is held back
                // by the credit it does not get meanwhile.
                if !send_or_stop(&tx, item, &stop).await || failed {
                    break;
                }
            }
            stream.close().await;
            session.tell_if_revoked(&tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
