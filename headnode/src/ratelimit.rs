//! Rate limits: a token bucket per key (a token's hash, a client address),
//! refilled at `rate` per second up to `burst`. A refused call learns how
//! long to wait (`Retry-After`). Memory stays bounded: past `max_keys`
//! keys, the buckets that refilled completely (idle clients) are dropped.
//!
//! In memory, per headnode: several headnodes each allow the rate.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Limiter<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    /// `rate` calls per second, `burst` at once; `rate` 0 means no limit.
    pub fn new(rate: f64, burst: f64, max_keys: usize) -> Limiter<K> {
        Limiter {
            rate,
            burst: burst.max(1.0),
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        Bucket { tokens, at: now }
    }

    /// Takes one call from `key`'s bucket, or says how long until it may.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut map = self.buckets.lock().expect("rate limiter");
        if map.len() >= self.max_keys && !map.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = map.get(key).copied().unwrap_or(Bucket {
            tokens: self.burst,
            at: now,
        });
        let mut b = self.refilled(b, now);
        let result = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        };
        map.insert(key.clone(), b);
        result
    }

    /// Whether `key` has no call left now (without taking one).
    pub fn exhausted(&self, key: &K) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let map = self.buckets.lock().expect("rate limiter");
        let b = self.refilled(*map.get(key)?, now);
        (b.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
    }

    pub fn keys(&self) -> usize {
        self.buckets.lock().expect("rate limiter").len()
    }
}

/// Seconds for a `Retry-After` header (at least 1).
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_calls_wait_for_the_refill() {
        let l = Limiter::new(10.0, 3.0, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(&"a", t0).is_ok());
        }
        let wait = l.check_at(&"a", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another key is not affected.
        assert!(l.check_at(&"b", t0).is_ok());
        // After 100 ms, one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at(&"a", t1).is_ok());
        assert!(l.check_at(&"a", t1).is_err());
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }

    #[test]
    fn idle_keys_are_dropped_past_the_bound_and_rate_zero_is_unlimited() {
        let l = Limiter::new(1000.0, 2.0, 2);
        let t0 = Instant::now();
        l.check_at(&1, t0).unwrap();
        l.check_at(&2, t0).unwrap();
        // Key 1 and 2 refill within a few ms; a third key drops them.
        l.check_at(&3, t0 + Duration::from_millis(10)).unwrap();
        assert!(l.keys() <= 2);
        let free: Limiter<u8> = Limiter::new(0.0, 1.0, 1);
        for _ in 0..100 {
            assert!(free.check(&1).is_ok());
        }
        assert_eq!(free.exhausted(&1), None);
    }
}
