//! Rate cap for bytes served to neighbours.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A shared pacing limiter: `acquire(n)` waits until `n` more bytes fit
/// under `bytes_per_sec`, allowing a burst of `burst` bytes.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    bytes_per_sec: f64,
    burst: Duration,
    /// The instant at which the budget is exhausted (virtual clock).
    next_free: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `None` when `bytes_per_sec` is 0 (unlimited).
    pub(crate) fn new(bytes_per_sec: u64, burst_bytes: u64) -> Option<Self> {
        if bytes_per_sec == 0 {
            return None;
        }
        let bps = bytes_per_sec as f64;
        Some(Self {
            bytes_per_sec: bps,
            burst: Duration::from_secs_f64(burst_bytes as f64 / bps),
            next_free: Mutex::new(None),
        })
    }

    /// Waits until `n` bytes may be sent.
    pub(crate) async fn acquire(&self, n: usize) {
        let wait_until = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Idle time earns no credit beyond the burst below.
            let start = next.map_or(now, |t| t.max(now));
            let end = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *next = Some(end);
            // Sending may start once `end` is within the burst of now.
            end.checked_sub(self.burst).unwrap_or(end)
        };
        if wait_until > Instant::now() {
            tokio::time::sleep_until(wait_until).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_configured_rate() {
        let l = RateLimiter::new(1000, 100).unwrap();
        let t0 = Instant::now();
        for _ in 0..20 {
            l.acquire(100).await;
        }
        // 2000 bytes at 1000 B/s with a 100-byte burst: 1.9 s of virtual time.
        let elapsed = t0.elapsed();
        assert!(elapsed >= Duration::from_millis(1890), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(1910), "{elapsed:?}");
    }

    #[test]
    fn zero_is_unlimited() {
        assert!(RateLimiter::new(0, 1).is_none());
    }
}
