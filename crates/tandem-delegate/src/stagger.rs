//! When a worker sends its next request.
//!
//! A worker ([`crate::worker`]) fetches its pieces over one keep-alive
//! connection and pipelines the next piece's request behind the body that
//! is streaming. The request goes out when the streaming body is about one
//! request round trip from its end (its remaining bytes at the measured
//! rate): early enough that the next response follows without a gap, late
//! enough that a piece cancelled meanwhile (endgame, stall reassignment)
//! has not been requested yet — a pipelined request cannot be taken back
//! without closing the connection.
//!
//! The schedule keeps two slots, the streaming response and the request
//! behind it, which swap roles at every piece. (Before pipelining the two
//! slots were two connections taking turns; the same rule kept them from
//! streaming at once, which measured in the namespace lab idled the uplink
//! ~20 ms every ~0.45 s.)
//!
//! Sans-IO: the worker passes `now` and asks again at every chunk it
//! receives.

use std::time::Duration;

use tokio::time::Instant;

/// Time constant of the rate estimate.
const RATE_TAU: Duration = Duration::from_millis(100);
/// A lane without progress for this long no longer holds the others back
/// (a stalled or paced lane must not stall the source).
const STALE: Duration = Duration::from_millis(250);
/// A lane sends its request this many measured request round trips (request
/// to response head, queueing at the bottleneck included) before the
/// streaming lane's end. Measured in the lab (8 and 32 MiB, 4 + 2 runs
/// each): 1.0 -> 1.90-1.92 s / 7.18-7.19 s, 1.25 -> 1.91-2.13 / 7.19-7.23,
/// 2.5 -> 1.97-2.00 / 7.26-7.27 (a longer overlap only fills the
/// bottleneck's queue); in the benchmark suite (nginx origin, 3 runs each)
/// 1.25 did 7.16-7.19 s at 32 MiB and 1.0 7.20-7.23 s. Within the noise of
/// this machine; 1.25 is the setting measured best by both.
const LEAD_RTTS: f64 = 1.25;
/// Added to the lead.
const LEAD_MARGIN: Duration = Duration::from_millis(5);
/// The wait reported while a request is unanswered or the rate unknown.
const MAX_WAIT: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Lane {
    Idle,
    /// Request sent at `since`, no body byte yet; `sample`: its response
    /// head time is a round-trip sample (not when it waited behind another
    /// response).
    Requested {
        since: Instant,
        sample: bool,
    },
    /// Body streaming: `remaining` bytes to go, last byte at `progress`.
    Streaming {
        remaining: u64,
        progress: Instant,
    },
}

/// The lanes of one worker (see the module documentation).
#[derive(Debug)]
pub(crate) struct Stagger {
    lanes: Vec<Lane>,
    /// EWMA of request -> response head times.
    rtt: Option<Duration>,
    /// EWMA of the worker's body rate over all lanes, bytes/s.
    rate: Option<f64>,
    last_bytes: Option<Instant>,
}

impl Stagger {
    pub(crate) fn new(lanes: usize) -> Self {
        Self {
            lanes: vec![Lane::Idle; lanes],
            rtt: None,
            rate: None,
            last_bytes: None,
        }
    }

    /// How long before a streaming lane's end a request should go out.
    fn lead(&self) -> Duration {
        self.rtt.unwrap_or(Duration::ZERO).mul_f64(LEAD_RTTS) + LEAD_MARGIN
    }

    /// Time until lane `lane` may send its request: `None` if it may now.
    fn blocked_for(&self, lane: usize, now: Instant) -> Option<Duration> {
        let streaming = self
            .lanes
            .iter()
            .filter(|l| matches!(l, Lane::Streaming { .. }))
            .count()
            .max(1) as f64;
        let lead = self.lead();
        let mut longest: Option<Duration> = None;
        for (i, l) in self.lanes.iter().enumerate() {
            if i == lane {
                continue;
            }
            let wait = match *l {
                Lane::Idle => continue,
                Lane::Requested { since, .. } => {
                    if now.saturating_duration_since(since) >= STALE {
                        continue;
                    }
                    MAX_WAIT
                }
                Lane::Streaming {
                    remaining,
                    progress,
                } => {
                    if now.saturating_duration_since(progress) >= STALE {
                        continue;
                    }
                    let Some(rate) = self.rate.filter(|r| *r > 0.0) else {
                        return Some(MAX_WAIT);
                    };
                    let left = Duration::from_secs_f64(remaining as f64 * streaming / rate);
                    if left <= lead {
                        continue;
                    }
                    left - lead
                }
            };
            longest = Some(longest.map_or(wait, |w| w.max(wait)));
        }
        longest
    }

    /// Whether lane `lane` may send its request now.
    pub(crate) fn may_start(&self, lane: usize, now: Instant) -> bool {
        self.blocked_for(lane, now).is_none()
    }

    /// Lane `lane` sent its request.
    pub(crate) fn requested(&mut self, lane: usize, now: Instant) {
        if let Some(l) = self.lanes.get_mut(lane) {
            *l = Lane::Requested {
                since: now,
                sample: true,
            };
        }
    }

    /// Lane `lane` sent its request behind another lane's response on the
    /// same connection: its head waits for that body, so its timing is no
    /// round-trip sample (it would only grow the lead, which grows it).
    pub(crate) fn requested_behind(&mut self, lane: usize, now: Instant) {
        if let Some(l) = self.lanes.get_mut(lane) {
            *l = Lane::Requested {
                since: now,
                sample: false,
            };
        }
    }

    /// Lane `lane` got its response head; `len` body bytes will follow.
    pub(crate) fn streaming(&mut self, lane: usize, now: Instant, len: u64) {
        let Some(l) = self.lanes.get_mut(lane) else {
            return;
        };
        if let Lane::Requested {
            since,
            sample: true,
        } = *l
        {
            let sample = now.saturating_duration_since(since);
            self.rtt = Some(match self.rtt {
                None => sample,
                Some(r) => r.mul_f64(0.7) + sample.mul_f64(0.3),
            });
        }
        *l = Lane::Streaming {
            remaining: len,
            progress: now,
        };
    }

    /// Lane `lane` received `n` body bytes.
    pub(crate) fn progress(&mut self, lane: usize, now: Instant, n: u64) {
        if let Some(Lane::Streaming {
            remaining,
            progress,
        }) = self.lanes.get_mut(lane)
        {
            *remaining = remaining.saturating_sub(n);
            *progress = now;
        }
        if let Some(last) = self.last_bytes {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            if dt > 0.0 {
                let w = (dt / RATE_TAU.as_secs_f64()).min(1.0);
                let sample = n as f64 / dt;
                self.rate = Some(match self.rate {
                    None => sample,
                    Some(r) => r * (1.0 - w) + sample * w,
                });
            } else if let Some(r) = self.rate.as_mut() {
                // Same instant: fold the bytes into the next interval's
                // rate by the EWMA's continuous form (bytes / tau).
                *r += n as f64 / RATE_TAU.as_secs_f64();
            }
        }
        self.last_bytes = Some(now);
    }

    /// Lane `lane` finished its piece (or gave it up).
    pub(crate) fn idle(&mut self, lane: usize) {
        if let Some(l) = self.lanes.get_mut(lane) {
            *l = Lane::Idle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Streams `bytes` on `lane` in 10 ms steps at `rate` bytes/s.
    fn stream(s: &mut Stagger, lane: usize, t: &mut Instant, bytes: u64, rate: u64) {
        let step = rate / 100;
        let mut left = bytes;
        while left > 0 {
            let n = step.min(left);
            *t += ms(10);
            s.progress(lane, *t, n);
            left -= n;
        }
    }

    #[test]
    fn a_lone_lane_starts_at_once() {
        let s = Stagger::new(2);
        let t = Instant::now();
        assert!(s.may_start(0, t));
        assert!(s.may_start(1, t));
    }

    #[test]
    fn second_lane_waits_for_the_first_to_near_its_end() {
        let mut s = Stagger::new(2);
        let mut t = Instant::now();
        s.requested(0, t);
        // While the first request is out, the second waits.
        assert!(!s.may_start(1, t + ms(5)));
        t += ms(20);
        s.streaming(0, t, 1_000_000);
        // 1 MB at 2.5 MB/s: 0.4 s; the lead is 1.25 x 20 ms + 5 ms = 30 ms.
        stream(&mut s, 0, &mut t, 500_000, 2_500_000);
        assert!(!s.may_start(1, t));
        stream(&mut s, 0, &mut t, 400_000, 2_500_000);
        // 100 kB left: 40 ms at the rate: not yet.
        assert!(!s.may_start(1, t), "{s:?}");
        stream(&mut s, 0, &mut t, 50_000, 2_500_000);
        // 50 kB left: 20 ms, within the lead.
        assert!(s.may_start(1, t), "{s:?}");
    }

    #[test]
    fn a_request_behind_another_response_is_no_rtt_sample() {
        let mut s = Stagger::new(2);
        let mut t = Instant::now();
        s.requested(0, t);
        t += ms(20);
        s.streaming(0, t, 100_000);
        assert_eq!(s.rtt, Some(ms(20)));
        s.requested_behind(1, t);
        stream(&mut s, 0, &mut t, 100_000, 2_500_000);
        s.idle(0);
        s.streaming(1, t, 100_000);
        assert_eq!(s.rtt, Some(ms(20)), "the 40 ms wait is not a round trip");
    }

    #[test]
    fn a_stalled_lane_does_not_hold_the_others() {
        let mut s = Stagger::new(2);
        let mut t = Instant::now();
        s.requested(0, t);
        s.streaming(0, t + ms(20), 1_000_000);
        t += ms(20);
        stream(&mut s, 0, &mut t, 100_000, 2_500_000);
        assert!(!s.may_start(1, t));
        assert!(s.may_start(1, t + STALE));
        // An unanswered request also stops blocking after STALE.
        let mut s = Stagger::new(2);
        s.requested(0, t);
        assert!(!s.may_start(1, t + ms(100)));
        assert!(s.may_start(1, t + STALE));
    }

    #[test]
    fn an_idle_lane_frees_the_others() {
        let mut s = Stagger::new(3);
        let mut t = Instant::now();
        s.requested(0, t);
        t += ms(20);
        s.streaming(0, t, 1_000_000);
        stream(&mut s, 0, &mut t, 100_000, 2_500_000);
        assert!(!s.may_start(1, t));
        s.idle(0);
        assert!(s.may_start(1, t));
        assert!(s.may_start(2, t));
    }

    #[test]
    fn the_rate_estimate_follows_the_stream() {
        let mut s = Stagger::new(2);
        let mut t = Instant::now();
        s.requested(0, t);
        s.streaming(0, t, 10_000_000);
        stream(&mut s, 0, &mut t, 2_000_000, 2_000_000);
        let r = s.rate.unwrap_or(0.0);
        assert!((r - 2_000_000.0).abs() < 100_000.0, "{r}");
        // Several reads at the same instant do not divide by zero.
        s.progress(0, t, 16_384);
        s.progress(0, t, 16_384);
        assert!(s.rate.is_some_and(f64::is_finite));
    }
}
