//! A bound on the engine operations the agent runs at once.
//!
//! An engine sent a hundred removals at once can hang for good (Docker
//! 20.10 on fuse-overlayfs did: every later call timed out), so every
//! container command passes through one [`EngineLimit`]: at most `limit`
//! run, the others wait in arrival order (tokio's semaphore is FIFO-fair, so
//! none starves). It also keeps the highest number ever in flight, logged
//! each time it rises, so an operator (and a test) can see the bound hold.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::Semaphore;

/// The engine-operation bound; a cheap clone handle.
#[derive(Debug, Clone)]
pub struct EngineLimit(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    permits: Semaphore,
    limit: usize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one operation in flight while it lives.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EngineLimit {
    /// At most `limit` operations at once (at least one).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self(Arc::new(Shared {
            permits: Semaphore::new(limit),
            limit,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }))
    }

    /// Runs `op` once fewer than the limit are running, in arrival order.
    pub async fn run<T>(&self, op: impl Future<Output = T>) -> T {
        let _permit = self
            .0
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let now = self.0.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _counted = InFlight(&self.0);
        if self.0.peak.fetch_max(now, Ordering::SeqCst) < now {
            tracing::info!(
                peak = now,
                limit = self.0.limit,
                "engine operations in flight: new peak"
            );
        }
        op.await
    }

    /// The most operations ever in flight at once.
    pub fn peak(&self) -> usize {
        self.0.peak.load(Ordering::SeqCst)
    }

    /// Operations in flight now.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn never_more_than_the_limit_run_and_all_finish() {
        let limit = EngineLimit::new(3);
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    limit
                        .run(async {
                            assert!(limit.in_flight() <= 3);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(limit.peak(), 3);
        assert_eq!(limit.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiters_run_in_arrival_order() {
        let limit = EngineLimit::new(1);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let first = {
            let (limit, gate) = (limit.clone(), Arc::clone(&gate));
            tokio::spawn(async move { limit.run(gate.notified()).await })
        };
        while limit.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let mut waiting = Vec::new();
        for i in 0..5 {
            let (limit, order) = (limit.clone(), Arc::clone(&order));
            waiting.push(tokio::spawn(async move {
                limit.run(async { order.lock().unwrap().push(i) }).await
            }));
            // Each waiter is queued before the next one is spawned.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        gate.notify_one();
        first.await.unwrap();
        for w in waiting {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    }
}
