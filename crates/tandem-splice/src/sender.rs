//! The injected-stream sender: a small TCP sender that continues the
//! origin's byte stream from the cut point towards the client.
//!
//! It works in *body offsets* (u64, 0 = first body byte); the flow maps
//! them to sequence numbers. It implements: segments of at most one MSS,
//! the client's (scaled) receive window, a Reno congestion window,
//! RTO with exponential backoff (RFC 6298), fast retransmit on three
//! duplicate ACKs with NewReno partial-ACK handling (RFC 6582), SACK-based
//! hole retransmission when SACK was negotiated (a simplified RFC 6675),
//! a zero-window probe (persist timer), and FIN on the last byte.
//!
//! # Spurious retransmission timeouts
//!
//! A timeout is *spurious* when nothing was lost and the ACKs were only
//! late (a router queue that stalls the client's ACKs longer than the RTO).
//! Conventional recovery then resends the whole flight (go-back-N) and
//! slows to one segment per RTT although the client holds every byte. The
//! sender detects such timeouts and undoes them:
//!
//! - with TCP timestamps, Eifel detection (RFC 3522): the TSval of the
//!   first retransmission after the timeout is remembered; if the first ACK
//!   that advances `una` echoes an older TSval, it was sent for the original
//!   transmission: the timeout was spurious. The engine writes every TSval
//!   itself, so the comparison is exact;
//! - without timestamps, F-RTO (RFC 5682, basic algorithm): after the
//!   first ACK that covers the retransmission, up to two *new* segments go
//!   out instead of more retransmissions; if the next ACK also advances
//!   `una` (it acknowledges data that was not retransmitted), the timeout
//!   was spurious. A duplicate ACK at either step means loss: conventional
//!   recovery continues.
//!
//! The response is Eifel's (RFC 4015): transmission resumes at the
//! pre-timeout `nxt` (new data, no go-back-N), the SACK scoreboard of
//! before the timeout is restored, `cwnd = FlightSize + min(acked, IW)` and
//! `ssthresh` = max(FlightSize, ssthresh) of before the timeout, and the
//! RTT estimator is re-seeded with the delay just observed (`srtt =
//! max(srtt_prev, sample)`, `rttvar = max(rttvar_prev, sample / 2)`), so the
//! same delay does not time out again. When detection cannot decide (no
//! timestamp on the ACK, no new data to send for F-RTO, a repeated timeout
//! in F-RTO step 3) the sender keeps the conventional behaviour: it never
//! waits for a verdict before retransmitting, and it only ever sends body
//! bytes it holds.

use std::time::{Duration, Instant};

use crate::buffer::{InsertError, PieceBuffer};

/// Timing and sizing knobs (copied from [`crate::EngineConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SenderConfig {
    pub mss: usize,
    pub buffer_window: u64,
    pub initial_rto: Duration,
    pub min_rto: Duration,
    pub max_rto: Duration,
    pub max_retransmits: u32,
    pub initial_cwnd_segments: u32,
}

/// A segment the sender wants to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Body offset of the first payload byte (or of the FIN).
    pub offset: u64,
    /// Payload length.
    pub len: usize,
    /// FIN after the payload.
    pub fin: bool,
    /// Whether this repeats bytes sent before.
    pub retransmission: bool,
}

/// The fields of a client ACK the sender uses (offsets are body offsets).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack<'a> {
    /// Cumulative ACK (`body_len + 1` covers the FIN).
    pub ack: u64,
    /// The client's receive window in bytes (scaled).
    pub window: u64,
    /// SACK blocks.
    pub sacks: &'a [(u64, u64)],
    /// The segment carried nothing but the ACK (no data, SYN or FIN): only
    /// then can it be a duplicate ACK.
    pub pure: bool,
    /// End of the body bytes the origin sent itself (the client may
    /// acknowledge them before the cut is done).
    pub delivered_elsewhere: u64,
    /// With timestamps: the ACK's TSecr and the TSval the engine would
    /// send now (the sender's clock, in ms ticks).
    pub ts: Option<(u32, u32)>,
}

/// What an ACK did to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AckOutcome {
    /// The ACK acknowledged data the sender never sent (ignored).
    pub invalid: bool,
    /// The FIN is now acknowledged.
    pub fin_acked: bool,
    /// The ACK showed the last retransmission timeout to be spurious; the
    /// sender undid it.
    pub spurious_timeout: bool,
}

/// Per-flow counters of the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SenderCounters {
    /// Segments sent again (any reason).
    pub retransmitted: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Timeouts detected as spurious and undone.
    pub spurious_timeouts: u64,
}

impl SenderCounters {
    /// Adds `other`'s counts to these.
    pub(crate) fn add(&mut self, other: SenderCounters) {
        self.retransmitted += other.retransmitted;
        self.timeouts += other.timeouts;
        self.spurious_timeouts += other.spurious_timeouts;
    }
}

/// Clock granularity assumed for the RTO (RFC 6298 `G`).
const CLOCK_G: Duration = Duration::from_millis(1);

/// How the current timeout episode is being judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detection {
    /// Eifel (RFC 3522): the TSval of the first retransmission, once sent.
    Eifel { retransmit_ts: Option<u32> },
    /// F-RTO (RFC 5682) step 2: waiting for the first ACK after the
    /// retransmission.
    FrtoFirstAck,
    /// F-RTO step 3: up to two new segments went out; waiting for the
    /// next ACK.
    FrtoSecondAck,
    /// Undecidable: conventional recovery (go-back-N) runs its course.
    Conventional,
}

/// Sender state saved at the first timeout of an episode, to undo the
/// timeout if it turns out spurious (RFC 4015).
#[derive(Debug, Clone)]
struct RtoEpisode {
    detection: Detection,
    /// `nxt` before the timeout (where new data resumes).
    nxt: u64,
    /// Whether the FIN was in flight before the timeout.
    fin_sent: bool,
    /// `max_sent` at the timeout (F-RTO's `recover`).
    max_sent: u64,
    /// Whether anything was retransmitted since the timeout.
    retransmitted: bool,
    /// End of the data retransmitted since the timeout.
    rtx_end: u64,
    /// max(FlightSize, ssthresh) before the timeout.
    pipe_prev: u64,
    /// `srtt + 2G` before the timeout.
    srtt_prev: Option<Duration>,
    rttvar_prev: Duration,
    /// The SACK scoreboard before the timeout cleared it.
    sacked: RangeSet,
    /// When the timer that fired was armed.
    armed_at: Instant,
}

/// `a` is before `b` in TSval serial-number order.
fn ts_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Sorted, disjoint `[start, end)` ranges (the SACK scoreboard).
#[derive(Debug, Default, Clone)]
pub(crate) struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    pub(crate) fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.0 {
            if b < s {
                out.push((a, b));
            } else if a > e {
                if !placed {
                    out.push((s, e));
                    placed = true;
                }
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        if !placed {
            out.push((s, e));
        }
        // Bound the scoreboard: keep the lowest ranges (the ones that
        // matter for the next retransmissions).
        out.truncate(64);
        self.0 = out;
    }
    /// Drops everything below `at`.
    pub(crate) fn trim_below(&mut self, at: u64) {
        self.0.retain_mut(|r| {
            if r.1 <= at {
                false
            } else {
                r.0 = r.0.max(at);
                true
            }
        });
    }
    /// The range containing `at`, if any.
    pub(crate) fn containing(&self, at: u64) -> Option<(u64, u64)> {
        self.0.iter().copied().find(|&(a, b)| a <= at && at < b)
    }
    /// Start of the first range beginning after `at`.
    pub(crate) fn next_start_after(&self, at: u64) -> Option<u64> {
        self.0.iter().map(|r| r.0).find(|&a| a > at)
    }
    /// The ranges, in order.
    pub(crate) fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }
    /// End of the highest range.
    pub(crate) fn highest_end(&self) -> Option<u64> {
        self.0.last().map(|r| r.1)
    }
    /// Total bytes covered.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|r| r.1 - r.0).sum()
    }
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// The sender state of one accelerated flow.
#[derive(Debug)]
pub(crate) struct Sender {
    cfg: SenderConfig,
    body_len: u64,
    /// Oldest unacknowledged body offset (the delivery cursor).
    una: u64,
    /// Next new offset to send.
    nxt: u64,
    /// Highest offset ever sent (excluding FIN).
    max_sent: u64,
    fin_sent: bool,
    /// The FIN went out at least once (an RTO clears `fin_sent` to resend
    /// it, but the client may still acknowledge the first one).
    fin_ever_sent: bool,
    fin_acked: bool,
    buf: PieceBuffer,
    /// Right edge of the client's receive window (body offset).
    wnd_edge: u64,
    cwnd: u64,
    ssthresh: u64,
    dupacks: u32,
    /// In loss recovery until `una` reaches this point.
    recover: Option<u64>,
    /// `max_sent` at the last retransmission timeout (RFC 6582 `recover`
    /// after a timeout): duplicate ACKs for data sent before it neither
    /// start a fast retransmit nor release limited transmit; the
    /// go-back-N covers it.
    rto_recover: Option<u64>,
    sack_enabled: bool,
    /// Timestamps are in use (Eifel detection; F-RTO otherwise).
    timestamps: bool,
    sacked: RangeSet,
    /// Next offset to consider for hole retransmission in recovery.
    rtx_next: u64,
    /// Retransmissions allowed right now (fast retransmit / SACK holes).
    rtx_budget: u32,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Current (possibly backed-off) retransmission timeout.
    rto: Duration,
    /// RTO from the RTT estimate, without backoff.
    base_rto: Duration,
    retries: u32,
    rto_deadline: Option<Instant>,
    /// When `rto_deadline` was last set.
    rto_armed_at: Option<Instant>,
    /// The timeout episode being judged (spurious or not).
    episode: Option<RtoEpisode>,
    /// F-RTO step 2b: new data may go out up to here whatever `cwnd` says.
    frto_limit: Option<u64>,
    /// The first TSval sent (TSecr values before it are not ours).
    first_tsval: Option<u32>,
    counters: SenderCounters,
    /// (end offset, send time) of the segment being timed (Karn).
    rtt_probe: Option<(u64, Instant)>,
    persist_deadline: Option<Instant>,
    persist_backoff: u32,
    /// Set when a persist probe is due.
    probe_due: bool,
    /// End of the last zero-window probe byte (the client may ACK it).
    probe_end: Option<u64>,
    failed: bool,
}

impl Sender {
    pub(crate) fn new(
        cfg: SenderConfig,
        cut: u64,
        body_len: u64,
        wnd_edge: u64,
        sack: bool,
        timestamps: bool,
    ) -> Self {
        let mss = cfg.mss.max(1) as u64;
        Sender {
            cfg,
            body_len,
            una: cut,
            nxt: cut,
            max_sent: cut,
            fin_sent: false,
            fin_ever_sent: false,
            fin_acked: false,
            buf: PieceBuffer::new(cut, cfg.buffer_window),
            wnd_edge,
            cwnd: mss * u64::from(cfg.initial_cwnd_segments.max(1)),
            ssthresh: u64::MAX,
            dupacks: 0,
            recover: None,
            rto_recover: None,
            sack_enabled: sack,
            timestamps,
            sacked: RangeSet::default(),
            rtx_next: cut,
            rtx_budget: 0,
            srtt: None,
            rttvar: Duration::ZERO,
            rto: cfg.initial_rto,
            base_rto: cfg.initial_rto,
            retries: 0,
            rto_deadline: None,
            rto_armed_at: None,
            episode: None,
            frto_limit: None,
            first_tsval: None,
            counters: SenderCounters::default(),
            rtt_probe: None,
            persist_deadline: None,
            persist_backoff: 0,
            probe_due: false,
            probe_end: None,
            failed: false,
        }
    }

    fn mss(&self) -> u64 {
        self.cfg.mss.max(1) as u64
    }

    /// Oldest unacknowledged body offset.
    pub(crate) fn una(&self) -> u64 {
        self.una
    }
    /// Next offset to send (what the client's ACK numbers are relative to).
    pub(crate) fn nxt(&self) -> u64 {
        self.nxt
    }
    /// Highest offset sent.
    pub(crate) fn max_sent(&self) -> u64 {
        self.max_sent
    }
    /// Whether the FIN went out at least once.
    pub(crate) fn fin_sent_ever(&self) -> bool {
        self.fin_ever_sent
    }
    /// Whether the client acknowledged the FIN (and hence every byte).
    pub(crate) fn fin_acked(&self) -> bool {
        self.fin_acked
    }
    /// The sender's counters.
    pub(crate) fn counters(&self) -> SenderCounters {
        self.counters
    }
    /// The current retransmission timeout (with backoff).
    pub(crate) fn rto(&self) -> Duration {
        self.rto
    }
    /// Bytes held in the piece buffer.
    pub(crate) fn buffered(&self) -> u64 {
        self.buf.stored()
    }
    /// End of the bytes held contiguously from `una` (at least `una`).
    pub(crate) fn available(&self) -> u64 {
        self.buf.contiguous_end().min(self.body_len).max(self.una)
    }
    /// Room for more pieces past the contiguous end.
    pub(crate) fn room(&self) -> u64 {
        if self.failed {
            0
        } else {
            self.buf
                .room()
                .min(self.body_len - self.buf.contiguous_end().min(self.body_len))
        }
    }
    /// Highest sequence-space offset the client may legitimately
    /// acknowledge (`body_len + 1` once the FIN was sent).
    pub(crate) fn ack_limit(&self) -> u64 {
        if self.fin_sent_ever() {
            self.body_len + 1
        } else {
            self.max_sent.max(self.nxt).max(self.probe_end.unwrap_or(0))
        }
    }

    /// Stores a piece; see [`PieceBuffer::insert`].
    pub(crate) fn push_piece(&mut self, offset: u64, data: &[u8]) -> Result<(), InsertError> {
        self.buf.insert(offset, data)
    }

    /// Stops everything (the flow failed).
    pub(crate) fn fail(&mut self) {
        self.failed = true;
        self.buf.clear();
        self.rto_deadline = None;
        self.persist_deadline = None;
    }

    /// No timeout's go-back-N is covering the flight (RFC 6582: after a
    /// timeout, fast retransmit only once `una` is past `max_sent` of then).
    fn after_rto_recovery(&self) -> bool {
        self.rto_recover.is_none_or(|r| self.una > r)
    }

    fn in_flight(&self) -> bool {
        self.nxt > self.una || (self.fin_sent && !self.fin_acked)
    }

    /// Processes the ACK fields of a client segment (see [`Ack`]).
    pub(crate) fn on_ack(&mut self, now: Instant, a: &Ack<'_>) -> AckOutcome {
        let Ack {
            ack,
            window,
            sacks,
            pure: pure_ack,
            delivered_elsewhere,
            ..
        } = *a;
        let mut out = AckOutcome::default();
        // What the ACK was, for the timeout episode: bytes newly acked, or
        // a duplicate.
        let mut newly_acked = None;
        let mut duplicate = false;
        if self.failed {
            return out;
        }
        // `delivered_elsewhere`: body bytes the origin itself sent (before
        // the cut is done the client may acknowledge them, past the cut).
        if ack > self.ack_limit().max(delivered_elsewhere.min(self.body_len)) {
            out.invalid = true;
            return out;
        }
        let old_edge = self.wnd_edge;
        let new_edge = ack.saturating_add(window);
        for &(s, e) in sacks {
            let s = s.max(self.una);
            let e = e.min(self.max_sent);
            if s < e {
                self.sacked.insert(s, e);
            }
        }
        if ack > self.una {
            let acked = ack.min(self.body_len) - self.una.min(self.body_len);
            newly_acked = Some(acked);
            let data_ack = ack.min(self.body_len);
            self.una = data_ack;
            if ack > self.body_len {
                if !self.fin_acked {
                    out.fin_acked = true;
                }
                self.fin_acked = true;
            }
            if self.nxt < self.una {
                self.nxt = self.una;
            }
            if self.max_sent < self.una {
                self.max_sent = self.una;
            }
            self.buf.release(self.una);
            self.sacked.trim_below(self.una);
            if self.rtx_next < self.una {
                self.rtx_next = self.una;
            }
            // RTT sample (Karn: the probe is cleared on retransmission).
            if let Some((end, sent)) = self.rtt_probe {
                if ack >= end {
                    self.rtt_sample(now.saturating_duration_since(sent));
                    self.rtt_probe = None;
                }
            }
            // An ACK of new data ends the backoff (as BSD does): without
            // it, a lossy flow whose samples are all ambiguous (Karn) would
            // stay at the backed-off RTO for good.
            self.retries = 0;
            self.rto = self.base_rto;
            self.dupacks = 0;
            match self.recover {
                Some(rec) if ack < rec => {
                    // Partial ACK (NewReno): retransmit the next hole now.
                    self.rtx_next = self.una;
                    self.rtx_budget = self.rtx_budget.max(1);
                    self.cwnd = self.cwnd.saturating_sub(acked).max(self.mss()) + self.mss();
                }
                Some(_) => {
                    self.recover = None;
                    self.rtx_budget = 0;
                    self.cwnd = self.ssthresh.max(self.mss());
                }
                None => {
                    if self.cwnd < self.ssthresh {
                        self.cwnd += acked.min(self.mss());
                    } else {
                        self.cwnd += (self.mss() * self.mss() / self.cwnd.max(1)).max(1);
                    }
                }
            }
            self.restart_rto(now);
        } else if ack == self.una && pure_ack && self.in_flight() && new_edge == old_edge {
            duplicate = true;
            self.dupacks += 1;
            let sacked_enough = self.sack_enabled && self.sacked.total() >= 3 * self.mss();
            match self.recover {
                None if self.after_rto_recovery()
                    && (self.dupacks >= 3 || (sacked_enough && self.dupacks >= 1)) =>
                {
                    let flight = self.max_sent - self.una;
                    self.ssthresh = (flight / 2).max(2 * self.mss());
                    self.cwnd = self.ssthresh + 3 * self.mss();
                    self.recover = Some(self.max_sent.max(self.una + 1));
                    self.rtx_next = self.una;
                    self.rtx_budget = 1;
                    self.rtt_probe = None;
                }
                Some(_) => {
                    self.cwnd += self.mss();
                    if self.sack_enabled {
                        self.rtx_budget = self.rtx_budget.saturating_add(1).min(4);
                    }
                }
                None => {}
            }
        }
        if ack >= self.una {
            self.wnd_edge = new_edge.max(self.una);
        } else {
            // An older ACK (before the cut, while the origin still streams
            // the head of the body) can only widen the window.
            self.wnd_edge = self.wnd_edge.max(new_edge);
        }
        if self.wnd_edge > self.nxt {
            self.persist_deadline = None;
            self.persist_backoff = 0;
            self.probe_due = false;
        }
        if let Some(acked) = newly_acked {
            out.spurious_timeout = self.judge_new_ack(now, a, acked);
        } else if duplicate {
            self.judge_duplicate();
        }
        // Whatever moved `nxt` (F-RTO step 2b puts the not-retransmitted
        // flight back in flight): data in flight always has a timer.
        if self.in_flight() && self.rto_deadline.is_none() {
            self.restart_rto(now);
        }
        out
    }

    /// The timeout episode after an ACK that advanced `una` by `acked`
    /// bytes (RFC 3522 / RFC 5682). Returns whether the timeout was found
    /// spurious (and undone).
    fn judge_new_ack(&mut self, now: Instant, a: &Ack<'_>, acked: u64) -> bool {
        // F-RTO needs a new segment to go out now: a full one, or the rest
        // of the data held (the silly-window rule holds back a runt).
        let new_end = self.available().min(self.wnd_edge);
        let new_data = new_end > self.max_sent
            && (new_end - self.max_sent >= self.mss() || self.available() <= self.wnd_edge);
        let Some(ep) = self.episode.as_mut() else {
            return false;
        };
        let spurious = match ep.detection {
            // Nothing was resent yet: the ACK is for the original.
            _ if !ep.retransmitted && ep.detection != Detection::Conventional => true,
            Detection::Eifel { retransmit_ts } => match (retransmit_ts, a.ts) {
                (Some(r), Some((tsecr, _))) => ts_before(tsecr, r),
                _ => false,
            },
            Detection::FrtoFirstAck => {
                // Step 2a: an ACK that covers everything, or not all that
                // was retransmitted, decides nothing: conventional recovery.
                // Step 2b: else send up to two new segments, if there are
                // any to send.
                if a.ack < ep.max_sent && a.ack >= ep.rtx_end && new_data {
                    ep.detection = Detection::FrtoSecondAck;
                    self.nxt = self.nxt.max(self.max_sent);
                    self.frto_limit = Some(self.max_sent + 2 * self.mss());
                    return false;
                }
                false
            }
            // Step 3b: the ACK acknowledges data that was not retransmitted.
            Detection::FrtoSecondAck => true,
            Detection::Conventional => false,
        };
        if spurious {
            self.undo_timeout(now, a, acked);
        } else {
            self.episode = None;
            self.frto_limit = None;
        }
        spurious
    }

    /// A duplicate ACK during F-RTO means loss (RFC 5682 steps 2a, 3a):
    /// conventional recovery, from `una`, with at most three segments of
    /// `cwnd` after step 2b.
    fn judge_duplicate(&mut self) {
        let Some(ep) = self.episode.as_ref() else {
            return;
        };
        match ep.detection {
            Detection::FrtoFirstAck => {}
            Detection::FrtoSecondAck => {
                self.nxt = self.una;
                if !self.fin_acked {
                    self.fin_sent = false;
                }
                self.cwnd = self.cwnd.min(3 * self.mss());
            }
            Detection::Eifel { .. } | Detection::Conventional => return,
        }
        self.episode = None;
        self.frto_limit = None;
    }

    /// The Eifel response (RFC 4015) to a spurious timeout.
    fn undo_timeout(&mut self, now: Instant, a: &Ack<'_>, acked: u64) {
        let Some(ep) = self.episode.take() else {
            return;
        };
        self.frto_limit = None;
        self.counters.spurious_timeouts += 1;
        // Resume with new data where the sender was before the timeout.
        if ep.nxt > self.nxt {
            self.nxt = ep.nxt;
            if ep.fin_sent {
                self.fin_sent = true;
            }
        }
        // The client held these before the timeout; it still does (it
        // could renege, then the next timeout resends them).
        for &(s, e) in ep.sacked.ranges() {
            let s = s.max(self.una);
            if s < e {
                self.sacked.insert(s, e);
            }
        }
        // Congestion state: the flight was fine; no burst either.
        let mss = self.mss();
        let iw = mss * u64::from(self.cfg.initial_cwnd_segments.max(1));
        let flight = self.max_sent.saturating_sub(self.una);
        self.cwnd = (flight + acked.min(iw)).max(mss);
        self.ssthresh = ep.pipe_prev.max(2 * mss);
        self.recover = None;
        self.rto_recover = None;
        self.rtx_budget = 0;
        self.dupacks = 0;
        // The RTT estimator takes the delay that fooled the timer: with
        // timestamps the ACK's own RTT (our TSval clock minus its TSecr,
        // when it echoes one of ours); otherwise the time since the timer
        // was armed (at most the delay of the oldest segment's ACK).
        let ts_sample = a.ts.and_then(|(tsecr, ts_now)| {
            let first = self.first_tsval?;
            if ts_before(tsecr, first) {
                return None;
            }
            let ms = ts_now.wrapping_sub(tsecr);
            (ms as i32 >= 0).then(|| Duration::from_millis(u64::from(ms)))
        });
        let sample = ts_sample
            .unwrap_or_else(|| now.saturating_duration_since(ep.armed_at))
            .min(self.cfg.max_rto);
        let srtt = ep.srtt_prev.map_or(sample, |p| p.max(sample));
        let rttvar = ep.rttvar_prev.max(sample / 2);
        self.srtt = Some(srtt);
        self.rttvar = rttvar;
        self.base_rto =
            (srtt + (rttvar * 4).max(CLOCK_G)).clamp(self.cfg.min_rto, self.cfg.max_rto);
        self.rto = self.base_rto;
        self.retries = 0;
        self.rtt_probe = None;
        self.restart_rto(now);
    }

    /// (Re)starts the retransmission timer from `now` if anything is in
    /// flight, stops it otherwise.
    fn restart_rto(&mut self, now: Instant) {
        if self.in_flight() {
            self.rto_deadline = Some(now + self.rto);
            self.rto_armed_at = Some(now);
        } else {
            self.rto_deadline = None;
        }
    }

    fn rtt_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.base_rto = (srtt + (self.rttvar * 4).max(Duration::from_millis(1)))
            .clamp(self.cfg.min_rto, self.cfg.max_rto);
        self.rto = self.base_rto;
    }

    /// The next timer deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match (self.rto_deadline, self.persist_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires due timers. Returns `Err(())` when the retransmission limit is
    /// reached and the flow must fail.
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Result<(), ()> {
        if self.failed {
            return Ok(());
        }
        if let Some(d) = self.rto_deadline {
            if now >= d {
                if self.retries >= self.cfg.max_retransmits {
                    return Err(());
                }
                self.retries += 1;
                self.counters.timeouts += 1;
                self.begin_episode(now);
                self.rto = (self.rto * 2).min(self.cfg.max_rto);
                let flight = self.max_sent.saturating_sub(self.una);
                self.ssthresh = (flight / 2).max(2 * self.mss());
                self.cwnd = self.mss();
                // Go back N from the oldest unacknowledged byte. The SACK
                // scoreboard is dropped (a receiver may renege, RFC 2018).
                self.nxt = self.una;
                if !self.fin_acked {
                    self.fin_sent = false;
                }
                self.sacked.clear();
                self.recover = None;
                self.rto_recover = Some(self.max_sent);
                self.rtx_budget = 0;
                self.dupacks = 0;
                self.rtt_probe = None;
                self.rto_deadline = None;
            }
        }
        if let Some(d) = self.persist_deadline {
            if now >= d {
                self.probe_due = true;
                self.persist_deadline = None;
            }
        }
        Ok(())
    }

    /// A retransmission timeout fired: save what undoing it needs, or, on a
    /// repeated timeout, decide whether detection can still work.
    fn begin_episode(&mut self, now: Instant) {
        self.frto_limit = None;
        if let Some(ep) = self.episode.as_mut() {
            // Eifel still judges by the first retransmission; F-RTO step 2
            // has only resent the first segment again. After step 2b the
            // RFC 5682 sender gives up on detection.
            if ep.detection == Detection::FrtoSecondAck {
                ep.detection = Detection::Conventional;
            }
            return;
        }
        let flight = self.max_sent.saturating_sub(self.una);
        let detection = if self.timestamps {
            Detection::Eifel {
                retransmit_ts: None,
            }
        } else if self.nxt >= self.max_sent {
            Detection::FrtoFirstAck
        } else {
            // A go-back-N is already under way (RFC 5682: no F-RTO while
            // in RTO recovery).
            Detection::Conventional
        };
        self.episode = Some(RtoEpisode {
            detection,
            nxt: self.nxt,
            fin_sent: self.fin_sent,
            max_sent: self.max_sent,
            retransmitted: false,
            rtx_end: self.una,
            pipe_prev: flight.max(self.ssthresh.min(u64::MAX / 2)),
            srtt_prev: self.srtt.map(|s| s + 2 * CLOCK_G),
            rttvar_prev: self.rttvar,
            sacked: self.sacked.clone(),
            armed_at: self.rto_armed_at.unwrap_or(now),
        });
    }

    /// The next segment to send, if any; `now` arms timers, `tsval` is the
    /// TSval the segment will carry (timestamps in use). The caller reads
    /// the payload with [`Sender::read`] and must emit the segment.
    pub(crate) fn next_segment(&mut self, now: Instant, tsval: Option<u32>) -> Option<Segment> {
        let seg = self.next_segment_inner(now)?;
        if let Some(v) = tsval {
            self.first_tsval.get_or_insert(v);
        }
        if seg.retransmission {
            self.counters.retransmitted += 1;
            if let Some(ep) = self.episode.as_mut() {
                if !ep.retransmitted {
                    ep.retransmitted = true;
                    if let Detection::Eifel { retransmit_ts } = &mut ep.detection {
                        match tsval {
                            Some(v) => *retransmit_ts = Some(v),
                            None => ep.detection = Detection::Conventional,
                        }
                    }
                }
                ep.rtx_end = ep.rtx_end.max(seg.offset + seg.len as u64);
            }
        }
        Some(seg)
    }

    fn next_segment_inner(&mut self, now: Instant) -> Option<Segment> {
        if self.failed || self.fin_acked {
            return None;
        }
        let mss = self.mss();
        let avail = self.buf.contiguous_end().min(self.body_len);

        // 1. Retransmission of a hole (fast retransmit / SACK recovery).
        if self.rtx_budget > 0 {
            if let Some(seg) = self.next_hole(avail, mss) {
                self.rtx_budget -= 1;
                self.rtt_probe = None;
                self.arm_rto(now);
                return Some(seg);
            }
            self.rtx_budget = 0;
        }

        // Skip ranges the client already holds (after go-back-N).
        while let Some((_, e)) = self.sacked.containing(self.nxt) {
            self.nxt = e.min(self.body_len);
            if e >= self.body_len {
                break;
            }
        }

        // 2. New data (or data being resent after an RTO) within both windows.
        // Limited transmit (RFC 3042): each of the first two duplicate
        // ACKs lets one new segment out, so that small windows still get
        // the three duplicates fast retransmit needs.
        let limited = if self.recover.is_none() && self.after_rto_recovery() {
            u64::from(self.dupacks.min(2)) * mss
        } else {
            0
        };
        let mut pipe_limit = self.una + self.cwnd + self.sacked.total() + limited;
        if let Some(l) = self.frto_limit {
            pipe_limit = pipe_limit.max(l);
        }
        let limit = self.wnd_edge.min(pipe_limit);
        if self.nxt < avail && self.nxt < limit {
            let mut len = (avail - self.nxt).min(limit - self.nxt).min(mss);
            if let Some(s) = self.sacked.next_start_after(self.nxt) {
                len = len.min(s - self.nxt);
            }
            // Sender-side silly window avoidance: do not send a runt
            // limited by a window while data is in flight.
            let data_limited = len == avail - self.nxt;
            if len < mss && !data_limited && self.in_flight() {
                return None;
            }
            let retransmission = self.nxt < self.max_sent;
            let offset = self.nxt;
            self.nxt += len;
            let fin = self.nxt == self.body_len && !self.fin_sent;
            if fin {
                self.fin_sent = true;
                self.fin_ever_sent = true;
            }
            if retransmission {
                self.rtt_probe = None;
            } else if self.rtt_probe.is_none() && self.retries == 0 {
                self.rtt_probe = Some((self.nxt, now));
            }
            self.max_sent = self.max_sent.max(self.nxt);
            self.arm_rto(now);
            return Some(Segment {
                offset,
                len: len as usize,
                fin,
                retransmission,
            });
        }

        // 3. A bare FIN once every byte went out.
        if self.nxt == self.body_len && !self.fin_sent {
            self.fin_sent = true;
            self.fin_ever_sent = true;
            self.arm_rto(now);
            return Some(Segment {
                offset: self.body_len,
                len: 0,
                fin: true,
                retransmission: false,
            });
        }

        // 4. Zero window: probe with one byte beyond the window.
        if self.nxt < avail && self.wnd_edge <= self.nxt && !self.in_flight() {
            if self.probe_due {
                self.probe_due = false;
                self.persist_backoff = self.persist_backoff.saturating_add(1);
                self.arm_persist(now);
                // The probe does not advance `nxt`: it is not in flight
                // (no RTO), the persist timer repeats it.
                self.probe_end = Some(self.nxt + 1);
                return Some(Segment {
                    offset: self.nxt,
                    len: 1,
                    fin: false,
                    retransmission: false,
                });
            }
            if self.persist_deadline.is_none() {
                self.arm_persist(now);
            }
        }
        None
    }

    fn next_hole(&self, avail: u64, mss: u64) -> Option<Segment> {
        let mut at = self.rtx_next.max(self.una);
        let mut end = self.recover.unwrap_or(self.max_sent).min(self.max_sent);
        if self.sack_enabled {
            // Only a range the client SACKed data above counts as lost
            // (RFC 6675 IsLost, simplified): the unSACKed tail of a large
            // flight is most likely still on its way (retransmitting it
            // resent the whole window after a single loss). The first
            // segment always qualifies, so recovery never waits on SACKs.
            let above = self.sacked.highest_end().unwrap_or(0);
            end = end.min(above.max(self.una + mss));
        }
        while let Some((_, e)) = self.sacked.containing(at) {
            at = e;
        }
        if at < end && at < avail {
            let mut len = (end - at).min(mss).min(avail - at);
            if let Some(s) = self.sacked.next_start_after(at) {
                len = len.min(s - at);
            }
            return Some(Segment {
                offset: at,
                len: len as usize,
                fin: false,
                retransmission: true,
            });
        }
        // The FIN alone is outstanding and was lost.
        if at >= self.body_len && self.fin_sent && !self.fin_acked && self.una == self.body_len {
            return Some(Segment {
                offset: self.body_len,
                len: 0,
                fin: true,
                retransmission: true,
            });
        }
        None
    }

    /// Records that a hole segment was sent (advances the hole cursor).
    pub(crate) fn hole_sent(&mut self, seg: &Segment) {
        if seg.retransmission {
            self.rtx_next = self.rtx_next.max(seg.offset + seg.len as u64);
        }
    }

    fn arm_rto(&mut self, now: Instant) {
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto);
            self.rto_armed_at = Some(now);
        }
    }

    fn arm_persist(&mut self, now: Instant) {
        let base = self.rto.max(self.cfg.min_rto);
        let d = base
            .saturating_mul(1u32 << self.persist_backoff.min(10))
            .min(self.cfg.max_rto);
        self.persist_deadline = Some(now + d);
    }

    /// Copies payload bytes for a segment.
    pub(crate) fn read(&self, seg: &Segment, out: &mut Vec<u8>) -> bool {
        seg.len == 0 || self.buf.read(seg.offset, seg.len, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ack(
        s: &mut Sender,
        now: Instant,
        ack: u64,
        window: u64,
        sacks: &[(u64, u64)],
        pure: bool,
        delivered_elsewhere: u64,
    ) -> AckOutcome {
        s.on_ack(
            now,
            &Ack {
                ack,
                window,
                sacks,
                pure,
                delivered_elsewhere,
                ts: None,
            },
        )
    }

    fn cfg() -> SenderConfig {
        SenderConfig {
            mss: 100,
            buffer_window: 10_000,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            max_retransmits: 5,
            initial_cwnd_segments: 4,
        }
    }

    #[test]
    fn rangeset_merges() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(15, 31);
        assert_eq!(r.0, vec![(10, 40)]);
        r.insert(50, 60);
        r.trim_below(35);
        assert_eq!(r.0, vec![(35, 40), (50, 60)]);
        assert_eq!(r.total(), 15);
        assert_eq!(r.containing(55), Some((50, 60)));
        assert_eq!(r.next_start_after(40), Some(50));
    }

    #[test]
    fn sends_only_contiguous_bytes_within_cwnd_and_window() {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 0, 1000, 250, false, false);
        assert_eq!(s.next_segment(t0, None), None);
        s.push_piece(100, &[1; 200]).unwrap();
        assert_eq!(s.next_segment(t0, None), None, "gap at 0..100");
        s.push_piece(0, &[0; 100]).unwrap();
        let a = s.next_segment(t0, None).unwrap();
        assert_eq!((a.offset, a.len), (0, 100));
        let b = s.next_segment(t0, None).unwrap();
        assert_eq!((b.offset, b.len), (100, 100));
        // window edge 250: a 50-byte runt is window limited while in flight
        assert_eq!(s.next_segment(t0, None), None);
        let o = on_ack(&mut s, t0, 200, 1000, &[], true, 0);
        assert!(!o.invalid);
        let c = s.next_segment(t0, None).unwrap();
        assert_eq!((c.offset, c.len), (200, 100));
        // acking beyond what was sent is invalid
        assert!(on_ack(&mut s, t0, 301, 1000, &[], true, 0).invalid);
    }

    #[test]
    fn available_ignores_pieces_past_a_hole() {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 100, 1000, 10_000, false, false);
        assert_eq!(s.available(), 100);
        s.push_piece(300, &[1; 200]).unwrap();
        assert_eq!(s.available(), 100, "a piece past a hole is not usable");
        assert!(s.buffered() > 0);
        s.push_piece(100, &[2; 200]).unwrap();
        assert_eq!(s.available(), 500);
        while s.next_segment(t0, None).is_some() {}
        on_ack(&mut s, t0, 500, 10_000, &[], true, 0);
        assert_eq!((s.una(), s.available()), (500, 500));
    }

    #[test]
    fn fin_rides_on_the_last_byte_and_rto_resends_it() {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 950, 1000, 10_000, false, false);
        s.push_piece(950, &[9; 50]).unwrap();
        let a = s.next_segment(t0, None).unwrap();
        assert_eq!((a.offset, a.len, a.fin), (950, 50, true));
        assert_eq!(s.next_segment(t0, None), None);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        let b = s.next_segment(d, None).unwrap();
        assert_eq!(
            (b.offset, b.len, b.fin, b.retransmission),
            (950, 50, true, true)
        );
        let o = on_ack(&mut s, d, 1001, 1000, &[], true, 0);
        assert!(o.fin_acked && s.fin_acked());
        assert_eq!(s.next_segment(d, None), None);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn three_dupacks_retransmit_the_hole_and_sack_skips_held_ranges() {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 0, 10_000, 100_000, true, false);
        s.push_piece(0, &[5; 800]).unwrap();
        let mut sent = vec![];
        while let Some(seg) = s.next_segment(t0, None) {
            sent.push(seg.offset);
        }
        assert_eq!(sent, vec![0, 100, 200, 300]);
        // 0..100 lost; client SACKs 100..400 with dup ACKs.
        on_ack(&mut s, t0, 0, 100_000, &[(100, 200)], true, 0);
        let seg = s.next_segment(t0, None).unwrap();
        assert!(!seg.retransmission, "no fast retransmit after one dup ack");
        on_ack(&mut s, t0, 0, 100_000, &[(100, 400)], true, 0);
        let r = s.next_segment(t0, None).unwrap();
        assert_eq!((r.offset, r.len, r.retransmission), (0, 100, true));
        s.hole_sent(&r);
    }

    #[test]
    fn retries_exhaust_into_failure() {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 0, 1000, 10_000, false, false);
        s.push_piece(0, &[0; 100]).unwrap();
        let mut now = t0;
        let mut fails = 0;
        for _ in 0..10 {
            let _ = s.next_segment(now, None);
            if let Some(d) = s.poll_timeout() {
                now = d;
                if s.on_timeout(now).is_err() {
                    fails += 1;
                    break;
                }
            }
        }
        assert_eq!(fails, 1);
        assert_eq!(s.retries, 5);
    }

    // ----- spurious timeouts ------------------------------------------------

    /// Sends everything the sender offers now, each with `tsval`.
    fn burst(s: &mut Sender, now: Instant, tsval: Option<u32>) -> Vec<Segment> {
        let mut out = Vec::new();
        while let Some(seg) = s.next_segment(now, tsval) {
            s.hole_sent(&seg);
            out.push(seg);
            assert_timer_invariant(s);
        }
        out
    }

    /// Data in flight always has a retransmission timer (never a stall).
    #[track_caller]
    fn assert_timer_invariant(s: &Sender) {
        if s.in_flight() {
            assert!(s.rto_deadline.is_some(), "in flight without a timer: {s:?}");
        }
    }

    #[track_caller]
    fn ack_ts(s: &mut Sender, now: Instant, ack: u64, ts: Option<(u32, u32)>) -> AckOutcome {
        let o = s.on_ack(
            now,
            &Ack {
                ack,
                window: 100_000,
                sacks: &[],
                pure: true,
                delivered_elsewhere: 0,
                ts,
            },
        );
        assert_timer_invariant(s);
        o
    }

    /// A sender with 10 ms of RTT history and a flight of 8 segments
    /// (0..800 acked, 800..1600 in flight, sent at `t1` with TSval 1010).
    fn warmed_up(timestamps: bool) -> (Sender, Instant, Instant) {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 0, 1_000_000, 100_000, true, timestamps);
        s.push_piece(0, &[3; 10_000]).unwrap();
        let ts = |v: u32| timestamps.then_some(v);
        assert_eq!(burst(&mut s, t0, ts(1000)).len(), 4);
        let t1 = t0 + Duration::from_millis(10);
        for i in 1..=4 {
            ack_ts(&mut s, t1, i * 100, ts(1000).map(|v| (v, 1010)));
        }
        assert_eq!(s.srtt, Some(Duration::from_millis(10)));
        assert_eq!(s.rto(), Duration::from_millis(200), "min_rto");
        let sent = burst(&mut s, t1, ts(1010));
        assert_eq!(sent.len(), 8, "cwnd 8 after slow start: {sent:?}");
        assert_eq!((s.una(), s.max_sent()), (400, 1200));
        // The flight of the first ACKs: 400..1200 in flight.
        (s, t0, t1)
    }

    #[test]
    fn eifel_undoes_a_spurious_timeout() {
        let (mut s, _, t1) = warmed_up(true);
        // The client's ACKs wait 300 ms in the router's queue: the timer
        // fires at t1 + 200 ms and resends the first segment.
        let d = s.poll_timeout().unwrap();
        assert_eq!(d, t1 + Duration::from_millis(200));
        s.on_timeout(d).unwrap();
        let rtx = burst(&mut s, d, Some(1210));
        assert_eq!(rtx.len(), 1, "cwnd 1 after the timeout: {rtx:?}");
        assert!(rtx[0].retransmission && rtx[0].offset == 400);
        // The delayed ACKs arrive; they echo the original TSval (1010).
        let late = t1 + Duration::from_millis(300);
        let o = ack_ts(&mut s, late, 600, Some((1010, 1310)));
        assert!(o.spurious_timeout);
        assert_eq!(
            s.counters(),
            SenderCounters {
                retransmitted: 1,
                timeouts: 1,
                spurious_timeouts: 1
            }
        );
        // No go-back-N: what goes out next is new data from 1200, at most
        // min(acked, IW) = 200 bytes past the flight.
        let next = burst(&mut s, late, Some(1310));
        assert_eq!(
            next.iter()
                .map(|g| (g.offset, g.retransmission))
                .collect::<Vec<_>>(),
            vec![(1200, false), (1300, false)]
        );
        // The RTT estimator took the 300 ms: the same delay does not fire
        // the timer again (srtt 300 ms, rttvar 150 ms: RTO 900 ms).
        assert!(s.rto() > Duration::from_millis(300), "{:?}", s.rto());
        assert_eq!(s.rto(), Duration::from_millis(900));
        for a in [800, 1000, 1200] {
            ack_ts(&mut s, late, a, Some((1010, 1310)));
        }
        let next = burst(&mut s, late, Some(1310));
        assert!(next.iter().all(|g| !g.retransmission && g.offset >= 1400));
        assert_eq!(s.counters().retransmitted, 1);
    }

    #[test]
    fn eifel_keeps_going_back_when_the_retransmission_is_what_got_acked() {
        let (mut s, _, t1) = warmed_up(true);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        assert_eq!(burst(&mut s, d, Some(1210)).len(), 1);
        // The ACK echoes the retransmission's TSval: the original was lost.
        let o = ack_ts(
            &mut s,
            d + Duration::from_millis(10),
            500,
            Some((1210, 1220)),
        );
        assert!(!o.spurious_timeout);
        assert_eq!(s.counters().spurious_timeouts, 0);
        let next = burst(&mut s, d + Duration::from_millis(10), Some(1220));
        assert!(!next.is_empty());
        assert!(next.iter().all(|g| g.retransmission), "go-back-N: {next:?}");
        assert_eq!(next[0].offset, 500);
        let _ = t1;
    }

    #[test]
    fn eifel_needs_the_tsecr_an_ack_without_one_changes_nothing() {
        let (mut s, _, _) = warmed_up(true);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        assert_eq!(burst(&mut s, d, Some(1210)).len(), 1);
        let o = ack_ts(&mut s, d + Duration::from_millis(100), 600, None);
        assert!(!o.spurious_timeout);
        assert!(
            burst(&mut s, d, Some(1310))
                .iter()
                .all(|g| g.retransmission)
        );
    }

    #[test]
    fn repeated_timeouts_then_a_late_ack_are_undone_once() {
        let (mut s, _, t1) = warmed_up(true);
        // A 1 s stall: two timeouts (200 ms, then 400 ms backed off).
        for (i, tsval) in [(0, 1210), (1, 1610)] {
            let d = s.poll_timeout().unwrap();
            s.on_timeout(d).unwrap();
            let r = burst(&mut s, d, Some(tsval));
            assert_eq!((r.len(), r[0].offset, s.retries), (1, 400, i + 1));
        }
        let late = t1 + Duration::from_millis(1000);
        let o = ack_ts(&mut s, late, 600, Some((1010, 2010)));
        assert!(o.spurious_timeout);
        assert_eq!(s.retries, 0);
        assert_eq!(
            (s.counters().timeouts, s.counters().spurious_timeouts),
            (2, 1)
        );
        assert!(s.rto() > Duration::from_millis(1000), "{:?}", s.rto());
        assert!(
            burst(&mut s, late, Some(2010))
                .iter()
                .all(|g| !g.retransmission)
        );
    }

    #[test]
    fn frto_undoes_a_spurious_timeout_without_timestamps() {
        let (mut s, _, t1) = warmed_up(false);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        let rtx = burst(&mut s, d, None);
        assert_eq!(
            (rtx.len(), rtx[0].offset, rtx[0].retransmission),
            (1, 400, true)
        );
        // First ACK after the retransmission covers it: two new segments.
        let late = t1 + Duration::from_millis(300);
        assert!(!ack_ts(&mut s, late, 600, None).spurious_timeout);
        let new = burst(&mut s, late, None);
        assert_eq!(
            new.iter()
                .map(|g| (g.offset, g.retransmission))
                .collect::<Vec<_>>(),
            vec![(1200, false), (1300, false)]
        );
        // The next ACK acknowledges data that was not retransmitted.
        assert!(ack_ts(&mut s, late, 800, None).spurious_timeout);
        assert_eq!(s.counters().spurious_timeouts, 1);
        assert!(s.rto() > Duration::from_millis(200));
        let next = burst(&mut s, late, None);
        assert!(!next.is_empty() && next.iter().all(|g| !g.retransmission && g.offset >= 1400));
        assert_eq!(s.counters().retransmitted, 1);
    }

    #[test]
    fn frto_duplicate_ack_after_the_new_segments_means_loss() {
        let (mut s, _, t1) = warmed_up(false);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        burst(&mut s, d, None);
        let late = t1 + Duration::from_millis(300);
        ack_ts(&mut s, late, 500, None);
        assert_eq!(burst(&mut s, late, None).len(), 2);
        // A duplicate ACK: 500.. was lost after all. Back to go-back-N
        // from 500 with at most three segments of window.
        assert!(!ack_ts(&mut s, late, 500, None).spurious_timeout);
        let next = burst(&mut s, late, None);
        assert!(!next.is_empty() && next.len() <= 3, "{next:?}");
        assert_eq!((next[0].offset, next[0].retransmission), (500, true));
        assert_eq!(s.counters().spurious_timeouts, 0);
    }

    #[test]
    fn frto_with_nothing_new_to_send_falls_back_to_go_back_n() {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 0, 1_000_000, 100_000, false, false);
        s.push_piece(0, &[3; 400]).unwrap();
        assert_eq!(burst(&mut s, t0, None).len(), 4);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        assert_eq!(burst(&mut s, d, None).len(), 1);
        // The first ACK covers the retransmission, but no new data is held.
        ack_ts(&mut s, d + Duration::from_millis(50), 200, None);
        let next = burst(&mut s, d + Duration::from_millis(50), None);
        assert_eq!(
            next.iter()
                .map(|g| (g.offset, g.retransmission))
                .collect::<Vec<_>>(),
            vec![(200, true), (300, true)],
            "conventional recovery"
        );
    }

    #[test]
    fn frto_window_too_small_for_a_new_segment_keeps_a_timer() {
        // Regression (simulation, 1 % loss, no timestamps): F-RTO put the
        // flight back in flight with the timer stopped and a runt-sized
        // window: nothing was ever sent again.
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 0, 1_000_000, 1250, false, false);
        s.push_piece(0, &[3; 5000]).unwrap();
        let first = burst(&mut s, t0, None);
        assert_eq!(first.len(), 4);
        for a in [100, 200, 300, 400] {
            s.on_ack(
                t0,
                &Ack {
                    ack: a,
                    window: 850,
                    sacks: &[],
                    pure: true,
                    delivered_elsewhere: 0,
                    ts: None,
                },
            );
        }
        burst(&mut s, t0, None);
        assert_eq!(s.max_sent(), 1200);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        burst(&mut s, d, None);
        // The window now ends 50 bytes past what was sent: no full segment.
        let o = s.on_ack(
            d,
            &Ack {
                ack: 600,
                window: 650,
                sacks: &[],
                pure: true,
                delivered_elsewhere: 0,
                ts: None,
            },
        );
        assert!(!o.spurious_timeout);
        assert_timer_invariant(&s);
        let next = burst(&mut s, d, None);
        assert!(next.iter().all(|g| g.retransmission), "{next:?}");
        assert!(s.poll_timeout().is_some());
    }

    #[test]
    fn duplicate_acks_during_a_go_back_n_do_not_inflate_the_window() {
        let (mut s, _, t1) = warmed_up(true);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        burst(&mut s, d, Some(1210));
        // Late duplicate ACKs with SACK, from before the timeout (400..500
        // was lost, 500..1200 arrived).
        let late = t1 + Duration::from_millis(300);
        for end in [600, 800, 1000, 1200] {
            s.on_ack(
                late,
                &Ack {
                    ack: 400,
                    window: 100_000,
                    sacks: &[(500, end)],
                    pure: true,
                    delivered_elsewhere: 0,
                    ts: Some((1010, 1310)),
                },
            );
        }
        assert_eq!(s.recover, None, "no fast recovery inside a go-back-N");
        assert_eq!(s.cwnd, 100, "window not inflated");
        assert!(burst(&mut s, late, Some(1310)).is_empty());
        // The retransmission arrives: the ACK echoes its TSval and covers
        // the SACKed data: nothing was resent twice.
        let o = ack_ts(&mut s, late, 1200, Some((1210, 1320)));
        assert!(!o.spurious_timeout);
        assert_eq!(s.counters().retransmitted, 1);
    }

    #[test]
    fn sack_recovery_resends_holes_only_below_the_highest_sack() {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 0, 1_000_000, 100_000, true, false);
        s.push_piece(0, &[5; 3000]).unwrap();
        s.cwnd = 2000;
        assert_eq!(burst(&mut s, t0, None).len(), 20);
        // 0..100 lost; the SACKs so far reach 400 (the rest is on its way).
        for end in [200, 300, 400] {
            on_ack(&mut s, t0, 0, 100_000, &[(100, end)], true, 0);
        }
        let r = burst(&mut s, t0, None);
        assert_eq!(
            r.iter()
                .map(|g| (g.offset, g.retransmission))
                .collect::<Vec<_>>(),
            vec![(0, true)],
            "only the hole, not the unSACKed tail"
        );
        for end in [500, 600, 700] {
            on_ack(&mut s, t0, 0, 100_000, &[(100, end)], true, 0);
        }
        assert!(burst(&mut s, t0, None).iter().all(|g| !g.retransmission));
    }

    #[test]
    fn undo_keeps_the_fin_in_flight_and_a_lost_fin_is_still_resent() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Sender::new(cfg(), 0, 400, 100_000, true, true);
        s.push_piece(0, &[1; 400]).unwrap();
        let b = burst(&mut s, t0, Some(100));
        assert_eq!(b.len(), 4);
        assert!(b[3].fin);
        let d = s.poll_timeout().unwrap();
        s.on_timeout(d).unwrap();
        let r = burst(&mut s, d, Some(1100));
        assert_eq!((r.len(), r[0].offset, r[0].fin), (1, 0, false));
        // Late ACKs for the originals: undone, the FIN counts as in flight.
        assert!(ack_ts(&mut s, d + ms(50), 200, Some((100, 1150))).spurious_timeout);
        assert!(burst(&mut s, d + ms(50), Some(1150)).is_empty());
        // 200.. and the FIN were lost after all: the next timeout resends.
        let d2 = s.poll_timeout().unwrap();
        s.on_timeout(d2).unwrap();
        let r = burst(&mut s, d2, Some(2000));
        assert_eq!((r.len(), r[0].offset, r[0].retransmission), (1, 200, true));
        // That retransmission is what the client acknowledges: real loss,
        // the go-back-N goes on, the FIN rides on the last byte again.
        assert!(!ack_ts(&mut s, d2 + ms(5), 300, Some((2000, 2005))).spurious_timeout);
        let r = burst(&mut s, d2 + ms(5), Some(2005));
        assert_eq!((r.len(), r[0].offset, r[0].fin), (1, 300, true));
        let o = ack_ts(&mut s, d2 + ms(10), 401, Some((2005, 2010)));
        assert!(o.fin_acked && s.poll_timeout().is_none());
        assert_eq!(
            s.counters(),
            SenderCounters {
                retransmitted: 3,
                timeouts: 2,
                spurious_timeouts: 1
            }
        );
    }

    #[test]
    fn zero_window_is_probed_with_backoff() {
        let t0 = Instant::now();
        let mut s = Sender::new(cfg(), 0, 1000, 0, false, false);
        s.push_piece(0, &[7; 300]).unwrap();
        assert_eq!(s.next_segment(t0, None), None);
        let d1 = s.poll_timeout().unwrap();
        s.on_timeout(d1).unwrap();
        let p = s.next_segment(d1, None).unwrap();
        assert_eq!((p.offset, p.len), (0, 1));
        let d2 = s.poll_timeout().unwrap();
        assert!(d2 - d1 > d1 - t0, "backoff grows");
        // the client accepted the probe byte and opened the window
        on_ack(&mut s, d1, 1, 1000, &[], true, 0);
        let n = s.next_segment(d1, None).unwrap();
        assert_eq!((n.offset, n.len), (1, 100));
    }
}
