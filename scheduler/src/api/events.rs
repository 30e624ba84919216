//! `devctl.v1.EventService`.

use devctl_proto::{
    bus::event_filter,
    pb::{self, event_service_server::EventService},
    validate,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    StreamApi,
    auth::{ScopeFilter, caller},
    send_or_stop,
};
use crate::bus::EventStart;

/// Events buffered per watcher before the reader waits for the client.
const WATCH_BUFFER: usize = 64;

#[tonic::async_trait]
impl EventService for StreamApi {
    type WatchEventsStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let id = caller(&req)?;
        let mut scope = ScopeFilter::new(&id);
        let cluster = self.cluster.clone();
        let r = req.into_inner();
        let container = (!r.container.is_empty()).then_some(r.container.as_str());
        let node = (!r.node.is_empty()).then_some(r.node.as_str());
        if let Some(c) = container {
            validate::dns_label("container", c)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if let Some(n) = node {
            validate::dns_label("node", n).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let start = match (r.since_sequence, r.since_time) {
            (0, None) => EventStart::All,
            (0, Some(t)) => EventStart::Time(super::start_time("since_time", t)?),
            (seq, _) => EventStart::Sequence(seq),
        };
        let mut reader = self
            .cluster
            .watch_events(event_filter(node, container), start)
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        if !r.follow && reader.pending == 0 {
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let session = self.session(&id)?;
        let stop = session.stop().clone();
        self.streams.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    next = reader.next() => next,
                };
                match next {
                    None => break,
                    Some(Err(e)) => {
                        send_or_stop(&tx, Err(Status::unavailable(e.to_string())), &stop).await;
                        break;
                    }
                    Some(Ok((event, pending))) => {
                        // A developer sees node events and their own
                        // containers' events (of containers still recorded).
                        let visible = scope.allows(&event.container_id, || {
                            cluster.owner_by_id(&event.container_id)
                        });
                        // Waits while the client is slow: back-pressure.
                        let sent = !visible || send_or_stop(&tx, Ok(event), &stop).await;
                        if !sent || (!r.follow && pending == 0) {
                            break;
                        }
                    }
                }
            }
            session.tell_if_revoked(&tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
