//! Rate cap for bytes served to neighbours.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A shared pacing limiter: `acquire(n)` waits until `n` more bytes fit
/// under `bytes_per_sec`, allowing a burst of `burst` bytes.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// Burst allowance in bytes.
    burst_bytes: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Current rate (changed by [`RateLimiter::set_rate`]).
    bytes_per_sec: f64,
    /// The instant at which the budget is exhausted (virtual clock).
    next_free: Option<Instant>,
    /// Bytes let through so far.
    total: u64,
}

impl RateLimiter {
    /// `None` when `bytes_per_sec` is 0 (unlimited).
    pub(crate) fn new(bytes_per_sec: u64, burst_bytes: u64) -> Option<Self> {
        if bytes_per_sec == 0 {
            return None;
        }
        Some(Self {
            burst_bytes: burst_bytes as f64,
            state: Mutex::new(State {
                bytes_per_sec: bytes_per_sec as f64,
                next_free: None,
                total: 0,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the rate from now on (at least 1 byte/s).
    pub(crate) fn set_rate(&self, bytes_per_sec: u64) {
        self.state().bytes_per_sec = bytes_per_sec.max(1) as f64;
    }

    /// The current rate, bytes/s.
    pub(crate) fn rate(&self) -> u64 {
        self.state().bytes_per_sec as u64
    }

    /// Bytes let through so far.
    pub(crate) fn total(&self) -> u64 {
        self.state().total
    }

    /// Waits until `n` bytes may be sent.
    pub(crate) async fn acquire(&self, n: usize) {
        let wait_until = {
            let mut st = self.state();
            let now = Instant::now();
            // Idle time earns no credit beyond the burst below.
            let start = st.next_free.map_or(now, |t| t.max(now));
            let end = start + Duration::from_secs_f64(n as f64 / st.bytes_per_sec);
            st.next_free = Some(end);
            st.total = st.total.saturating_add(n as u64);
            let burst = Duration::from_secs_f64(self.burst_bytes / st.bytes_per_sec);
            // Sending may start once `end` is within the burst of now.
            end.checked_sub(burst).unwrap_or(end)
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

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_to_later_bytes_and_totals_count() {
        let l = RateLimiter::new(1000, 100).unwrap();
        l.set_rate(4000);
        assert_eq!(l.rate(), 4000);
        let t0 = Instant::now();
        for _ in 0..20 {
            l.acquire(100).await;
        }
        // 2000 bytes at 4000 B/s with a 100-byte burst: 0.475 s.
        let elapsed = t0.elapsed();
        assert!(elapsed >= Duration::from_millis(470), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(480), "{elapsed:?}");
        assert_eq!(l.total(), 2000);
    }

    #[test]
    fn zero_is_unlimited() {
        assert!(RateLimiter::new(0, 1).is_none());
    }
}
