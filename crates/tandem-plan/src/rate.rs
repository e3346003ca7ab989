//! Rates (bytes per second) and the EWMA rate estimator.

use std::time::Duration;

/// A transfer rate in bytes per second.
///
/// Always finite and non-negative: constructors clamp NaN, infinities and
/// negative values to zero so that a garbage advertisement from a peer cannot
/// poison the planner's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Rate(f64);

impl Rate {
    /// Zero bytes per second.
    pub const ZERO: Rate = Rate(0.0);

    /// A rate in bytes per second.
    pub fn from_bytes_per_sec(bps: f64) -> Rate {
        if bps.is_finite() && bps > 0.0 {
            Rate(bps)
        } else {
            Rate(0.0)
        }
    }

    /// A rate in megabits per second (10^6 bit/s), the unit links are sold in.
    pub fn from_mbit(mbit: f64) -> Rate {
        Rate::from_bytes_per_sec(mbit * 1e6 / 8.0)
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> f64 {
        self.0
    }

    /// Megabits per second.
    pub fn mbit(self) -> f64 {
        self.0 * 8.0 / 1e6
    }

    /// The smaller of two rates.
    pub fn min(self, other: Rate) -> Rate {
        if other.0 < self.0 { other } else { self }
    }

    /// The larger of two rates.
    pub fn max(self, other: Rate) -> Rate {
        if other.0 > self.0 { other } else { self }
    }

    /// `self` capped by an optional link rate.
    pub fn capped_by(self, link: Option<Rate>) -> Rate {
        match link {
            Some(l) => self.min(l),
            None => self,
        }
    }

    /// Time to move `bytes` at this rate; `None` for a zero rate.
    pub fn time_for(self, bytes: u64) -> Option<Duration> {
        if self.0 <= 0.0 {
            return None;
        }
        Some(secs(bytes as f64 / self.0))
    }

    /// Bytes moved in `d` at this rate (rounded down).
    pub fn bytes_in(self, d: Duration) -> u64 {
        (self.0 * d.as_secs_f64()).floor() as u64
    }
}

impl std::ops::Add for Rate {
    type Output = Rate;
    fn add(self, rhs: Rate) -> Rate {
        Rate::from_bytes_per_sec(self.0 + rhs.0)
    }
}

impl std::iter::Sum for Rate {
    fn sum<I: Iterator<Item = Rate>>(iter: I) -> Rate {
        iter.fold(Rate::ZERO, |a, b| a + b)
    }
}

/// A saturating `Duration` from seconds (negative and NaN become zero, huge
/// values become ~a year) so arithmetic on estimates never panics.
pub(crate) fn secs(s: f64) -> Duration {
    if !s.is_finite() || s <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(s.min(31_536_000.0))
}

/// Exponentially weighted moving average of a source's delivery rate.
///
/// Samples are taken over busy intervals only: the first data report after
/// the source was idle opens a measurement interval (its bytes are not
/// counted, they arrived over an unknown interval); later reports add bytes,
/// and once the interval is at least `sample_interval` long a sample
/// `bytes / elapsed` is folded in with weight `1 - exp(-elapsed / tau)`.
/// Becoming idle discards the open interval.
#[derive(Debug, Clone)]
pub struct RateEstimator {
    estimate: Rate,
    tau: Duration,
    sample_interval: Duration,
    open: Option<(Duration, u64)>,
    samples: u64,
}

impl RateEstimator {
    /// An estimator seeded with `seed` (the configured or advertised rate).
    pub fn new(seed: Rate, tau: Duration, sample_interval: Duration) -> Self {
        RateEstimator {
            estimate: seed,
            tau: tau.max(Duration::from_millis(1)),
            sample_interval,
            open: None,
            samples: 0,
        }
    }

    /// The current estimate.
    pub fn estimate(&self) -> Rate {
        self.estimate
    }

    /// Number of samples folded in so far (0: still the seed).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// `bytes` arrived at `now`.
    pub fn on_bytes(&mut self, bytes: u64, now: Duration) {
        match self.open {
            None => self.open = Some((now, 0)),
            Some((start, acc)) => {
                let acc = acc.saturating_add(bytes);
                let elapsed = now.saturating_sub(start);
                if elapsed >= self.sample_interval && !elapsed.is_zero() {
                    let sample = acc as f64 / elapsed.as_secs_f64();
                    self.fold(sample, elapsed);
                    self.open = Some((now, 0));
                } else {
                    self.open = Some((start, acc));
                }
            }
        }
    }

    /// The source has nothing outstanding: close the interval without a sample.
    pub fn on_idle(&mut self) {
        self.open = None;
    }

    /// Multiply the estimate by `factor` (e.g. 0.5 after a stall).
    pub fn penalise(&mut self, factor: f64) {
        self.estimate = Rate::from_bytes_per_sec(self.estimate.0 * factor);
        self.open = None;
    }

    fn fold(&mut self, sample: f64, elapsed: Duration) {
        let w = 1.0 - (-elapsed.as_secs_f64() / self.tau.as_secs_f64()).exp();
        let e = self.estimate.0;
        self.estimate = Rate::from_bytes_per_sec(e + w * (sample - e));
        self.samples += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_units_and_garbage() {
        let r = Rate::from_mbit(8.0);
        assert_eq!(r.bytes_per_sec(), 1e6);
        assert!((r.mbit() - 8.0).abs() < 1e-9);
        assert_eq!(Rate::from_bytes_per_sec(f64::NAN), Rate::ZERO);
        assert_eq!(Rate::from_bytes_per_sec(-3.0), Rate::ZERO);
        assert_eq!(Rate::from_bytes_per_sec(f64::INFINITY), Rate::ZERO);
        assert_eq!(Rate::ZERO.time_for(10), None);
        assert_eq!(r.time_for(1_000_000), Some(Duration::from_secs(1)));
        assert_eq!(r.bytes_in(Duration::from_millis(500)), 500_000);
        assert_eq!(
            r.capped_by(Some(Rate::from_mbit(4.0))),
            Rate::from_mbit(4.0)
        );
    }

    #[test]
    fn ewma_converges_to_measured_rate() {
        let mut e = RateEstimator::new(
            Rate::from_bytes_per_sec(100.0),
            Duration::from_millis(500),
            Duration::from_millis(100),
        );
        // 1 MB/s: 10 kB every 10 ms for 5 s.
        for i in 0..=500u64 {
            e.on_bytes(10_000, Duration::from_millis(10 * i));
        }
        let est = e.estimate().bytes_per_sec();
        assert!((est - 1e6).abs() / 1e6 < 0.01, "{est}");
        assert!(e.samples() > 10);
    }

    #[test]
    fn idle_gap_is_not_a_sample() {
        let mut e = RateEstimator::new(
            Rate::from_bytes_per_sec(1e6),
            Duration::from_millis(500),
            Duration::from_millis(100),
        );
        e.on_bytes(10_000, Duration::from_millis(0));
        e.on_idle();
        // Long idle, then data again: the gap must not drag the estimate down.
        e.on_bytes(10_000, Duration::from_secs(10));
        for i in 1..=20u64 {
            e.on_bytes(
                10_000,
                Duration::from_secs(10) + Duration::from_millis(10 * i),
            );
        }
        let est = e.estimate().bytes_per_sec();
        assert!((est - 1e6).abs() / 1e6 < 0.01, "{est}");
    }
}
