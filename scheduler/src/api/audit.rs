//! `devctl.v1.AuditService`, which reads the audit log back. The recording
//! middleware is [`crate::audit`]; the handlers reach its hooks as
//! `api::audit::{admit, target, …}`.

use std::time::SystemTime;

use devctl_proto::pb::{self, audit_service_server};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    StreamApi,
    auth::{caller, must_be_admin},
    send_or_stop,
};
pub(crate) use crate::audit::{Call, admit, admit_anonymous, call, target};
use crate::bus::Bus;

/// `devctl.v1.AuditService` over the bus's audit stream.
#[derive(Debug, Clone)]
pub struct AuditApi {
    bus: Bus,
    streams: StreamApi,
}

impl AuditApi {
    /// The service reading `bus`'s audit log; its streams run (and end at
    /// shutdown) like those of `streams`.
    pub fn new(bus: Bus, streams: StreamApi) -> Self {
        Self { bus, streams }
    }
}

#[tonic::async_trait]
impl audit_service_server::AuditService for AuditApi {
    type ListAuditEntriesStream = ReceiverStream<Result<pb::AuditEntry, Status>>;

    async fn list_audit_entries(
        &self,
        req: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<Self::ListAuditEntriesStream>, Status> {
        let id = caller(&req)?;
        target(&req, &req.get_ref().identity);
        must_be_admin(&id, "ListAuditEntries", "reading the audit log")?;
        let r = req.into_inner();
        if !r.identity.is_empty() {
            devctl_proto::validate::dns_label("identity", &r.identity)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let since = r.since.map(|t| super::start_time("since", t)).transpose()?;
        let mut reader = self
            .bus
            .read_audit(since, u64::from(r.last))
            .await
            .map_err(|e| Status::unavailable(format!("reading the audit log: {e}")))?;
        let (tx, rx) = mpsc::channel(64);
        // Like every stream: it ends when its caller's credential is revoked
        // or expires, not only at shutdown.
        let session = self.streams.session(&id)?;
        let stop = session.stop().clone();
        self.streams.streams.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    next = reader.next() => next,
                };
                let item = match next {
                    None => break,
                    Some(Ok(e)) if !r.identity.is_empty() && e.identity != r.identity => continue,
                    // Read from the newest `last`: skip those before `since`.
                    Some(Ok(e))
                        if since.is_some_and(|s| {
                            e.time.and_then(|t| SystemTime::try_from(t).ok()) < Some(s)
                        }) =>
                    {
                        continue;
                    }
                    Some(Ok(e)) => Ok(e),
                    Some(Err(e)) => Err(Status::unavailable(e.to_string())),
                };
                let failed = item.is_err();
                if !send_or_stop(&tx, item, &stop).await || failed {
                    break;
                }
            }
            session.tell_if_revoked(&tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
