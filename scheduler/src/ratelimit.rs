//! Per-identity rate limiting: one token bucket per key (an identity's
//! name). Each bucket holds up to `burst` tokens and refills at `rate`
//! tokens a second; a call takes one token or is refused with the time
//! until the next token.
//!
//! [`Buckets`] is pure (the caller passes the time in), so it is tested
//! with an injected clock; [`RateLimiter`] is the shared handle the API
//! uses. Memory stays bounded: a bucket that has refilled completely is
//! the same as no bucket, so full buckets are forgotten by a periodic
//! sweep.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How often, at most, [`Buckets::check`] sweeps away full buckets.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The limit: `rate` calls a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens added per second.
    pub rate: f64,
    /// Bucket size: the most calls in a row.
    pub burst: u32,
}

impl Limit {
    /// The limit, or `None` (no limiting) when either number is 0.
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        (rate > 0.0 && burst > 0).then_some(Self { rate, burst })
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} calls/s, burst {}", self.rate, self.burst)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key; the time is always passed in.
#[derive(Debug)]
pub struct Buckets<K> {
    limit: Limit,
    buckets: HashMap<K, Bucket>,
    last_sweep: Option<Instant>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// No buckets yet (every key starts full).
    pub fn new(limit: Limit) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    /// The limit applied.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Tokens of a bucket last seen with `b`, at `now`.
    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.limit.rate).min(f64::from(self.limit.burst))
    }

    /// Takes one token of `key`'s bucket at `now`; `Err(wait)`: none is
    /// left, the next comes after `wait`.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        self.sweep(now);
        let tokens = match self.buckets.get(key) {
            Some(b) => self.refilled(b, now),
            None => f64::from(self.limit.burst),
        };
        if tokens >= 1.0 {
            self.buckets.insert(
                key.clone(),
                Bucket {
                    tokens: tokens - 1.0,
                    at: now,
                },
            );
            Ok(())
        } else {
            self.buckets.insert(key.clone(), Bucket { tokens, at: now });
            Err(Duration::from_secs_f64((1.0 - tokens) / self.limit.rate))
        }
    }

    /// Forgets the buckets that are full at `now` (at most once per
    /// [`SWEEP_EVERY`]).
    fn sweep(&mut self, now: Instant) {
        match self.last_sweep {
            None => self.last_sweep = Some(now),
            Some(last) if now.saturating_duration_since(last) >= SWEEP_EVERY => {
                let burst = f64::from(self.limit.burst);
                let mut buckets = std::mem::take(&mut self.buckets);
                buckets.retain(|_, b| self.refilled(b, now) < burst);
                self.buckets = buckets;
                self.last_sweep = Some(now);
            }
            Some(_) => {}
        }
    }

    /// How many buckets are kept.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The shared limiter of the API, keyed by identity name; clones share it.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    // std Mutex: held for a map lookup, never across an await.
    buckets: Arc<Mutex<Buckets<String>>>,
}

impl RateLimiter {
    /// A limiter applying `limit` to every identity.
    pub fn new(limit: Limit) -> Self {
        Self {
            buckets: Arc::new(Mutex::new(Buckets::new(limit))),
        }
    }

    /// The limit applied.
    pub fn limit(&self) -> Limit {
        self.buckets.lock().expect("rate limiter lock").limit()
    }

    /// Takes one call of `name`'s allowance now; `Err(wait)` when there is
    /// none left.
    pub fn check(&self, name: &str) -> Result<(), Duration> {
        self.buckets
            .lock()
            .expect("rate limiter lock")
            .check(&name.to_string(), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn zero_turns_it_off() {
        assert_eq!(Limit::new(0.0, 10), None);
        assert_eq!(Limit::new(5.0, 0), None);
        assert!(Limit::new(0.5, 1).is_some());
    }

    #[test]
    fn burst_then_refusal_with_the_time_to_the_next_token() {
        let mut b = Buckets::new(Limit::new(10.0, 3).unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.check(&"alice", t0), Ok(()));
        }
        // 10/s: the next token is 100 ms away.
        assert_eq!(b.check(&"alice", t0), Err(ms(100)));
        assert_eq!(b.check(&"alice", t0 + ms(40)), Err(ms(60)));
        assert_eq!(b.check(&"alice", t0 + ms(100)), Ok(()));
        assert!(b.check(&"alice", t0 + ms(100)).is_err());
    }

    #[test]
    fn identities_have_their_own_buckets() {
        let mut b = Buckets::new(Limit::new(1.0, 1).unwrap());
        let t0 = Instant::now();
        assert_eq!(b.check(&"alice", t0), Ok(()));
        assert!(b.check(&"alice", t0).is_err());
        assert_eq!(b.check(&"bob", t0), Ok(()));
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let mut b = Buckets::new(Limit::new(100.0, 2).unwrap());
        let t0 = Instant::now();
        assert_eq!(b.check(&"a", t0), Ok(()));
        // An hour idle refills two tokens, not 360,000.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.check(&"a", later), Ok(()));
        assert_eq!(b.check(&"a", later), Ok(()));
        assert!(b.check(&"a", later).is_err());
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let mut b = Buckets::new(Limit::new(1.0, 5).unwrap());
        let t0 = Instant::now();
        for i in 0..1000 {
            b.check(&i, t0).unwrap();
        }
        assert_eq!(b.len(), 1000);
        // After the sweep interval every bucket is full again: all gone,
        // except the one just used.
        b.check(&7, t0 + SWEEP_EVERY).unwrap();
        assert_eq!(b.len(), 1);
        // A bucket still refilling is kept (and keeps its debt).
        let mut b = Buckets::new(Limit::new(0.001, 2).unwrap());
        b.check(&"slow", t0).unwrap();
        b.check(&"slow", t0).unwrap();
        b.check(&"other", t0 + SWEEP_EVERY).unwrap();
        assert_eq!(b.len(), 2);
        assert!(b.check(&"slow", t0 + SWEEP_EVERY).is_err());
    }
}
