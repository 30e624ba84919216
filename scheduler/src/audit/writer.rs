//! Where finished calls go: a bounded queue, and the writer task storing
//! its entries on the bus in order (and what is queued at shutdown).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use devctl_proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::FULL_WAIT;
use crate::bus::Bus;

/// Entries waiting for the writer.
const QUEUE: usize = 4096;
/// How long the writer may take at shutdown to store what is queued.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Where finished calls go: a bounded queue to the writer task.
#[derive(Debug, Clone)]
pub(crate) struct AuditSink {
    pub(super) tx: mpsc::Sender<pb::AuditEntry>,
    pub(super) dropped: Arc<AtomicU64>,
}

impl AuditSink {
    pub(super) fn dropped_one(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(dropped_total = n, "audit entry dropped: {why}");
    }

    /// Queues `entry` if there is room; gives it back if the queue is full.
    pub(super) fn try_record(&self, entry: pb::AuditEntry) -> Option<pb::AuditEntry> {
        match self.tx.try_send(entry) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(e)) => Some(e),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped_one("the writer has stopped");
                None
            }
        }
    }

    /// Queues `entry`, waiting up to [`FULL_WAIT`] for room.
    pub(super) async fn record(&self, entry: pb::AuditEntry) {
        if let Some(entry) = self.try_record(entry)
            && self.tx.send_timeout(entry, FULL_WAIT).await.is_err()
        {
            self.dropped_one("the queue stayed full");
        }
    }

    /// Queues `entry` without waiting (where no waiting is possible).
    pub(super) fn record_now(&self, entry: pb::AuditEntry) {
        if self.try_record(entry).is_some() {
            self.dropped_one("the queue is full");
        }
    }

    /// Entries dropped so far (the log says it as they go; the tests
    /// read it).
    #[cfg(test)]
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The task storing queued entries on the bus. Dropped without
/// [`AuditWriter::finish`], it still stores what is queued, then ends.
#[derive(Debug)]
pub(crate) struct AuditWriter {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl AuditWriter {
    /// Starts the writer; entries queued on the sink are published on
    /// `bus`, in order.
    pub(crate) fn spawn(bus: Bus) -> (AuditSink, AuditWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = AuditSink {
            tx,
            dropped: Arc::default(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_loop(bus, rx, stop.clone(), sink.dropped.clone()));
        (
            sink,
            AuditWriter {
                task: Some(task),
                stop,
            },
        )
    }

    /// Stores what is queued (up to a time limit), then ends. Call it once
    /// no call is in flight any more.
    pub(crate) async fn finish(mut self) {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(DRAIN_LIMIT, task).await.is_err() {
            tracing::warn!("audit entries still queued at shutdown were abandoned");
        }
    }
}

async fn write_loop(
    bus: Bus,
    mut rx: mpsc::Receiver<pb::AuditEntry>,
    stop: CancellationToken,
    dropped: Arc<AtomicU64>,
) {
    let store = |entry: pb::AuditEntry| {
        let (bus, dropped) = (bus.clone(), dropped.clone());
        async move {
            for attempt in 1..=3 {
                match bus.publish_audit(&entry).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "audit entry not stored yet");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                }
            }
            let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dropped_total = n, method = %entry.method, identity = %entry.identity,
                "audit entry dropped: the bus did not store it");
        }
    };
    let mut last_check: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            entry = rx.recv() => match entry {
                Some(e) => {
                    store(e).await;
                    if last_check.is_none_or(|t| t.elapsed() >= USAGE_CHECK_EVERY) {
                        last_check = Some(tokio::time::Instant::now());
                        warn_if_full(&bus).await;
                    }
                }
                None => break,
            },
            _ = stop.cancelled() => {
                rx.close();
                while let Some(e) = rx.recv().await {
                    store(e).await;
                }
                break;
            }
        }
    }
}

/// How often, at most, the writer looks at the audit log's size.
const USAGE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Warns when the audit log is at its size cap: JetStream then drops the
/// oldest entries to store new ones (silently, so this says it).
async fn warn_if_full(bus: &Bus) {
    match bus.audit_usage().await {
        Ok((bytes, Some(cap))) if bytes.saturating_mul(10) >= cap.saturating_mul(9) => {
            tracing::warn!(
                bytes,
                cap,
                "the audit log is at its size cap (--audit-max-size): the oldest entries are being dropped"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "audit log size unknown"),
    }
}
