//! The piece planner: which source fetches which byte range of the body, when.
//!
//! See the crate documentation for the calling contract. The state of one
//! piece:
//!
//! ```text
//!   next_assignment ──> Live ──(last byte reported)──────────> Done
//!                        │ ──(tail covered by other copies)──> Cancelled (PlanEvent::Cancel)
//!                        │ ──(source stalled)────────────────> Cancelled (PlanEvent::Cancel)
//!                        │ ──(on_piece_failed / source_gone)─> Failed (tail back to the pool)
//! ```
//!
//! A byte range goes "back to the pool" simply by no longer being covered by
//! a live piece or by received bytes: the next `next_assignment` finds it as
//! the first gap in delivery order.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::time::Duration;

use crate::ranges::RangeSet;
use crate::rate::{Rate, RateEstimator};

/// Scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The seed's rule, as a baseline: the body after the cut is carved into
    /// rounds of half a window, and each round is split into one chunk per
    /// source proportional to its configured/advertised rate (local fetcher
    /// first, the rounding remainder to the local fetcher). No measurement,
    /// no adaptation, no endgame; failed chunks go to whoever asks first.
    Proportional,
    /// Pieces pulled in delivery order by each source as it frees up, sized
    /// to the source's measured rate, tail-balanced, pipelined, with endgame
    /// duplication. The default.
    #[default]
    Dynamic,
}

impl Policy {
    /// The configuration spelling: `dynamic` or `proportional`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Proportional => "proportional",
            Policy::Dynamic => "dynamic",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Policy {
    type Err = crate::advert::UnknownSetting;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dynamic" => Ok(Policy::Dynamic),
            "proportional" => Ok(Policy::Proportional),
            _ => Err(crate::advert::UnknownSetting {
                value: s.chars().take(64).collect(),
                expected: "dynamic, proportional",
            }),
        }
    }
}

/// Planner settings. `Default` gives the values the simulations were run with.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// Scheduling policy.
    pub policy: Policy,
    /// Bytes ahead of the delivery cursor that may be requested (and so
    /// buffered) at any time. Every assigned range ends at or below
    /// `cursor + window` for the cursor at assignment time.
    pub window: u64,
    /// Dynamic policy: a piece should take about this long at the source's
    /// estimated rate.
    pub target_piece_time: Duration,
    /// Smallest piece the dynamic policy hands out (except the last bytes of
    /// a gap and tail-balanced pieces, see `min_tail_piece`).
    pub min_piece: u64,
    /// Largest piece the dynamic policy hands out.
    pub max_piece: u64,
    /// Smallest tail-balanced piece.
    pub min_tail_piece: u64,
    /// Requests a source may hold at once (pipelining hides the RTT).
    pub pipeline_depth: usize,
    /// A busy source that delivered nothing for this long is stalled: its
    /// pieces are cancelled and go back to the pool.
    pub stall_timeout: Duration,
    /// A stalled source gets no new piece for this long; the backoff doubles
    /// with each stall in a row (no data in between), up to
    /// `max_stall_backoff`. After the backoff the source is on probation
    /// (one outstanding piece of `min_piece` bytes) until it delivers.
    pub stall_backoff: Duration,
    /// Upper bound of the doubling stall backoff.
    pub max_stall_backoff: Duration,
    /// Silence tolerated before a busy source's effective rate starts to
    /// decay (used for endgame decisions, not for the estimate itself).
    pub silence_grace: Duration,
    /// Time constant of the rate EWMA.
    pub rate_time_constant: Duration,
    /// Shortest interval a rate sample is taken over.
    pub rate_sample_interval: Duration,
    /// Dynamic policy: a duplicate is only requested when it is expected to
    /// finish at least this much earlier than the copy already running.
    pub endgame_margin: Duration,
    /// Maximum live copies of the same bytes (original + duplicates).
    pub max_copies: usize,
    /// Dynamic policy: a busy source silent for this long (plus four of its
    /// expected gaps between data reports) is suspect, and its pieces are
    /// duplicated by faster sources before any fresh piece is handed out.
    pub suspect_silence: Duration,
    /// The cut is at least this far ahead of the original flow's position.
    pub min_cut_lead: u64,
    /// Extra time allowed on top of the quickest peer's first-byte latency
    /// when choosing the cut.
    pub cut_margin: Duration,
    /// Maximum number of sources.
    pub max_sources: usize,
    /// Consecutive failed pieces after which a source is treated as stalled.
    pub max_consecutive_failures: u32,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            policy: Policy::Dynamic,
            window: 8 << 20,
            target_piece_time: Duration::from_millis(250),
            min_piece: 64 << 10,
            max_piece: 2 << 20,
            min_tail_piece: 16 << 10,
            pipeline_depth: 2,
            stall_timeout: Duration::from_secs(2),
            stall_backoff: Duration::from_secs(5),
            max_stall_backoff: Duration::from_secs(60),
            silence_grace: Duration::from_millis(100),
            rate_time_constant: Duration::from_millis(700),
            rate_sample_interval: Duration::from_millis(100),
            endgame_margin: Duration::from_millis(50),
            max_copies: 2,
            suspect_silence: Duration::from_millis(500),
            min_cut_lead: 64 << 10,
            cut_margin: Duration::from_millis(20),
            max_sources: 64,
            max_consecutive_failures: 3,
        }
    }
}

/// What a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The client's own origin flow through A, streaming from the body start
    /// until the cut. Never gets assignments; its progress is reported with
    /// [`Planner::on_delivered`] before the cut. At most one.
    OriginalFlow,
    /// A's own HTTP Range fetcher over A's uplink. Gets no piece before the
    /// cut is set (it would compete with the original flow for the uplink).
    LocalFetcher,
    /// A neighbour router, fetching over its own uplink (and possibly its
    /// own neighbours) and shipping bytes back over the inter-router link.
    Peer,
}

/// How a source is described when it is added.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceSpec {
    /// What the source is.
    pub kind: SourceKind,
    /// Configured (local, original flow) or advertised (peer) rate: the seed
    /// of the rate estimate.
    pub rate: Rate,
    /// Rate of the inter-router link to a peer; the useful rate is
    /// `min(rate, link_rate)`. `None` for local sources.
    pub link_rate: Option<Rate>,
    /// Time from sending a request to its first byte arriving at this
    /// router (link round trip + the source's round trip to the origin).
    pub rtt: Duration,
    /// Pieces the source works on at once (a relay fetches on its own
    /// uplink and its sub-delegates' in parallel); `None`: the config's
    /// `pipeline_depth`. The planner keeps up to this many outstanding
    /// (at most [`MAX_SOURCE_DEPTH`]) and sizes them for the rate divided
    /// over them (`rate × target_piece_time × pipeline_depth / depth`).
    /// Such a source is planned as `depth / pipeline_depth` lanes, each
    /// fetching whole pieces at its part of the rate (the daemon's relay
    /// puts each piece on one uplink): tail shares, expected finish times
    /// and endgame decisions are per lane.
    pub depth: Option<usize>,
}

/// The most pieces the planner keeps outstanding at one source.
pub const MAX_SOURCE_DEPTH: usize = 16;

impl SourceSpec {
    /// The original flow, at A's uplink rate.
    pub fn original_flow(uplink: Rate, rtt: Duration) -> Self {
        SourceSpec {
            kind: SourceKind::OriginalFlow,
            rate: uplink,
            link_rate: None,
            rtt,
            depth: None,
        }
    }

    /// A's own Range fetcher.
    pub fn local(uplink: Rate, rtt: Duration) -> Self {
        SourceSpec {
            kind: SourceKind::LocalFetcher,
            rate: uplink,
            link_rate: None,
            rtt,
            depth: None,
        }
    }

    /// A neighbour with an advertised rate behind a link.
    pub fn peer(advertised: Rate, link: Rate, rtt: Duration) -> Self {
        SourceSpec {
            kind: SourceKind::Peer,
            rate: advertised,
            link_rate: Some(link),
            rtt,
            depth: None,
        }
    }

    /// `min(rate, link_rate)`.
    pub fn useful_rate(&self) -> Rate {
        self.rate.capped_by(self.link_rate)
    }
}

/// Index of a source in one planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(pub u32);

/// Identifier of a piece (unique within one planner, never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceId(pub u64);

/// A request the caller must send to a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The piece, to quote in progress reports.
    pub piece: PieceId,
    /// Who fetches it.
    pub source: SourceId,
    /// Absolute body byte range (HTTP `Range: bytes=start-(end-1)`).
    pub range: Range<u64>,
    /// Whether these bytes are also being fetched by another source
    /// (endgame); the caller must keep whichever copy arrives first.
    pub duplicate: bool,
}

/// Something the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanEvent {
    /// Tell `source` to stop fetching `piece`: its remaining bytes arrived
    /// from another copy, or the source stalled and the bytes were
    /// reassigned. Later data for the piece is rejected with
    /// [`PlanError::UnknownPiece`] (the bytes may still be kept if valid).
    Cancel {
        /// The piece.
        piece: PieceId,
        /// Its source.
        source: SourceId,
        /// The piece's full range.
        range: Range<u64>,
    },
    /// `source` delivered nothing for `stall_timeout`; its pieces were
    /// cancelled and it gets nothing until `stall_backoff` has passed.
    SourceStalled {
        /// The source.
        source: SourceId,
    },
    /// Every byte of the body is covered (received, or carried by the
    /// original flow before the cut). Emitted once.
    Complete,
    /// Every source that could take pieces is gone while bytes are still
    /// missing: nothing more will be assigned. Before the cut, do not cut
    /// (the original flow carries on); after it, unless a new source is
    /// added, the download cannot be finished and the client's connection
    /// must be reset. Emitted once per exhaustion (adding a source re-arms
    /// it).
    SourcesExhausted,
}

/// Misuse or a peer's misbehaviour reported through the planner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The body range is empty or inverted.
    #[error("invalid body range {start}..{end}")]
    InvalidBody {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// No such source.
    #[error("unknown source {0:?}")]
    UnknownSource(SourceId),
    /// No such live piece (finished, cancelled, failed, or never assigned).
    #[error("unknown or finished piece {0:?}")]
    UnknownPiece(PieceId),
    /// More bytes reported for a piece than it has: the source misbehaved.
    #[error("piece {piece:?} overrun: {reported} bytes reported for a {len}-byte piece")]
    Overrun {
        /// The piece.
        piece: PieceId,
        /// Its length.
        len: u64,
        /// Bytes reported in total.
        reported: u64,
    },
    /// The cut is outside the body.
    #[error("cut {cut} outside the body {start}..{end}")]
    CutOutOfRange {
        /// The cut.
        cut: u64,
        /// Body start.
        start: u64,
        /// Body end.
        end: u64,
    },
    /// `set_cut` without an original flow, or twice.
    #[error("no cut pending (no original flow, or the cut was already set)")]
    NoCutPending,
    /// The original flow must be added before any piece is assigned, once.
    #[error("the original flow must be added once, before any assignment")]
    LateOriginalFlow,
    /// `max_sources` reached.
    #[error("too many sources")]
    TooManySources,
}

/// Counters, for logs, metrics and the simulations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Pieces assigned (including duplicates).
    pub pieces_assigned: u64,
    /// Duplicate pieces assigned (endgame).
    pub duplicates_assigned: u64,
    /// Pieces cancelled by the planner.
    pub pieces_cancelled: u64,
    /// Pieces reported failed or lost with a gone source.
    pub pieces_failed: u64,
    /// Stalls detected.
    pub stalls: u64,
    /// Piece bytes reported.
    pub bytes_received: u64,
    /// Piece bytes that were already covered when they arrived.
    pub redundant_bytes: u64,
    /// `next_assignment` calls declined because the source would finish
    /// after the others could have fetched everything left (link cost /
    /// tail rule).
    pub declined: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SourceState {
    Active,
    Stalled { until: Duration },
    Gone,
}

#[derive(Debug)]
struct Source {
    spec: SourceSpec,
    est: RateEstimator,
    state: SourceState,
    /// Live pieces, in the order the source serves them.
    outstanding: VecDeque<PieceId>,
    /// Silence is measured from here (last data, or expected first byte).
    quiet_since: Duration,
    consecutive_failures: u32,
    /// EWMA of the bytes per data report.
    report_bytes: f64,
    /// Silence accumulated when its pieces were taken over by other copies;
    /// carried into its next assignment.
    carried_silence: Duration,
    /// Stalls with no data in between.
    stalls_in_a_row: u32,
    /// Stalled before and has not delivered since.
    probation: bool,
    bytes_received: u64,
}

#[derive(Debug, Clone)]
struct Piece {
    source: SourceId,
    range: Range<u64>,
    received: u64,
    assigned_at: Duration,
}

impl Piece {
    fn len(&self) -> u64 {
        self.range.end - self.range.start
    }
    fn unreceived(&self) -> Range<u64> {
        self.range.start + self.received..self.range.end
    }
    fn remaining(&self) -> u64 {
        self.len() - self.received
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutState {
    /// No original flow: everything is planned from the body start.
    NoOriginalFlow,
    /// An original flow exists; `planned` is latched at the first
    /// `requested_cut` / assignment (`None` inside: not decided yet).
    Pending { planned: Option<u64> },
    /// The actual cut.
    Set(u64),
}

/// A chunk of the proportional policy.
#[derive(Debug, Clone)]
struct Chunk {
    range: Range<u64>,
    owner: Option<SourceId>,
}

#[derive(Debug, Default)]
struct ProportionalState {
    /// Untaken chunks, in body order.
    chunks: Vec<Chunk>,
    /// Where the next round starts.
    next_round: Option<u64>,
}

/// The sans-IO piece planner of one download (or of one delegated range on
/// a neighbour). See the crate documentation for the calling contract.
#[derive(Debug)]
pub struct Planner {
    config: PlannerConfig,
    body: Range<u64>,
    cut: CutState,
    /// Delivery cursor: bytes below it were handed to the client.
    cursor: u64,
    /// Bytes received from pieces, plus `body.start..cut` once the cut is set.
    filled: RangeSet,
    sources: Vec<Source>,
    pieces: BTreeMap<PieceId, Piece>,
    next_piece: u64,
    events: VecDeque<PlanEvent>,
    prop: ProportionalState,
    stats: PlanStats,
    complete_emitted: bool,
    exhausted_emitted: bool,
    original: Option<SourceId>,
}

impl Planner {
    /// A planner for the body bytes `body` (absolute offsets).
    pub fn new(body: Range<u64>, config: PlannerConfig) -> Result<Self, PlanError> {
        if body.start >= body.end {
            return Err(PlanError::InvalidBody {
                start: body.start,
                end: body.end,
            });
        }
        let mut config = config;
        config.window = config.window.max(1);
        config.min_piece = config.min_piece.max(1);
        config.max_piece = config.max_piece.max(config.min_piece);
        config.min_tail_piece = config.min_tail_piece.clamp(1, config.min_piece);
        config.pipeline_depth = config.pipeline_depth.max(1);
        config.max_copies = config.max_copies.max(1);
        Ok(Planner {
            cursor: body.start,
            config,
            cut: CutState::NoOriginalFlow,
            filled: RangeSet::new(),
            sources: Vec::new(),
            pieces: BTreeMap::new(),
            next_piece: 0,
            events: VecDeque::new(),
            prop: ProportionalState::default(),
            stats: PlanStats::default(),
            complete_emitted: false,
            exhausted_emitted: false,
            original: None,
            body,
        })
    }

    /// Add a source. An [`SourceKind::OriginalFlow`] source must be added
    /// before the first assignment, at most once; it makes the cut pending.
    pub fn add_source(&mut self, spec: SourceSpec, now: Duration) -> Result<SourceId, PlanError> {
        if self.sources.len() >= self.config.max_sources {
            return Err(PlanError::TooManySources);
        }
        if spec.kind == SourceKind::OriginalFlow {
            if self.original.is_some() || self.next_piece > 0 {
                return Err(PlanError::LateOriginalFlow);
            }
            self.cut = CutState::Pending { planned: None };
        }
        let id = SourceId(self.sources.len() as u32);
        self.sources.push(Source {
            est: RateEstimator::new(
                spec.useful_rate(),
                self.config.rate_time_constant,
                self.config.rate_sample_interval,
            ),
            spec,
            state: SourceState::Active,
            outstanding: VecDeque::new(),
            quiet_since: now,
            consecutive_failures: 0,
            report_bytes: 16384.0,
            carried_silence: Duration::ZERO,
            stalls_in_a_row: 0,
            probation: false,
            bytes_received: 0,
        });
        if spec.kind == SourceKind::OriginalFlow {
            self.original = Some(id);
        } else {
            self.exhausted_emitted = false;
        }
        Ok(id)
    }

    /// A new advertisement from a source. It replaces the seed while no
    /// measurement exists, and is what the proportional policy splits by.
    pub fn update_source_rate(&mut self, source: SourceId, rate: Rate) -> Result<(), PlanError> {
        let tau = self.config.rate_time_constant;
        let iv = self.config.rate_sample_interval;
        let s = self.source_mut(source)?;
        s.spec.rate = rate;
        if s.est.samples() == 0 {
            s.est = RateEstimator::new(s.spec.useful_rate(), tau, iv);
        }
        Ok(())
    }

    /// The source is gone (link lost, peer said goodbye). Its live pieces
    /// are dropped without [`PlanEvent::Cancel`] and their unreceived bytes
    /// go back to the pool.
    pub fn source_gone(&mut self, source: SourceId, _now: Duration) -> Result<(), PlanError> {
        let s = self.source_mut(source)?;
        s.state = SourceState::Gone;
        let ids: Vec<PieceId> = s.outstanding.drain(..).collect();
        s.est.on_idle();
        self.release_chunks(source);
        for id in ids {
            if let Some(p) = self.pieces.remove(&id) {
                self.stats.pieces_failed += 1;
                self.orphan(p.unreceived());
            }
        }
        let any_left = self
            .sources
            .iter()
            .any(|s| s.state != SourceState::Gone && s.spec.kind != SourceKind::OriginalFlow);
        if !any_left && !self.is_complete() && !self.exhausted_emitted {
            self.exhausted_emitted = true;
            self.events.push_back(PlanEvent::SourcesExhausted);
        }
        Ok(())
    }

    /// The cut the daemon should ask the splice engine for, or `None` when
    /// there is no original flow, the cut is already set, no peer could
    /// help, or too little of the body is left to be worth it.
    ///
    /// Rule: `cut = cursor + original_rate x (min peer first-byte latency +
    /// cut_margin)`, at least `min_cut_lead` ahead of the cursor. The first
    /// pieces after the cut go to peers (A's uplink is still carrying the
    /// original flow), so the cut is the earliest offset whose bytes a peer
    /// can have in place when the original flow reaches it. The value is
    /// latched at the first call (or first assignment) and then repeated.
    pub fn requested_cut(&mut self, now: Duration) -> Option<u64> {
        match self.cut {
            CutState::Pending { planned: Some(c) } => Some(c),
            CutState::Pending { planned: None } => {
                let c = self.compute_cut(now)?;
                self.cut = CutState::Pending { planned: Some(c) };
                Some(c)
            }
            _ => None,
        }
    }

    /// The actual cut the splice engine achieved (may be later, or earlier,
    /// than requested). Bytes below it come from the original flow; live
    /// pieces wholly below it are cancelled, and so are pieces it overtook
    /// in part when re-fetching the overtaken bytes would take longer than a
    /// new request's round trip (their tail goes back to the pool, first in
    /// delivery order).
    pub fn set_cut(&mut self, actual: u64, now: Duration) -> Result<(), PlanError> {
        let CutState::Pending { planned } = self.cut else {
            return Err(PlanError::NoCutPending);
        };
        if actual < self.body.start || actual > self.body.end {
            return Err(PlanError::CutOutOfRange {
                cut: actual,
                start: self.body.start,
                end: self.body.end,
            });
        }
        self.cut = CutState::Set(actual);
        if let Some(planned) = planned
            && actual < planned
        {
            self.orphan(actual..planned);
        }
        self.filled.insert(self.body.start..actual);
        // Pieces the cut overtook in part: cancel them and let their tail be
        // requested afresh when fetching the overtaken bytes again would take
        // longer than a new request's round trip.
        let overtaken: Vec<PieceId> = self
            .pieces
            .iter()
            .filter(|(_, p)| {
                let un = p.unreceived();
                un.start < actual
                    && actual < un.end
                    && self.sources.get(p.source.0 as usize).is_some_and(|s| {
                        let rate = self.effective_rate(s, now);
                        rate > 0.0 && (actual - un.start) as f64 / rate > s.spec.rtt.as_secs_f64()
                    })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in overtaken {
            if let Some(p) = self.pieces.get(&id) {
                let (source, range) = (p.source, p.range.clone());
                self.finish_piece(id);
                self.stats.pieces_cancelled += 1;
                self.orphan(actual..range.end);
                self.events.push_back(PlanEvent::Cancel {
                    piece: id,
                    source,
                    range,
                });
            }
        }
        self.prop.chunks.retain_mut(|c| {
            c.range.start = c.range.start.max(actual);
            c.range.start < c.range.end
        });
        if let Some(n) = self.prop.next_round.as_mut() {
            *n = (*n).max(actual);
        }
        self.cancel_obsolete(now);
        self.check_complete();
        Ok(())
    }

    /// The delivery cursor: every byte below `offset` was handed to the
    /// client (passed through before the cut, injected after). Monotone;
    /// smaller values are ignored. Before the cut this also measures the
    /// original flow's rate.
    pub fn on_delivered(&mut self, offset: u64, now: Duration) {
        let offset = offset.min(self.body.end);
        if offset <= self.cursor {
            return;
        }
        let delta = offset - self.cursor;
        self.cursor = offset;
        if matches!(self.cut, CutState::Pending { .. })
            && let Some(o) = self.original
            && let Some(s) = self.sources.get_mut(o.0 as usize)
        {
            s.est.on_bytes(delta, now);
            s.quiet_since = now;
        }
    }

    /// The next request for `source`, if it has a free request slot and the
    /// policy has something for it. Call it for every source with a free
    /// slot after every input, until it returns `None`.
    pub fn next_assignment(&mut self, source: SourceId, now: Duration) -> Option<Assignment> {
        self.refresh_backoff(source, now);
        if matches!(self.cut, CutState::Pending { planned: None }) {
            self.requested_cut(now)?;
        }
        let s = self.sources.get(source.0 as usize)?;
        let depth = if s.probation { 1 } else { self.depth_of(s) };
        if s.state != SourceState::Active
            || s.spec.kind == SourceKind::OriginalFlow
            || s.outstanding.len() >= depth
            || self.is_complete()
        {
            return None;
        }
        if s.spec.kind == SourceKind::LocalFetcher && matches!(self.cut, CutState::Pending { .. }) {
            return None;
        }
        let pick = match self.config.policy {
            Policy::Dynamic => self.dynamic_pick(source, now),
            Policy::Proportional => self.proportional_pick(source),
        }?;
        Some(self.assign(source, pick.0, pick.1, now))
    }

    /// `len` more bytes of `piece` arrived, in order (a piece is one HTTP
    /// Range response streamed front to back). The piece completes when its
    /// last byte is reported.
    pub fn on_piece_data(
        &mut self,
        piece: PieceId,
        len: u64,
        now: Duration,
    ) -> Result<(), PlanError> {
        let p = self
            .pieces
            .get_mut(&piece)
            .ok_or(PlanError::UnknownPiece(piece))?;
        let reported = p.received.saturating_add(len);
        if reported > p.len() {
            return Err(PlanError::Overrun {
                piece,
                len: p.len(),
                reported,
            });
        }
        if len == 0 {
            return Ok(());
        }
        let new = p.range.start + p.received..p.range.start + reported;
        p.received = reported;
        let done = reported == p.len();
        let sid = p.source;
        let already = self.filled.covered_in(&new);
        self.filled.insert(new);
        self.stats.bytes_received += len;
        self.stats.redundant_bytes += already;
        if let Some(s) = self.sources.get_mut(sid.0 as usize) {
            s.est.on_bytes(len, now);
            s.quiet_since = now;
            s.consecutive_failures = 0;
            s.report_bytes = 0.8 * s.report_bytes + 0.2 * len as f64;
            s.carried_silence = Duration::ZERO;
            s.stalls_in_a_row = 0;
            s.probation = false;
            s.bytes_received += len;
        }
        if done {
            self.finish_piece(piece);
        }
        self.cancel_obsolete(now);
        self.check_complete();
        Ok(())
    }

    /// The source says `piece` is finished. Idempotent: an unknown piece
    /// (already completed by its last byte, or cancelled) is fine. A piece
    /// that is still short is treated as failed.
    pub fn on_piece_done(&mut self, piece: PieceId, now: Duration) -> Result<(), PlanError> {
        match self.pieces.get(&piece) {
            None => Ok(()),
            Some(p) if p.remaining() == 0 => {
                self.finish_piece(piece);
                Ok(())
            }
            Some(_) => self.on_piece_failed(piece, now),
        }
    }

    /// The source could not deliver `piece` (HTTP error, validator changed
    /// on the neighbour, refused). Unreceived bytes go back to the pool.
    pub fn on_piece_failed(&mut self, piece: PieceId, now: Duration) -> Result<(), PlanError> {
        let p = self
            .pieces
            .remove(&piece)
            .ok_or(PlanError::UnknownPiece(piece))?;
        self.stats.pieces_failed += 1;
        self.orphan(p.unreceived());
        let max_fail = self.config.max_consecutive_failures;
        let mut stall = false;
        if let Some(s) = self.sources.get_mut(p.source.0 as usize) {
            s.outstanding.retain(|x| *x != piece);
            if s.outstanding.is_empty() {
                s.est.on_idle();
            }
            s.consecutive_failures += 1;
            if s.consecutive_failures >= max_fail && s.state == SourceState::Active {
                s.consecutive_failures = 0;
                stall = true;
            }
        }
        if stall {
            self.stall_source(p.source, now);
        }
        Ok(())
    }

    /// Run timers: stall detection and the end of stall backoffs.
    pub fn handle_timeout(&mut self, now: Duration) {
        for i in 0..self.sources.len() {
            let sid = SourceId(i as u32);
            self.refresh_backoff(sid, now);
            let s = &self.sources[i];
            if s.state == SourceState::Active
                && !s.outstanding.is_empty()
                && now.saturating_sub(s.quiet_since) >= self.config.stall_timeout
            {
                self.stall_source(sid, now);
            }
        }
    }

    /// Mark `sid` stalled: backoff (doubling), rate halved, pieces cancelled.
    fn stall_source(&mut self, sid: SourceId, now: Duration) {
        let base = self.config.stall_backoff;
        let cap = self.config.max_stall_backoff.max(base);
        let Some(s) = self.sources.get_mut(sid.0 as usize) else {
            return;
        };
        let doublings = s.stalls_in_a_row.min(16);
        let backoff = base.saturating_mul(1u32 << doublings).min(cap);
        s.stalls_in_a_row = s.stalls_in_a_row.saturating_add(1);
        s.probation = true;
        s.state = SourceState::Stalled {
            until: now.saturating_add(backoff),
        };
        s.est.penalise(0.5);
        self.stats.stalls += 1;
        self.events
            .push_back(PlanEvent::SourceStalled { source: sid });
        self.stall_pieces(sid);
    }

    /// When [`Planner::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.sources
            .iter()
            .filter_map(|s| match s.state {
                SourceState::Active if !s.outstanding.is_empty() => {
                    Some(s.quiet_since.saturating_add(self.config.stall_timeout))
                }
                SourceState::Stalled { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<PlanEvent> {
        self.events.pop_front()
    }

    /// Whether every byte of the body is covered.
    pub fn is_complete(&self) -> bool {
        match self.cut {
            CutState::Pending { .. } => false,
            _ => self.filled.contains_range(&self.body),
        }
    }

    /// The body range.
    pub fn body(&self) -> Range<u64> {
        self.body.clone()
    }

    /// The delivery cursor.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The actual cut, once set (the body start when there is no original flow).
    pub fn cut(&self) -> Option<u64> {
        match self.cut {
            CutState::NoOriginalFlow => Some(self.body.start),
            CutState::Set(c) => Some(c),
            CutState::Pending { .. } => None,
        }
    }

    /// Current rate estimate of a source.
    pub fn source_rate(&self, source: SourceId) -> Option<Rate> {
        self.sources
            .get(source.0 as usize)
            .map(|s| s.est.estimate())
    }

    /// Bytes received from a source.
    pub fn source_bytes(&self, source: SourceId) -> Option<u64> {
        self.sources
            .get(source.0 as usize)
            .map(|s| s.bytes_received)
    }

    /// Live pieces held by a source, in service order.
    pub fn source_pieces(&self, source: SourceId) -> Vec<PieceId> {
        self.sources
            .get(source.0 as usize)
            .map(|s| s.outstanding.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Piece bytes received ahead of the delivery cursor (what the caller
    /// buffers, counting overlapping copies once; bytes below the cut are
    /// the original flow's and are not counted).
    pub fn buffered(&self) -> u64 {
        let from = match self.cut {
            CutState::Set(c) => self.cursor.max(c),
            _ => self.cursor,
        };
        self.filled.covered_in(&(from..self.body.end))
    }

    /// Every source id, in the order they were added.
    pub fn source_ids(&self) -> impl Iterator<Item = SourceId> + '_ {
        (0..self.sources.len()).map(|i| SourceId(i as u32))
    }

    /// Live pieces (including duplicates): the planner's memory is
    /// proportional to this plus the fragments of received data ahead of
    /// the cursor, both bounded by the sources' pipeline depth.
    pub fn live_pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Bytes of the body after the cut that are neither received nor held
    /// by a live piece (0 once everything is assigned: a neighbour can then
    /// start planning its next delegated piece so its sources never idle).
    /// 0 while an original flow's cut is not planned yet.
    pub fn unassigned_bytes(&self) -> u64 {
        let floor = self.plan_floor().min(self.body.end);
        let r = floor..self.body.end;
        (r.end - r.start) - self.claimed().covered_in(&r)
    }

    /// Counters.
    pub fn stats(&self) -> &PlanStats {
        &self.stats
    }

    /// The configuration in force.
    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    // ---- internals -------------------------------------------------------

    fn source_mut(&mut self, id: SourceId) -> Result<&mut Source, PlanError> {
        self.sources
            .get_mut(id.0 as usize)
            .ok_or(PlanError::UnknownSource(id))
    }

    fn compute_cut(&self, _now: Duration) -> Option<u64> {
        let orig = self.original.and_then(|o| self.sources.get(o.0 as usize))?;
        let min_peer_rtt = self
            .sources
            .iter()
            .filter(|s| s.spec.kind == SourceKind::Peer && s.state == SourceState::Active)
            .map(|s| s.spec.rtt)
            .min()?;
        let lead_time = min_peer_rtt.saturating_add(self.config.cut_margin);
        let lead = orig
            .est
            .estimate()
            .bytes_in(lead_time)
            .max(self.config.min_cut_lead);
        let cut = self.cursor.saturating_add(lead);
        if cut.saturating_add(self.config.min_piece) >= self.body.end {
            return None;
        }
        Some(cut)
    }

    /// Lowest offset the planner may hand out.
    fn plan_floor(&self) -> u64 {
        let start = match self.cut {
            CutState::NoOriginalFlow => self.body.start,
            CutState::Pending { planned } => planned.unwrap_or(self.body.end),
            CutState::Set(c) => c,
        };
        start.max(self.cursor)
    }

    fn window_end(&self) -> u64 {
        self.cursor
            .saturating_add(self.config.window)
            .min(self.body.end)
    }

    fn refresh_backoff(&mut self, id: SourceId, now: Duration) {
        if let Some(s) = self.sources.get_mut(id.0 as usize)
            && let SourceState::Stalled { until } = s.state
            && now >= until
        {
            s.state = SourceState::Active;
            s.quiet_since = now;
        }
    }

    /// Filled bytes plus the unreceived parts of live pieces.
    fn claimed(&self) -> RangeSet {
        let mut c = self.filled.clone();
        for p in self.pieces.values() {
            c.insert(p.unreceived());
        }
        c
    }

    fn assign(
        &mut self,
        source: SourceId,
        range: Range<u64>,
        duplicate: bool,
        now: Duration,
    ) -> Assignment {
        let id = PieceId(self.next_piece);
        self.next_piece += 1;
        self.stats.pieces_assigned += 1;
        if duplicate {
            self.stats.duplicates_assigned += 1;
        }
        if let Some(s) = self.sources.get_mut(source.0 as usize) {
            if s.outstanding.is_empty() {
                // Silence a source carried when its last pieces were taken
                // over counts on: a dead source does not look fresh again.
                s.quiet_since = now
                    .saturating_add(s.spec.rtt)
                    .saturating_sub(s.carried_silence);
                s.carried_silence = Duration::ZERO;
            }
            s.outstanding.push_back(id);
        }
        self.pieces.insert(
            id,
            Piece {
                source,
                range: range.clone(),
                received: 0,
                assigned_at: now,
            },
        );
        Assignment {
            piece: id,
            source,
            range,
            duplicate,
        }
    }

    fn finish_piece(&mut self, piece: PieceId) {
        if let Some(p) = self.pieces.remove(&piece)
            && let Some(s) = self.sources.get_mut(p.source.0 as usize)
        {
            s.outstanding.retain(|x| *x != piece);
            if s.outstanding.is_empty() {
                s.est.on_idle();
            }
        }
    }

    /// Cancel every live piece whose unreceived bytes are all covered.
    /// A suspect holder whose piece another copy finished is stalled: it
    /// must not get fresh work just because its queue emptied.
    fn cancel_obsolete(&mut self, now: Duration) {
        let obsolete: Vec<PieceId> = self
            .pieces
            .iter()
            .filter(|(_, p)| self.filled.contains_range(&p.unreceived()))
            .map(|(id, _)| *id)
            .collect();
        let mut suspects = Vec::new();
        for id in obsolete {
            if let Some(p) = self.pieces.get(&id) {
                let (source, range) = (p.source, p.range.clone());
                if self
                    .sources
                    .get(source.0 as usize)
                    .is_some_and(|s| self.is_suspect(s, now))
                    && !suspects.contains(&source)
                {
                    suspects.push(source);
                }
                if let Some(s) = self.sources.get_mut(source.0 as usize) {
                    let silent = now.saturating_sub(s.quiet_since);
                    s.carried_silence = s.carried_silence.max(silent);
                }
                self.finish_piece(id);
                self.stats.pieces_cancelled += 1;
                self.events.push_back(PlanEvent::Cancel {
                    piece: id,
                    source,
                    range,
                });
            }
        }
        for source in suspects {
            self.stall_source(source, now);
        }
    }

    /// Cancel all live pieces of a stalled source; their bytes go back.
    fn stall_pieces(&mut self, source: SourceId) {
        let ids: Vec<PieceId> = match self.sources.get_mut(source.0 as usize) {
            Some(s) => {
                s.est.on_idle();
                s.outstanding.drain(..).collect()
            }
            None => return,
        };
        for id in ids {
            if let Some(p) = self.pieces.remove(&id) {
                self.stats.pieces_cancelled += 1;
                self.orphan(p.unreceived());
                self.events.push_back(PlanEvent::Cancel {
                    piece: id,
                    source,
                    range: p.range,
                });
            }
        }
        self.release_chunks(source);
    }

    /// Chunks the proportional policy had reserved for `source` are free.
    fn release_chunks(&mut self, source: SourceId) {
        for c in &mut self.prop.chunks {
            if c.owner == Some(source) {
                c.owner = None;
            }
        }
    }

    /// Bytes no live piece carries any more. The dynamic policy finds them
    /// as gaps; the proportional policy needs an ownerless chunk.
    fn orphan(&mut self, r: Range<u64>) {
        if r.start >= r.end || self.config.policy != Policy::Proportional {
            return;
        }
        let i = self
            .prop
            .chunks
            .partition_point(|c| c.range.start < r.start);
        self.prop.chunks.insert(
            i,
            Chunk {
                range: r,
                owner: None,
            },
        );
    }

    fn check_complete(&mut self) {
        if !self.complete_emitted && self.is_complete() {
            self.complete_emitted = true;
            self.events.push_back(PlanEvent::Complete);
        }
    }

    /// Pieces `s` may have outstanding (see [`SourceSpec::depth`]).
    fn depth_of(&self, s: &Source) -> usize {
        s.spec
            .depth
            .unwrap_or(self.config.pipeline_depth)
            .clamp(1, MAX_SOURCE_DEPTH)
    }

    /// A source's rate for planning: the estimate, decayed while the source
    /// is busy but silent past `silence_grace`.
    fn effective_rate(&self, s: &Source, now: Duration) -> f64 {
        let mut est = s.est.estimate().bytes_per_sec();
        if est <= 0.0 && s.est.samples() == 0 {
            // Unknown rate (no seed, nothing measured yet): probe with
            // min_piece-sized pieces.
            est = self.config.min_piece as f64
                / self.config.target_piece_time.as_secs_f64().max(1e-3);
        }
        if s.outstanding.is_empty() {
            return est;
        }
        let silent = now.saturating_sub(s.quiet_since).as_secs_f64();
        let grace = self.config.silence_grace.as_secs_f64() + 2.0 * self.report_gap(s);
        let excess = (silent - grace).max(0.0);
        est / (1.0 + excess / self.config.rate_time_constant.as_secs_f64().max(1e-3))
    }

    /// Seconds expected between two data reports of `s` at its estimated
    /// rate (a slow source reporting in large chunks is not silent).
    fn report_gap(&self, s: &Source) -> f64 {
        let est = s.est.estimate().bytes_per_sec();
        if est > 0.0 {
            (s.report_bytes / est).min(60.0)
        } else {
            0.0
        }
    }

    /// Busy and silent for longer than `suspect_silence` (plus four
    /// expected report gaps): probably dying.
    fn is_suspect(&self, s: &Source, now: Duration) -> bool {
        if s.outstanding.is_empty() || s.state != SourceState::Active {
            return false;
        }
        let silent = now.saturating_sub(s.quiet_since).as_secs_f64();
        silent > self.config.suspect_silence.as_secs_f64() + 4.0 * self.report_gap(s)
    }

    /// Paths `s` fetches on in parallel: a source deeper than the pipeline
    /// depth (a relay: its own uplink and its sub-delegates') fetches each
    /// piece whole on one of `depth / pipeline_depth` paths, at that part
    /// of its rate.
    fn lanes_of(&self, s: &Source) -> usize {
        (self.depth_of(s) / self.config.pipeline_depth.max(1)).clamp(1, MAX_SOURCE_DEPTH)
    }

    /// The expected schedule of `s`'s outstanding pieces: each, in the
    /// order the source serves them, on the lane that frees first, at the
    /// lane's part of the rate and not before its request's round trip.
    /// Returns when each lane frees (seconds from `now`; unused lanes 0)
    /// and, for `piece`, when it is expected to end.
    fn lane_schedule(
        &self,
        s: &Source,
        now: Duration,
        piece: Option<PieceId>,
    ) -> ([f64; MAX_SOURCE_DEPTH], Option<f64>) {
        let lanes = self.lanes_of(s);
        let rate = self.effective_rate(s, now) / lanes as f64;
        let mut free = [0.0f64; MAX_SOURCE_DEPTH];
        let mut eta = None;
        for id in &s.outstanding {
            let Some(p) = self.pieces.get(id) else {
                continue;
            };
            let (lane, at) = earliest(&free[..lanes]);
            let start = if p.received == 0 {
                let first_byte = p
                    .assigned_at
                    .saturating_add(s.spec.rtt)
                    .saturating_sub(now)
                    .as_secs_f64();
                at.max(first_byte)
            } else {
                at
            };
            let end = if p.remaining() == 0 {
                start
            } else if rate > 0.0 {
                start + p.remaining() as f64 / rate
            } else {
                f64::INFINITY
            };
            if let Some(f) = free.get_mut(lane) {
                *f = end;
            }
            if piece == Some(*id) {
                eta = Some(end);
            }
        }
        (free, eta)
    }

    /// Seconds from `now` until a request sent now to `s` would start
    /// delivering: when its first lane frees, and at least one RTT.
    fn ready_in(&self, s: &Source, now: Duration) -> f64 {
        let (free, _) = self.lane_schedule(s, now, None);
        earliest(&free[..self.lanes_of(s)])
            .1
            .max(s.spec.rtt.as_secs_f64())
    }

    fn can_take_pieces(&self, s: &Source) -> bool {
        s.state == SourceState::Active
            && match s.spec.kind {
                SourceKind::OriginalFlow => false,
                SourceKind::LocalFetcher => !matches!(self.cut, CutState::Pending { .. }),
                SourceKind::Peer => true,
            }
    }

    /// Tail balancing ("water filling"): the share of the `remaining`
    /// unclaimed bytes that `source` should take so that all sources finish
    /// together. `None` (or <= 0) means the source would finish after the
    /// others could have fetched everything: do not delegate to it.
    fn fair_share(&self, source: SourceId, remaining: u64, now: Duration) -> Option<f64> {
        // Every lane of every source is a server of its own (a relay's
        // piece runs on one lane, at that lane's rate); this source's next
        // piece goes to its lane that frees first.
        let mut rs: Vec<(f64, f64, bool)> = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if !self.can_take_pieces(s) {
                continue;
            }
            let lanes = self.lanes_of(s);
            let rate = self.effective_rate(s, now) / lanes as f64;
            let rtt = s.spec.rtt.as_secs_f64();
            let (free, _) = self.lane_schedule(s, now, None);
            let (mine, _) = earliest(&free[..lanes]);
            for (lane, f) in free[..lanes].iter().enumerate() {
                rs.push((f.max(rtt), rate, i == source.0 as usize && lane == mine));
            }
        }
        rs.retain(|(a, r, _)| a.is_finite() && *r > 0.0);
        rs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let me = rs.iter().find(|x| x.2).copied()?;
        // Find the level t with sum_i r_i * max(0, t - a_i) = remaining.
        let mut bytes = remaining as f64;
        let mut rate_sum = 0.0;
        let mut level = f64::INFINITY;
        for (i, (a, r, _)) in rs.iter().enumerate() {
            rate_sum += r;
            let next_a = rs.get(i + 1).map_or(f64::INFINITY, |x| x.0);
            let room = rate_sum * (next_a - a);
            if bytes <= room {
                level = a + bytes / rate_sum;
                break;
            }
            bytes -= room;
        }
        if !level.is_finite() {
            return None;
        }
        Some(me.1 * (level - me.0))
    }

    fn dynamic_pick(&mut self, source: SourceId, now: Duration) -> Option<(Range<u64>, bool)> {
        // A suspect gets nothing more: its silent pieces are enough.
        if self
            .sources
            .get(source.0 as usize)
            .is_none_or(|s| self.is_suspect(s, now))
        {
            return None;
        }
        // A silent (probably dying) holder's pieces first: they block
        // in-order delivery long before the window fills.
        if let Some(dup) = self.endgame_pick(source, now, true) {
            return Some(dup);
        }
        let floor = self.plan_floor();
        let hi = self.window_end();
        let claimed = self.claimed();
        let s = self.sources.get(source.0 as usize)?;
        let gap_start = claimed.first_missing(floor);
        if gap_start < hi {
            let gap_end = claimed
                .next_present(gap_start)
                .unwrap_or(self.body.end)
                .min(hi);
            let rate = self.effective_rate(s, now);
            // A source working on more pieces at once than the pipeline
            // depth (a relay) splits its rate over them.
            let depth = self.depth_of(s);
            let split = self.config.pipeline_depth.max(1) as f64 / depth as f64;
            let adaptive = (rate * split * self.config.target_piece_time.as_secs_f64()) as u64;
            // A source's outstanding requests should not need more than its
            // rate share of the window, or the window fills with the slow
            // ones' pieces and stalls in-order delivery.
            let total_rate: f64 = self
                .sources
                .iter()
                .filter(|x| self.can_take_pieces(x))
                .map(|x| self.effective_rate(x, now))
                .sum();
            let window_share = if total_rate > 0.0 {
                (self.config.window as f64 * rate / total_rate / depth as f64) as u64
            } else {
                self.config.max_piece
            };
            let adaptive = if s.probation {
                self.config.min_piece
            } else {
                adaptive
                    .min(window_share)
                    .clamp(self.config.min_piece, self.config.max_piece)
            };
            let remaining = (self.body.end - floor) - claimed.covered_in(&(floor..self.body.end));
            let share = match self.fair_share(source, remaining, now) {
                Some(x) if x > 0.0 => x as u64,
                _ => {
                    self.stats.declined += 1;
                    return None;
                }
            };
            let mut size = adaptive.min(share.max(self.config.min_tail_piece));
            let gap_len = gap_end - gap_start;
            // Do not leave a sliver behind in the gap: whoever fetched it
            // would pay a whole request round trip for it, so anything this
            // source delivers within one round trip is cheaper taken now
            // (measured in the lab: 48 KB left at the end of 8 MiB became
            // two pieces and cost ~90 ms).
            // A gap cut short by the window's edge is not a sliver: the
            // window moves on and the bytes beyond it follow.
            let sliver = if gap_end < hi || gap_end == self.body.end {
                let lane_rate = rate / self.lanes_of(s) as f64;
                ((lane_rate * s.spec.rtt.as_secs_f64()) as u64).max(self.config.min_tail_piece)
            } else {
                self.config.min_tail_piece
            };
            if gap_len.saturating_sub(size) < sliver {
                size = gap_len;
            }
            let size = size.min(gap_len);
            return Some((gap_start..gap_start + size, false));
        }
        self.endgame_pick(source, now, false)
    }

    /// Nothing unclaimed in the window: duplicate, in delivery order, the
    /// first live piece of another source that this source is expected to
    /// finish at least `endgame_margin` earlier.
    fn endgame_pick(
        &self,
        source: SourceId,
        now: Duration,
        only_suspects: bool,
    ) -> Option<(Range<u64>, bool)> {
        let me = self.sources.get(source.0 as usize)?;
        let my_rate = self.effective_rate(me, now);
        if my_rate <= 0.0 {
            return None;
        }
        let my_ready = self.ready_in(me, now);
        let margin = self.config.endgame_margin.as_secs_f64();
        let mine: Vec<Range<u64>> = me
            .outstanding
            .iter()
            .filter_map(|id| self.pieces.get(id))
            .map(Piece::unreceived)
            .collect();
        let mut candidates: Vec<(&PieceId, &Piece)> = self.pieces.iter().collect();
        candidates.sort_by_key(|(_, p)| p.unreceived().start);
        for (id, p) in candidates {
            if p.source == source || p.remaining() == 0 {
                continue;
            }
            if only_suspects
                && !self
                    .sources
                    .get(p.source.0 as usize)
                    .is_some_and(|h| self.is_suspect(h, now))
            {
                continue;
            }
            let tail = p.unreceived();
            if only_suspects && tail.start >= self.window_end() {
                continue;
            }
            if mine.iter().any(|m| overlaps(m, &tail)) {
                continue;
            }
            let copies = self
                .pieces
                .values()
                .filter(|q| overlaps(&q.unreceived(), &tail))
                .count();
            if copies >= self.config.max_copies {
                continue;
            }
            if only_suspects {
                // The holder is probably dying: any live source does better.
                return Some((tail, true));
            }
            let holder_eta = self.holder_eta(*id, p, now);
            let my_eta = my_ready + p.remaining() as f64 * self.lanes_of(me) as f64 / my_rate;
            if my_eta + margin < holder_eta {
                return Some((tail, true));
            }
        }
        None
    }

    /// Seconds from `now` until the holder of `p` is expected to finish it.
    fn holder_eta(&self, piece: PieceId, p: &Piece, now: Duration) -> f64 {
        self.sources
            .get(p.source.0 as usize)
            .and_then(|h| self.lane_schedule(h, now, Some(piece)).1)
            .unwrap_or(f64::INFINITY)
    }

    fn proportional_pick(&mut self, source: SourceId) -> Option<(Range<u64>, bool)> {
        let hi = self.cursor.saturating_add(self.config.window);
        self.generate_rounds();
        // Chunks may have been overtaken by received bytes (a later cut):
        // keep only their still-missing parts.
        let filled = &self.filled;
        let mut clipped = Vec::with_capacity(self.prop.chunks.len());
        for c in self.prop.chunks.drain(..) {
            let mut at = c.range.start;
            while at < c.range.end {
                let start = filled.first_missing(at);
                if start >= c.range.end {
                    break;
                }
                let end = filled
                    .next_present(start)
                    .unwrap_or(u64::MAX)
                    .min(c.range.end);
                clipped.push(Chunk {
                    range: start..end,
                    owner: c.owner,
                });
                at = end;
            }
        }
        self.prop.chunks = clipped;
        // Own chunk first (in body order), then any ownerless one.
        let idx = self
            .prop
            .chunks
            .iter()
            .position(|c| c.owner == Some(source) && c.range.end <= hi)
            .or_else(|| {
                self.prop
                    .chunks
                    .iter()
                    .position(|c| c.owner.is_none() && c.range.start < hi)
            })?;
        let mut c = self.prop.chunks.remove(idx);
        if c.range.end > hi {
            // Ownerless chunk straddling the window end: take what fits.
            let rest = hi..c.range.end;
            c.range.end = hi;
            self.prop.chunks.insert(
                idx,
                Chunk {
                    range: rest,
                    owner: None,
                },
            );
        }
        Some((c.range, false))
    }

    /// Carve rounds of `window / 2` while they fit in the window.
    fn generate_rounds(&mut self) {
        let floor = match self.cut {
            CutState::NoOriginalFlow => self.body.start,
            CutState::Pending { planned } => match planned {
                Some(p) => p,
                None => return,
            },
            CutState::Set(c) => c,
        };
        let round_len = (self.config.window / 2).max(1);
        let hi = self.cursor.saturating_add(self.config.window);
        loop {
            let start = *self.prop.next_round.get_or_insert(floor);
            if start >= self.body.end || start >= hi {
                return;
            }
            let end = start.saturating_add(round_len).min(self.body.end);
            // Local fetcher first (it fetches "the remainder"), then peers.
            let mut members: Vec<(SourceId, f64)> = self
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.state == SourceState::Active && s.spec.kind != SourceKind::OriginalFlow
                })
                .map(|(i, s)| (SourceId(i as u32), s.spec.useful_rate().bytes_per_sec()))
                .collect();
            members.sort_by_key(|(id, _)| {
                (
                    self.sources[id.0 as usize].spec.kind != SourceKind::LocalFetcher,
                    id.0,
                )
            });
            let total: f64 = members.iter().map(|m| m.1).sum();
            let len = end - start;
            let mut at = start;
            if total > 0.0 {
                let mut shares: Vec<u64> = members
                    .iter()
                    .map(|m| (len as f64 * m.1 / total).floor() as u64)
                    .collect();
                // The rounding remainder goes to the first member (local).
                let rest = len.saturating_sub(shares.iter().sum());
                if let Some(first) = shares.first_mut() {
                    *first += rest;
                }
                for ((id, _), share) in members.iter().zip(shares) {
                    let share = share.min(end - at);
                    if share > 0 {
                        self.prop.chunks.push(Chunk {
                            range: at..at + share,
                            owner: Some(*id),
                        });
                        at += share;
                    }
                }
            }
            if at < end {
                self.prop.chunks.push(Chunk {
                    range: at..end,
                    owner: None,
                });
            }
            self.prop.chunks.sort_by_key(|c| c.range.start);
            self.prop.next_round = Some(end);
        }
    }
}

/// The index and value of the smallest of `v` (0 and 0.0 if empty).
fn earliest(v: &[f64]) -> (usize, f64) {
    v.iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0))
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}
