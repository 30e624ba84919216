//! Per-key async locks: operations on one key (a container's name or id)
//! run one at a time; different keys run in parallel. A key's entry is
//! dropped once nobody holds or waits for it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::OwnedMutexGuard;

/// A set of locks, one per key.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    // std lock: only guards the map, never held across an await.
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// A new, empty set.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Waits for `key`'s lock.
    pub async fn lock(self: &Arc<Self>, key: &str) -> KeyGuard {
        let m = {
            let mut map = self.map.lock().expect("lock map poisoned");
            Arc::clone(map.entry(key.to_string()).or_default())
        };
        let guard = m.lock_owned().await;
        KeyGuard {
            guard: Some(guard),
            key: key.to_string(),
            locks: Arc::clone(self),
        }
    }

    /// How many keys have an entry (held or awaited).
    pub fn len(&self) -> usize {
        self.map.lock().expect("lock map poisoned").len()
    }

    /// Whether no key has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Holds one key's lock until dropped.
#[derive(Debug)]
pub struct KeyGuard {
    guard: Option<OwnedMutexGuard<()>>,
    key: String,
    locks: Arc<KeyedLocks>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        // Release first, then forget the entry if nobody else holds a
        // reference to it (holders and waiters each hold one).
        drop(self.guard.take());
        let mut map = self.locks.map.lock().expect("lock map poisoned");
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_entries_are_forgotten() {
        let locks = KeyedLocks::new();
        let a = locks.lock("a").await;
        let _b = locks.lock("b").await; // another key does not wait
        assert_eq!(locks.len(), 2);
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { drop(locks.lock("a").await) })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
        drop(_b);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_no_entry() {
        let locks = KeyedLocks::new();
        let a = locks.lock("a").await;
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { drop(locks.lock("a").await) })
        };
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(a);
        assert!(locks.is_empty());
    }
}
