//! The audit log's JetStream stream (see [`crate::audit`]): written by the
//! scheduler alone, read by `ListAuditEntries`.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use devctl_proto::pb;
use prost::Message;

use super::{
    Bus, BusError,
    jetstream::{EventStart, next_ordered},
};

/// The JetStream stream of the audit log (one message per entry).
pub const AUDIT_STREAM: &str = "DEVCTL_AUDIT";
/// The subject audit entries are published on.
pub const AUDIT_SUBJECT: &str = "devctl.audit";
impl Bus {
    /// Creates the audit stream if missing (file storage, entries kept for
    /// `retention`), or applies `retention` to the existing one.
    pub async fn ensure_audit_stream(
        &self,
        retention: Duration,
        max_bytes: i64,
    ) -> Result<(), BusError> {
        self.jetstream
            .create_or_update_stream(stream::Config {
                name: AUDIT_STREAM.into(),
                subjects: vec![AUDIT_SUBJECT.into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: retention,
                // 0: no size cap (JetStream's -1).
                max_bytes: if max_bytes > 0 { max_bytes } else { -1 },
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Nats(format!("JetStream: {e}")))?;
        Ok(())
    }

    /// The audit stream's configuration and state.
    async fn audit_info(&self) -> Result<stream::Info, BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        let mut stream = self
            .jetstream
            .get_stream(AUDIT_STREAM)
            .await
            .map_err(|e| nats(&e))?;
        stream.info().await.cloned().map_err(|e| nats(&e))
    }

    /// The audit log's size in bytes and its cap (`None`: no cap).
    pub async fn audit_usage(&self) -> Result<(u64, Option<u64>), BusError> {
        let info = self.audit_info().await?;
        let cap = u64::try_from(info.config.max_bytes).ok().filter(|c| *c > 0);
        Ok((info.state.bytes, cap))
    }

    /// Appends one entry to the audit log and waits for the server to
    /// store it.
    pub async fn publish_audit(&self, entry: &pb::AuditEntry) -> Result<(), BusError> {
        let nats = |e: &dyn std::fmt::Display| BusError::Nats(format!("JetStream: {e}"));
        self.jetstream
            .publish(AUDIT_SUBJECT, entry.encode_to_vec().into())
            .await
            .map_err(|e| nats(&e))?
            .await
            .map_err(|e| nats(&e))?;
        Ok(())
    }

    /// Reads the audit log from `since` (or the oldest retained entry), in
    /// order, up to the entries stored when the read began; `last` (if
    /// not 0): from the `last`-th newest entry instead (a start sequence:
    /// the server seeks to it), and the caller skips any before `since`.
    pub async fn read_audit(
        &self,
        since: Option<std::time::SystemTime>,
        last: u64,
    ) -> Result<AuditReader, BusError> {
        let start = if last > 0 {
            let state = self.audit_info().await?.state;
            EventStart::Sequence(
                state
                    .last_sequence
                    .saturating_sub(last - 1)
                    .max(state.first_sequence)
                    .max(1),
            )
        } else {
            since.map_or(EventStart::All, EventStart::Time)
        };
        let (messages, pending) = self
            .ordered_read(AUDIT_STREAM, String::new(), start)
            .await?;
        Ok(AuditReader {
            messages,
            done: pending == 0,
        })
    }
}

/// A read of the audit log up to its end when the read began.
pub struct AuditReader {
    messages: consumer::pull::Ordered,
    done: bool,
}

impl std::fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl AuditReader {
    /// The next entry; `None` once caught up.
    pub async fn next(&mut self) -> Option<Result<pb::AuditEntry, BusError>> {
        if self.done {
            return None;
        }
        let (msg, _, pending) = match next_ordered(&mut self.messages).await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        self.done = pending == 0;
        Some(
            pb::AuditEntry::decode(msg.payload.clone())
                .map_err(|e| BusError::Nats(format!("undecodable audit entry: {e}"))),
        )
    }
}
