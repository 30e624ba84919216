//! `devctl.v1.StatsService`.

use devctl_proto::pb::{self, stats_service_server::StatsService};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    StreamApi,
    auth::{ScopeFilter, caller},
    send_or_stop,
};

/// Checks the container names a stats request asks for.
fn check_names(names: &[String]) -> Result<(), Status> {
    use devctl_proto::validate;
    validate::max_count("names", names.len(), validate::limits::MAX_NAMES)
        .and_then(|()| {
            names
                .iter()
                .try_for_each(|n| validate::dns_label("names", n))
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl StatsService for StreamApi {
    type WatchStatsStream = ReceiverStream<Result<pb::StatsUpdate, Status>>;

    async fn get_stats(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let id = caller(&req)?;
        check_names(&req.get_ref().names)?;
        let mut scope = ScopeFilter::new(&id);
        let mut stats = self.cluster.stats().get(&req.get_ref().names);
        // A developer sees their own containers' samples (and the nodes').
        stats
            .containers
            .retain(|c| scope.allows(&c.id, || self.cluster.owner_by_id(&c.id)));
        Ok(Response::new(stats))
    }

    async fn watch_stats(
        &self,
        req: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let id = caller(&req)?;
        check_names(&req.get_ref().names)?;
        let mut scope = ScopeFilter::new(&id);
        let cluster = self.cluster.clone();
        let r = req.into_inner();
        let mut updates = self.cluster.stats().subscribe();
        let (tx, rx) = mpsc::channel(256);
        let session = self.session(&id)?;
        let stop = session.stop().clone();
        self.streams.spawn(async move {
            loop {
                let update = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    u = updates.recv() => match u {
                        Ok(u) => u,
                        // Too slow: skip to the newest samples.
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    },
                };
                let wanted = match &update.sample {
                    Some(pb::stats_update::Sample::Container(c)) => {
                        (r.names.is_empty() || r.names.contains(&c.name))
                            && scope.allows(&c.id, || cluster.owner_by_id(&c.id))
                    }
                    Some(pb::stats_update::Sample::Node(_)) => r.nodes,
                    None => false,
                };
                if wanted && !send_or_stop(&tx, Ok(update), &stop).await {
                    break;
                }
            }
            session.tell_if_revoked(&tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
