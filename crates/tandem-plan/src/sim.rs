//! Deterministic discrete-event simulations of the planner and of session
//! negotiation. No clock, no randomness except a seeded SplitMix64.
//!
//! # Download model ([`run_download`])
//!
//! * Router A's uplink carries the client's original flow from offset 0 at
//!   A's uplink rate (already at full rate when the response head is seen,
//!   t = 0). At t = 0 the planner is asked for the cut; the splice engine's
//!   actual cut is `max(requested, bytes in flight)` where the bytes in
//!   flight are one WAN round trip at A's rate. The original flow delivers
//!   `0..actual_cut` and then frees A's uplink.
//! * Every source serves its requests in FIFO order at its rate (a fluid
//!   server): a request sent at `t` can deliver from `t + rtt`, and not
//!   before the previous request finished, so pipelined requests hide the
//!   RTT. A's local fetcher cannot deliver before the original flow ended.
//!   A source that was idle for more than 200 ms (or never busy) pays a
//!   slow-start ramp: initial window 10 x 1448 bytes doubling every RTT; the
//!   ramp is charged as the time lost against full rate.
//! * A neighbour's rate is `min(link, uplink x factor(t) + what its own
//!   neighbours bring)`; neighbours behind it are aggregated (fluid model,
//!   each link independent, one extra link round trip of latency per hop).
//!   A neighbour that dies delivers nothing more; the planner finds out by
//!   its stall timer.
//! * With [`Scenario::nested`], a neighbour with neighbours of its own is a
//!   relay instead: it plans each piece A asks of it with its own
//!   [`Planner`] (its uplink and its neighbours as FIFO servers), forwards
//!   the bytes to A in order over its link, and starts planning the next
//!   piece once the current plan has nothing left to assign.
//! * Bytes reach the planner in reports of `report_chunk` bytes. A delivers
//!   to the client in order, instantly (LAN): the delivery cursor is the
//!   contiguous prefix of received bytes.
//! * The ideal is the time at which the integral of the summed useful rates
//!   (A's uplink + each neighbour's `min(link, ...)`) reaches the body size.
//!
//! # Negotiation model ([`run_mesh`])
//!
//! A random geometric mesh; the initiator floods `Negotiate(key, depth)`
//! with per-link latency; each router commits through its own
//! [`SessionTable`], answers `Accept`/`Refuse`, and forwards while under the
//! depth limit. Then the initiator cancels and the cancel is forwarded down
//! the recorded sub-delegates.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Range;
use std::time::Duration;

use crate::advert::{AdvertRule, AdvertTree};
use crate::planner::{PieceId, PlanEvent, Planner, PlannerConfig, Policy, SourceId, SourceSpec};
use crate::ranges::RangeSet;
use crate::rate::{Rate, secs};
use crate::session::{SessionKey, SessionLimits, SessionTable};

/// A neighbour of A in a download scenario.
#[derive(Debug, Clone)]
pub struct Neighbour {
    /// Its uplink rate.
    pub uplink: Rate,
    /// Rate of the inter-router link A–neighbour.
    pub link: Rate,
    /// One-way latency of that link.
    pub link_one_way: Duration,
    /// Routers behind it (multi-hop): the link rate to each and its subtree.
    pub behind: Vec<(Rate, AdvertTree)>,
    /// At `fraction` of the static ideal time, its uplink is multiplied by
    /// `factor`.
    pub rate_change: Option<(f64, f64)>,
    /// At this fraction of the static ideal time it dies.
    pub dies_at: Option<f64>,
}

impl Neighbour {
    /// A one-hop neighbour with `uplink_mbit` behind a `link_mbit` link of
    /// 2 ms one way.
    pub fn new(uplink_mbit: f64, link_mbit: f64) -> Self {
        Neighbour {
            uplink: Rate::from_mbit(uplink_mbit),
            link: Rate::from_mbit(link_mbit),
            link_one_way: Duration::from_millis(2),
            behind: Vec::new(),
            rate_change: None,
            dies_at: None,
        }
    }

    fn tree(&self) -> AdvertTree {
        AdvertTree {
            own: self.uplink,
            children: self.behind.clone(),
        }
    }

    /// What it really delivers to A before any change.
    pub fn deliverable(&self) -> Rate {
        self.tree().deliverable(Some(self.link))
    }

    /// What it advertises to A under `rule`.
    pub fn advertised(&self, rule: AdvertRule) -> Rate {
        self.tree().advertise(rule, Some(self.link))
    }

    fn hops(&self) -> u32 {
        fn depth(t: &AdvertTree) -> u32 {
            t.children
                .iter()
                .map(|(_, c)| 1 + depth(c))
                .max()
                .unwrap_or(0)
        }
        1 + depth(&self.tree())
    }
}

/// One download scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name for the table.
    pub name: String,
    /// Body size in bytes.
    pub size: u64,
    /// One-way WAN delay (every router to the origin).
    pub wan_one_way: Duration,
    /// A's uplink rate.
    pub a_uplink: Rate,
    /// A's neighbours.
    pub neighbours: Vec<Neighbour>,
    /// Model the slow-start ramp.
    pub slow_start: bool,
    /// Granularity of data reports to the planner.
    pub report_chunk: u64,
    /// Whether the client's original flow carries the body head (router A).
    /// `false` models a neighbour planning a delegated range with its own
    /// uplink and neighbours: no cut, the local fetcher starts at once.
    pub original_flow: bool,
    /// Simulate neighbours that have neighbours of their own as relays
    /// running their own planner per piece, instead of aggregating them.
    pub nested: bool,
    /// Simulate neighbours that have neighbours of their own the way the
    /// daemon relays (tandem-delegate): each piece A asks of it is fetched
    /// whole by one of its sources (its own uplink or one neighbour behind
    /// it), chosen by this rule; A sees it as a source of depth
    /// `pipeline_depth x sources`. Takes precedence over `nested`.
    pub whole_pieces: Option<RelayPlacement>,
    /// Bytes the splice engine overshoots the requested cut by (the actual
    /// cut is later than asked), on top of the bytes in flight.
    pub cut_overshoot: u64,
    /// Time from the cut request to the engine reporting the actual cut
    /// (peers may fetch from the requested cut meanwhile).
    pub cut_delay: Duration,
    /// All inter-router links at A share one channel of this capacity
    /// (802.11 airtime): transmitting neighbours split it in proportion to
    /// their rates. `None`: independent links. Relays are not counted.
    pub shared_channel: Option<Rate>,
}

impl Scenario {
    /// A scenario with 20 Mbit/s at A, 10 ms one-way WAN delay, slow start
    /// and 64 KiB reports.
    pub fn new(name: &str, size: u64, neighbours: Vec<Neighbour>) -> Self {
        Scenario {
            name: name.to_string(),
            size,
            wan_one_way: Duration::from_millis(10),
            a_uplink: Rate::from_mbit(20.0),
            neighbours,
            slow_start: true,
            report_chunk: 64 << 10,
            original_flow: true,
            nested: false,
            whole_pieces: None,
            cut_overshoot: 0,
            cut_delay: Duration::ZERO,
            shared_channel: None,
        }
    }

    /// Size / sum of useful rates, before any change.
    pub fn static_ideal(&self) -> Duration {
        let peers: Rate = self.neighbours.iter().map(Neighbour::deliverable).sum();
        let total = self.a_uplink + peers.capped_by(self.shared_channel);
        total.time_for(self.size).unwrap_or(Duration::MAX)
    }

    fn neighbour_rate(&self, i: usize, t: Duration) -> f64 {
        let n = &self.neighbours[i];
        let ideal = self.static_ideal().as_secs_f64();
        if let Some(f) = n.dies_at
            && t.as_secs_f64() >= f * ideal
        {
            return 0.0;
        }
        let factor = match n.rate_change {
            Some((f, x)) if t.as_secs_f64() >= f * ideal => x,
            _ => 1.0,
        };
        let behind: Rate = n.behind.iter().map(|(l, c)| c.deliverable(Some(*l))).sum();
        (Rate::from_bytes_per_sec(n.uplink.bytes_per_sec() * factor) + behind)
            .min(n.link)
            .bytes_per_sec()
    }

    /// Times at which some neighbour's rate changes.
    fn change_times(&self) -> Vec<Duration> {
        let ideal = self.static_ideal().as_secs_f64();
        let mut v: Vec<Duration> = self
            .neighbours
            .iter()
            .flat_map(|n| {
                n.rate_change
                    .map(|(f, _)| f)
                    .into_iter()
                    .chain(n.dies_at)
                    .map(|f| secs(f * ideal))
            })
            .collect();
        v.sort();
        v
    }

    /// The ideal completion time with the rates as they change.
    pub fn ideal(&self) -> Duration {
        let mut t = Duration::ZERO;
        let mut left = self.size as f64;
        let mut marks = self.change_times();
        marks.push(Duration::MAX);
        for m in marks {
            let peers: f64 = (0..self.neighbours.len())
                .map(|i| self.neighbour_rate(i, t))
                .sum();
            let peers = match self.shared_channel {
                Some(c) => peers.min(c.bytes_per_sec()),
                None => peers,
            };
            let cap = self.a_uplink.bytes_per_sec() + peers;
            if m == Duration::MAX {
                return t + secs(left / cap);
            }
            let span = m.saturating_sub(t).as_secs_f64();
            if cap * span >= left {
                return t + secs(left / cap);
            }
            left -= cap * span;
            t = m;
        }
        t
    }
}

/// Outcome of one simulated download.
#[derive(Debug, Clone)]
pub struct DownloadResult {
    /// Completion time (client has every byte), `None` if the simulation hit
    /// its time limit.
    pub completion: Option<Duration>,
    /// The ideal.
    pub ideal: Duration,
    /// Requested cut.
    pub cut_requested: Option<u64>,
    /// Actual cut.
    pub cut_actual: Option<u64>,
    /// Most bytes buffered ahead of the delivery cursor at A.
    pub peak_buffer: u64,
    /// Bytes received per source (local first, then neighbours).
    pub bytes_by_source: Vec<u64>,
    /// Planner counters.
    pub stats: crate::planner::PlanStats,
    /// Simulation events processed.
    pub steps: u64,
    /// Most live pieces the planner held at once.
    pub max_live_pieces: usize,
    /// Sub-plans run by relays (nested multi-hop only).
    pub relay_sub_plans: u64,
}

impl DownloadResult {
    /// ideal / completion (0 if it did not complete).
    pub fn efficiency(&self) -> f64 {
        match self.completion {
            Some(c) if !c.is_zero() => self.ideal.as_secs_f64() / c.as_secs_f64(),
            _ => 0.0,
        }
    }
}

#[derive(Debug)]
struct Req {
    /// Which planner the piece belongs to (a relay runs several).
    tag: u64,
    piece: PieceId,
    start: u64,
    len: u64,
    reported: u64,
    progress: f64,
    ready_at: Duration,
}

/// Bytes a server reports for one piece.
#[derive(Debug, Clone, Copy)]
struct Report {
    tag: u64,
    piece: PieceId,
    /// Absolute offset of the first reported byte.
    start: u64,
    n: u64,
    done: bool,
}

/// A FIFO fluid server: A's local fetcher, a one-hop neighbour, or one of a
/// relay's own sources.
#[derive(Debug)]
struct Fifo {
    id: SourceId,
    rtt: Duration,
    wan_rtt: Duration,
    queue: VecDeque<Req>,
    idle_since: Option<Duration>,
    /// Slow-start penalty still to be served by the head request.
    ramp_left: Duration,
}

impl Fifo {
    fn new(id: SourceId, rtt: Duration, wan_rtt: Duration) -> Self {
        Fifo {
            id,
            rtt,
            wan_rtt,
            queue: VecDeque::new(),
            idle_since: None,
            ramp_left: Duration::ZERO,
        }
    }

    /// Queue a request sent at `t`; it cannot deliver before `floor`.
    /// `slow_start_rate`: charge the ramp at this rate if the source is cold.
    fn enqueue(
        &mut self,
        tag: u64,
        piece: PieceId,
        range: Range<u64>,
        t: Duration,
        floor: Duration,
        slow_start_rate: Option<f64>,
    ) {
        if self.queue.is_empty() {
            let cold = self
                .idle_since
                .is_none_or(|since| t.saturating_sub(since) > Duration::from_millis(200));
            if let Some(r) = slow_start_rate
                && cold
            {
                self.ramp_left = slow_start_penalty(r, self.wan_rtt);
            }
        }
        self.queue.push_back(Req {
            tag,
            piece,
            start: range.start,
            len: range.end - range.start,
            reported: 0,
            progress: 0.0,
            ready_at: (t + self.rtt).max(floor),
        });
    }

    fn cancel(&mut self, tag: u64, piece: PieceId, t: Duration) {
        self.queue.retain(|r| r.tag != tag || r.piece != piece);
        if self.queue.is_empty() {
            self.idle_since = Some(t);
        }
    }

    fn clear_tag(&mut self, tag: u64, t: Duration) {
        let before = self.queue.len();
        self.queue.retain(|r| r.tag != tag);
        if before > 0 && self.queue.is_empty() {
            self.idle_since = Some(t);
        }
    }

    fn next_event(&self, t: Duration, rate: f64, chunk: u64) -> Duration {
        let Some(h) = self.queue.front() else {
            return Duration::MAX;
        };
        if rate <= 0.0 {
            return Duration::MAX;
        }
        let start = t.max(h.ready_at) + self.ramp_left;
        let boundary = (h.reported + chunk).min(h.len) as f64;
        start + secs((boundary - h.progress).max(0.0) / rate)
    }

    fn advance(&mut self, t: Duration, to: Duration, rate: f64) {
        let Some(h) = self.queue.front_mut() else {
            return;
        };
        let from = t.max(h.ready_at);
        if to <= from || rate <= 0.0 {
            return;
        }
        let mut dt = to - from;
        if !self.ramp_left.is_zero() {
            let used = dt.min(self.ramp_left);
            self.ramp_left -= used;
            dt -= used;
        }
        h.progress = (h.progress + rate * dt.as_secs_f64()).min(h.len as f64);
    }

    fn reports(&mut self, t: Duration, chunk: u64, out: &mut Vec<Report>) {
        while let Some(h) = self.queue.front_mut() {
            let boundary = (h.reported + chunk).min(h.len);
            if h.progress + 0.5 < boundary as f64 {
                break;
            }
            let n = boundary - h.reported;
            out.push(Report {
                tag: h.tag,
                piece: h.piece,
                start: h.start + h.reported,
                n,
                done: boundary == h.len,
            });
            h.reported = boundary;
            h.progress = h.progress.max(boundary as f64);
            if boundary == h.len {
                self.queue.pop_front();
                if self.queue.is_empty() {
                    self.idle_since = Some(t);
                }
            }
        }
    }
}

/// One child of a relay: a neighbour of the neighbour.
#[derive(Debug, Clone)]
struct RelayChild {
    rate: f64,
    advertised: Rate,
    link: Rate,
    one_way: Duration,
}

/// A piece of A's being forwarded by a relay.
#[derive(Debug)]
struct Forward {
    piece: PieceId,
    range: Range<u64>,
    received: RangeSet,
    forwarded: f64,
    reported: u64,
}

/// A neighbour that plans each piece A asks of it with its own planner over
/// its own uplink and its neighbours (no original flow, no cut), and
/// forwards the bytes to A in order over its link. The next piece's plan
/// starts as soon as the current one has nothing left to assign.
#[derive(Debug)]
struct Relay {
    id: SourceId,
    link: f64,
    link_one_way: Duration,
    own: f64,
    children: Vec<RelayChild>,
    config: PlannerConfig,
    slow_start: bool,
    /// A's requests not started yet, with their arrival time at the relay.
    pending: VecDeque<(PieceId, Range<u64>, Duration)>,
    /// Pieces being fetched, each with its own planner (tag, A's piece,
    /// planner); at most two: the next one starts once the current one has
    /// nothing left to assign, so the relay's sources never idle between
    /// pieces.
    subs: VecDeque<(u64, PieceId, Planner)>,
    next_tag: u64,
    /// Pieces fetched or being fetched, in forwarding order.
    forwards: VecDeque<Forward>,
    /// The relay's own sources, persistent across pieces (index = the sub
    /// planners' source id).
    fifos: Vec<Fifo>,
    sub_plans: u64,
}

impl Relay {
    fn rate(&self, i: usize) -> f64 {
        if i == 0 {
            self.own
        } else {
            self.children.get(i - 1).map_or(0.0, |c| c.rate)
        }
    }

    fn enqueue(&mut self, piece: PieceId, range: Range<u64>, t: Duration) {
        self.pending
            .push_back((piece, range, t + self.link_one_way));
    }

    fn cancel(&mut self, piece: PieceId, t: Duration) {
        self.pending.retain(|p| p.0 != piece);
        self.forwards.retain(|f| f.piece != piece);
        if let Some(i) = self.subs.iter().position(|s| s.1 == piece) {
            let tag = self.subs[i].0;
            self.subs.remove(i);
            for f in &mut self.fifos {
                f.clear_tag(tag, t);
            }
        }
    }

    fn start_next(&mut self, t: Duration) {
        let busy = match self.subs.back() {
            None => false,
            Some(s) => self.subs.len() >= 2 || s.2.unassigned_bytes() > 0,
        };
        if busy {
            return;
        }
        let Some((piece, range, arrive)) = self.pending.front().cloned() else {
            return;
        };
        if arrive > t {
            return;
        }
        self.pending.pop_front();
        let Ok(mut planner) = Planner::new(range.clone(), self.config.clone()) else {
            return;
        };
        let wan_rtt = self.fifos.first().map_or(Duration::ZERO, |f| f.wan_rtt);
        let _ = planner.add_source(
            SourceSpec::local(Rate::from_bytes_per_sec(self.own), wan_rtt),
            t,
        );
        for c in &self.children {
            let _ = planner.add_source(
                SourceSpec::peer(c.advertised, c.link, wan_rtt + c.one_way * 2),
                t,
            );
        }
        self.next_tag += 1;
        self.subs.push_back((self.next_tag, piece, planner));
        self.sub_plans += 1;
        self.forwards.push_back(Forward {
            piece,
            range: range.clone(),
            received: RangeSet::new(),
            forwarded: 0.0,
            reported: 0,
        });
    }

    /// Hand out the sub-planner's work and apply its cancellations.
    fn drive(&mut self, t: Duration) {
        self.start_next(t);
        let rates: Vec<f64> = (0..self.fifos.len()).map(|i| self.rate(i)).collect();
        for (tag, _, planner) in self.subs.iter_mut() {
            for (i, f) in self.fifos.iter_mut().enumerate() {
                while let Some(a) = planner.next_assignment(f.id, t) {
                    let ss = self.slow_start.then_some(rates[i]);
                    f.enqueue(*tag, a.piece, a.range, t, t, ss);
                }
            }
            while let Some(ev) = planner.poll_event() {
                if let PlanEvent::Cancel { piece, source, .. } = ev
                    && let Some(f) = self.fifos.get_mut(source.0 as usize)
                {
                    f.cancel(*tag, piece, t);
                }
            }
        }
        // The next plan may have been waiting for the last one to be fully
        // assigned.
        let before = self.subs.len();
        if before == 1 {
            self.start_next(t);
            if self.subs.len() > before {
                self.drive(t);
            }
        }
    }

    fn next_event(&self, t: Duration, chunk: u64) -> Duration {
        let mut next = Duration::MAX;
        // A request still on its way; one that has arrived waits for the
        // current plan to be fully assigned, which other events bring.
        if self.subs.len() < 2
            && let Some(p) = self.pending.front()
            && p.2 > t
        {
            next = next.min(p.2);
        }
        for (i, f) in self.fifos.iter().enumerate() {
            next = next.min(f.next_event(t, self.rate(i), chunk));
        }
        if let Some(h) = self.forwards.front() {
            let avail = h.received.contiguous_end(h.range.start) - h.range.start;
            let boundary = (h.reported + chunk).min(avail);
            if (boundary as f64) > h.forwarded + 0.5 && self.link > 0.0 {
                next = next.min(t + secs((boundary as f64 - h.forwarded) / self.link));
            } else if boundary > h.reported {
                next = next.min(t);
            }
        }
        for (_, _, planner) in &self.subs {
            if let Some(pt) = planner.poll_timeout() {
                next = next.min(pt.max(t));
            }
        }
        next
    }

    fn advance(&mut self, t: Duration, to: Duration) {
        for i in 0..self.fifos.len() {
            let r = self.rate(i);
            if let Some(f) = self.fifos.get_mut(i) {
                f.advance(t, to, r);
            }
        }
        if let Some(h) = self.forwards.front_mut() {
            let avail = (h.received.contiguous_end(h.range.start) - h.range.start) as f64;
            h.forwarded = (h.forwarded + self.link * to.saturating_sub(t).as_secs_f64()).min(avail);
        }
    }

    /// Process everything due at `t`; reports for A go to `out`.
    fn process(&mut self, t: Duration, chunk: u64, out: &mut Vec<Report>) {
        let mut inner = Vec::new();
        for f in &mut self.fifos {
            f.reports(t, chunk, &mut inner);
        }
        for (tag, piece, planner) in self.subs.iter_mut() {
            let mut fwd = self.forwards.iter_mut().find(|f| f.piece == *piece);
            for r in inner.iter().filter(|r| r.tag == *tag) {
                if planner.on_piece_data(r.piece, r.n, t).is_ok()
                    && let Some(f) = fwd.as_mut()
                {
                    f.received.insert(r.start..r.start + r.n);
                }
                if r.done {
                    let _ = planner.on_piece_done(r.piece, t);
                }
            }
            if planner.poll_timeout().is_some_and(|pt| pt <= t) {
                planner.handle_timeout(t);
            }
        }
        // Forward to A, in order.
        while let Some(h) = self.forwards.front_mut() {
            let avail = h.received.contiguous_end(h.range.start) - h.range.start;
            let len = h.range.end - h.range.start;
            let boundary = (h.reported + chunk).min(avail);
            if boundary <= h.reported || h.forwarded + 0.5 < boundary as f64 {
                break;
            }
            out.push(Report {
                tag: 0,
                piece: h.piece,
                start: h.range.start + h.reported,
                n: boundary - h.reported,
                done: boundary == len,
            });
            h.reported = boundary;
            h.forwarded = h.forwarded.max(boundary as f64);
            if boundary == len {
                self.forwards.pop_front();
            }
        }
        // A sub-plan's cursor is what has left the relay.
        if let Some(h) = self.forwards.front()
            && let Some(s) = self.subs.iter_mut().find(|s| s.1 == h.piece)
        {
            s.2.on_delivered(h.range.start + h.reported, t);
        }
        self.subs.retain(|s| !s.2.is_complete());
        self.drive(t);
    }
}

/// How a whole-piece relay ([`Scenario::whole_pieces`]) picks the source
/// of each piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPlacement {
    /// The source with the fewest pieces outstanding (ties: its own
    /// uplink): the daemon's rule up to session 4.
    FewestPieces,
    /// The source expected to finish the piece first, from its queued bytes
    /// and its rate.
    EarliestFinish,
}

/// A neighbour relaying the way the daemon does: every piece A asks of it
/// goes whole to one of its sources (lane 0: its own uplink; then the
/// routers behind it), each a FIFO server. Its link to A is assumed not to
/// be the bottleneck.
#[derive(Debug)]
struct Lanes {
    id: SourceId,
    fifos: Vec<Fifo>,
    rates: Vec<f64>,
    placement: RelayPlacement,
    slow_start: bool,
}

impl Lanes {
    /// Seconds from `t` until lane `i` would finish `len` more bytes queued
    /// behind what it has.
    fn finish_in(&self, i: usize, len: u64, t: Duration) -> f64 {
        let (Some(f), Some(&rate)) = (self.fifos.get(i), self.rates.get(i)) else {
            return f64::INFINITY;
        };
        if rate <= 0.0 {
            return f64::INFINITY;
        }
        let mut free = 0.0f64;
        for r in &f.queue {
            let ready = r.ready_at.saturating_sub(t).as_secs_f64();
            free = free.max(ready) + (r.len as f64 - r.progress).max(0.0) / rate;
        }
        free.max(f.rtt.as_secs_f64()) + len as f64 / rate
    }

    fn enqueue(&mut self, piece: PieceId, range: Range<u64>, t: Duration) {
        let len = range.end - range.start;
        let pick = match self.placement {
            RelayPlacement::FewestPieces => {
                (0..self.fifos.len()).min_by_key(|&i| self.fifos[i].queue.len())
            }
            RelayPlacement::EarliestFinish => (0..self.fifos.len()).min_by(|&a, &b| {
                self.finish_in(a, len, t)
                    .total_cmp(&self.finish_in(b, len, t))
            }),
        };
        let Some(i) = pick else { return };
        let ss = self.slow_start.then_some(self.rates[i]);
        self.fifos[i].enqueue(0, piece, range, t, t, ss);
    }

    fn cancel(&mut self, piece: PieceId, t: Duration) {
        for f in &mut self.fifos {
            f.cancel(0, piece, t);
        }
    }

    fn next_event(&self, t: Duration, chunk: u64) -> Duration {
        self.fifos
            .iter()
            .zip(&self.rates)
            .map(|(f, &r)| f.next_event(t, r, chunk))
            .min()
            .unwrap_or(Duration::MAX)
    }

    fn advance(&mut self, t: Duration, to: Duration) {
        for (f, &r) in self.fifos.iter_mut().zip(&self.rates) {
            f.advance(t, to, r);
        }
    }

    fn reports(&mut self, t: Duration, chunk: u64, out: &mut Vec<Report>) {
        for f in &mut self.fifos {
            f.reports(t, chunk, out);
        }
    }
}

/// A source at A in the simulation.
#[derive(Debug)]
enum Server {
    Leaf(Fifo),
    Relay(Box<Relay>),
    Lanes(Lanes),
}

impl Server {
    fn id(&self) -> SourceId {
        match self {
            Server::Leaf(f) => f.id,
            Server::Relay(r) => r.id,
            Server::Lanes(l) => l.id,
        }
    }
}

/// Time lost to slow start against full rate when a connection starts at
/// `rate` with round trip `rtt`.
pub fn slow_start_penalty(rate: f64, rtt: Duration) -> Duration {
    let bdp = rate * rtt.as_secs_f64();
    let mut w = 10.0 * 1448.0;
    let mut lost = 0.0;
    let mut rounds = 0;
    while w < bdp && rounds < 64 {
        lost += rtt.as_secs_f64() - w / rate;
        w *= 2.0;
        rounds += 1;
    }
    secs(lost)
}

/// Simulate one download at A with `policy`, seeding neighbours with
/// their advertisement under `rule`.
pub fn run_download(
    sc: &Scenario,
    policy: Policy,
    rule: AdvertRule,
    base: &PlannerConfig,
) -> DownloadResult {
    let ideal = sc.ideal();
    let limit = ideal * 20 + Duration::from_secs(30);
    let wan_rtt = sc.wan_one_way * 2;
    let a_rate = sc.a_uplink.bytes_per_sec();
    let chunk = sc.report_chunk.max(1);
    let mut config = base.clone();
    config.policy = policy;
    let mut result = DownloadResult {
        completion: None,
        ideal,
        cut_requested: None,
        cut_actual: None,
        peak_buffer: 0,
        bytes_by_source: vec![0; sc.neighbours.len() + 1],
        stats: Default::default(),
        steps: 0,
        max_live_pieces: 0,
        relay_sub_plans: 0,
    };
    let Ok(mut planner) = Planner::new(0..sc.size, config.clone()) else {
        return result;
    };
    let t0 = Duration::ZERO;
    let setup = (|| {
        if sc.original_flow {
            planner.add_source(SourceSpec::original_flow(sc.a_uplink, wan_rtt), t0)?;
        }
        let local = planner.add_source(SourceSpec::local(sc.a_uplink, wan_rtt), t0)?;
        let mut srcs = vec![Server::Leaf(Fifo::new(local, wan_rtt, wan_rtt))];
        for n in &sc.neighbours {
            let rtt = wan_rtt + n.link_one_way * 2 * n.hops();
            let mut spec = SourceSpec::peer(n.advertised(rule), n.link, rtt);
            if let Some(placement) = sc.whole_pieces
                && !n.behind.is_empty()
            {
                // The daemon's relay: own uplink plus one lane per router
                // behind it, two pieces outstanding per lane.
                let own_rtt = wan_rtt + n.link_one_way * 2;
                let mut fifos = vec![Fifo::new(SourceId(0), own_rtt, wan_rtt)];
                let mut rates = vec![n.uplink.bytes_per_sec()];
                for (link, tree) in &n.behind {
                    // One more link round trip (deeper trees are aggregated).
                    let rtt = own_rtt + n.link_one_way * 2;
                    fifos.push(Fifo::new(SourceId(fifos.len() as u32), rtt, wan_rtt));
                    rates.push(tree.deliverable(Some(*link)).bytes_per_sec());
                }
                spec.depth = Some(config.pipeline_depth.max(1) * fifos.len());
                let id = planner.add_source(spec, t0)?;
                srcs.push(Server::Lanes(Lanes {
                    id,
                    fifos,
                    rates,
                    placement,
                    slow_start: sc.slow_start,
                }));
                continue;
            }
            let id = planner.add_source(spec, t0)?;
            if sc.nested && !n.behind.is_empty() {
                let children: Vec<RelayChild> = n
                    .behind
                    .iter()
                    .map(|(link, tree)| RelayChild {
                        rate: tree.deliverable(Some(*link)).bytes_per_sec(),
                        advertised: tree.advertise(rule, Some(*link)),
                        link: *link,
                        one_way: n.link_one_way,
                    })
                    .collect();
                let mut fifos = vec![Fifo::new(SourceId(0), wan_rtt, wan_rtt)];
                for (i, c) in children.iter().enumerate() {
                    let rtt = wan_rtt + c.one_way * 2;
                    fifos.push(Fifo::new(SourceId(i as u32 + 1), rtt, wan_rtt));
                }
                srcs.push(Server::Relay(Box::new(Relay {
                    id,
                    link: n.link.bytes_per_sec(),
                    link_one_way: n.link_one_way,
                    own: n.uplink.bytes_per_sec(),
                    children,
                    config: config.clone(),
                    slow_start: sc.slow_start,
                    pending: VecDeque::new(),
                    subs: VecDeque::new(),
                    next_tag: 0,
                    forwards: VecDeque::new(),
                    fifos,
                    sub_plans: 0,
                })));
            } else {
                srcs.push(Server::Leaf(Fifo::new(id, rtt, wan_rtt)));
            }
        }
        Ok::<_, crate::planner::PlanError>(srcs)
    })();
    let Ok(mut srcs) = setup else {
        return result;
    };

    // The cut.
    let requested = planner.requested_cut(t0);
    result.cut_requested = requested;
    let in_flight = (a_rate * wan_rtt.as_secs_f64()) as u64;
    let actual = match requested {
        Some(c) => (c + sc.cut_overshoot).max(in_flight).min(sc.size),
        None if sc.original_flow => sc.size,
        // A neighbour serving a delegated range: no original flow.
        None => 0,
    };
    // The engine reports the actual cut `cut_delay` later; peers may
    // already be fetching from the requested cut meanwhile.
    let mut cut_pending = requested.is_some();
    if requested.is_some() {
        result.cut_actual = Some(actual);
    }
    let orig_end_time = secs(actual as f64 / a_rate);
    let mut orig_delivered = 0u64;

    let rate_of = |i: usize, t: Duration| -> f64 {
        if i == 0 {
            if t < orig_end_time { 0.0 } else { a_rate }
        } else {
            sc.neighbour_rate(i - 1, t)
        }
    };
    let mut marks: Vec<Duration> = sc.change_times();
    marks.push(orig_end_time);
    marks.push(sc.cut_delay);
    marks.sort();

    let mut received = RangeSet::new();
    let mut reports = Vec::new();
    let mut stuck_steps = 0u32;
    let mut t = t0;
    loop {
        result.steps += 1;
        if cut_pending && t >= sc.cut_delay {
            cut_pending = false;
            if planner.set_cut(actual, t).is_err() {
                return result;
            }
        }
        // 1. Hand out work and apply cancellations.
        for (i, s) in srcs.iter_mut().enumerate() {
            while let Some(a) = planner.next_assignment(s.id(), t) {
                match s {
                    Server::Leaf(f) => {
                        let floor = if i == 0 { orig_end_time } else { t };
                        let r = if i == 0 { a_rate } else { rate_of(i, t) };
                        f.enqueue(0, a.piece, a.range, t, floor, sc.slow_start.then_some(r));
                    }
                    Server::Relay(r) => r.enqueue(a.piece, a.range, t),
                    Server::Lanes(l) => l.enqueue(a.piece, a.range, t),
                }
            }
            if let Server::Relay(r) = s {
                r.drive(t);
            }
        }
        while let Some(ev) = planner.poll_event() {
            if let PlanEvent::Cancel { piece, source, .. } = ev
                && let Some(s) = srcs.iter_mut().find(|s| s.id() == source)
            {
                match s {
                    Server::Leaf(f) => f.cancel(0, piece, t),
                    Server::Relay(r) => {
                        r.cancel(piece, t);
                        r.drive(t);
                    }
                    Server::Lanes(l) => l.cancel(piece, t),
                }
            }
        }
        let cursor = received.contiguous_end(0);
        if cursor >= sc.size {
            result.completion = Some(t);
            break;
        }
        // Rates for this step; on a shared channel the neighbours that are
        // transmitting split its capacity in proportion to their rates.
        let mut rates: Vec<f64> = (0..srcs.len()).map(|i| rate_of(i, t)).collect();
        let mut next = Duration::MAX;
        if let Some(channel) = sc.shared_channel {
            let transmitting = |s: &Server| match s {
                Server::Leaf(f) => f.queue.front().map(|h| h.ready_at),
                Server::Relay(_) | Server::Lanes(_) => None,
            };
            let active: Vec<usize> = (1..srcs.len())
                .filter(|&i| transmitting(&srcs[i]).is_some_and(|r| r <= t))
                .collect();
            let sum: f64 = active.iter().map(|&i| rates[i]).sum();
            let cap = channel.bytes_per_sec();
            if sum > cap {
                for &i in &active {
                    rates[i] *= cap / sum;
                }
            }
            // A neighbour starting to transmit changes everyone's share.
            for s in srcs.iter().skip(1) {
                if let Some(r) = transmitting(s)
                    && r > t
                {
                    next = next.min(r);
                }
            }
        }
        // 2. Next event.
        if orig_delivered < actual {
            let b = (orig_delivered + chunk).min(actual);
            next = next.min(secs(b as f64 / a_rate).max(t));
        }
        for (i, s) in srcs.iter().enumerate() {
            next = next.min(match s {
                Server::Leaf(f) => f.next_event(t, rates[i], chunk),
                Server::Relay(r) => r.next_event(t, chunk),
                Server::Lanes(l) => l.next_event(t, chunk),
            });
        }
        if let Some(m) = marks.iter().find(|m| **m > t) {
            next = next.min(*m);
        }
        if let Some(pt) = planner.poll_timeout() {
            next = next.min(pt.max(t));
        }
        if next == Duration::MAX || next > limit {
            break;
        }
        // Guard against a model bug spinning without time moving on.
        if next == t {
            stuck_steps += 1;
            if stuck_steps > 100_000 {
                break;
            }
        } else {
            stuck_steps = 0;
        }
        // 3. Advance fluid progress to `next`.
        for (i, s) in srcs.iter_mut().enumerate() {
            match s {
                Server::Leaf(f) => f.advance(t, next, rates[i]),
                Server::Relay(r) => r.advance(t, next),
                Server::Lanes(l) => l.advance(t, next),
            }
        }
        t = next;
        // 4. Reports.
        while orig_delivered < actual {
            let b = (orig_delivered + chunk).min(actual);
            if secs(b as f64 / a_rate) <= t {
                orig_delivered = b;
            } else {
                break;
            }
        }
        received.insert(0..orig_delivered);
        for (i, s) in srcs.iter_mut().enumerate() {
            reports.clear();
            match s {
                Server::Leaf(f) => f.reports(t, chunk, &mut reports),
                Server::Relay(r) => r.process(t, chunk, &mut reports),
                Server::Lanes(l) => l.reports(t, chunk, &mut reports),
            }
            for r in &reports {
                received.insert(r.start..r.start + r.n);
                result.bytes_by_source[i] += r.n;
                // Errors here mean a cancel raced the data: drop the bytes.
                let _ = planner.on_piece_data(r.piece, r.n, t);
                if r.done {
                    let _ = planner.on_piece_done(r.piece, t);
                }
            }
        }
        let cursor = received.contiguous_end(0);
        planner.on_delivered(cursor, t);
        result.peak_buffer = result
            .peak_buffer
            .max(received.covered_in(&(cursor..sc.size)));
        result.max_live_pieces = result.max_live_pieces.max(planner.live_pieces());
        if planner.poll_timeout().is_some_and(|pt| pt <= t) {
            planner.handle_timeout(t);
        }
    }
    result.stats = planner.stats().clone();
    result.relay_sub_plans = srcs
        .iter()
        .map(|s| match s {
            Server::Relay(r) => r.sub_plans,
            Server::Leaf(_) | Server::Lanes(_) => 0,
        })
        .sum();
    result
}

/// SplitMix64: a tiny seeded generator for reproducible meshes.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }
}

/// A random mesh negotiation experiment.
#[derive(Debug, Clone, Copy)]
pub struct MeshConfig {
    /// Routers.
    pub routers: usize,
    /// Expected neighbours per router.
    pub avg_degree: f64,
    /// Maximum delegation depth (hops from the initiator).
    pub depth_limit: u32,
    /// Seed.
    pub seed: u64,
}

/// What the negotiation did.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshReport {
    /// Routers.
    pub routers: usize,
    /// Undirected links.
    pub links: usize,
    /// Routers that committed (including the initiator).
    pub involved: usize,
    /// Depth of the session tree.
    pub tree_depth: u32,
    /// Negotiations refused because the router had already committed.
    pub refusals: u64,
    /// Commitments made by a router already committed to the key (must be 0).
    pub double_commitments: u64,
    /// Negotiate messages sent.
    pub negotiate_messages: u64,
    /// Time of the last commitment.
    pub settle_time: Duration,
    /// The initiator's view under the seed's average rule.
    pub advert_average: Rate,
    /// The initiator's view under the capped-sum rule.
    pub advert_capped_sum: Rate,
    /// What the tree can deliver (fluid model).
    pub deliverable: Rate,
    /// Routers released by the cancel flood.
    pub released_by_cancel: usize,
    /// Table entries left after the cancel (must be 0).
    pub leftover_entries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Msg {
    Negotiate { from: usize, to: usize, depth: u32 },
    Accept { child: usize, parent: usize },
    Refuse,
    Cancel { to: usize },
}

/// Flood a session negotiation over a random geometric mesh, then cancel it.
pub fn run_mesh(cfg: MeshConfig) -> MeshReport {
    let n = cfg.routers.max(1);
    let mut rng = SplitMix64::new(cfg.seed);
    let pos: Vec<(f64, f64)> = (0..n).map(|_| (rng.next_f64(), rng.next_f64())).collect();
    let uplink: Vec<Rate> = (0..n)
        .map(|_| Rate::from_mbit(5.0 + 45.0 * rng.next_f64()))
        .collect();
    let radius = (cfg.avg_degree / (std::f64::consts::PI * n as f64)).sqrt();
    // adj[i] = (j, link rate, one-way latency)
    let mut adj: Vec<Vec<(usize, Rate, Duration)>> = vec![Vec::new(); n];
    let mut links = 0;
    for i in 0..n {
        for j in i + 1..n {
            let d = ((pos[i].0 - pos[j].0).powi(2) + (pos[i].1 - pos[j].1).powi(2)).sqrt();
            if d < radius {
                let quality = 1.0 - d / radius;
                let link = Rate::from_mbit(54.0 * (0.2 + 0.8 * quality));
                let lat = Duration::from_micros(1000 + (rng.next_f64() * 2000.0) as u64);
                adj[i].push((j, link, lat));
                adj[j].push((i, link, lat));
                links += 1;
            }
        }
    }
    let limits = SessionLimits {
        capacity: 64,
        idle_timeout: Duration::from_secs(30),
        max_sub_delegates: 64,
    };
    let mut tables: Vec<SessionTable<usize>> = (0..n).map(|_| SessionTable::new(limits)).collect();
    let mut key_bytes = [0u8; 16];
    key_bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    key_bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let key = SessionKey::from_bytes(key_bytes);
    let initiator = rng.below(n);

    let mut committed = vec![false; n];
    let mut depth_of = vec![0u32; n];
    let mut parent: Vec<Option<usize>> = vec![None; n];
    let mut report = MeshReport {
        routers: n,
        links,
        involved: 0,
        tree_depth: 0,
        refusals: 0,
        double_commitments: 0,
        negotiate_messages: 0,
        settle_time: Duration::ZERO,
        advert_average: Rate::ZERO,
        advert_capped_sum: Rate::ZERO,
        deliverable: Rate::ZERO,
        released_by_cancel: 0,
        leftover_entries: 0,
    };
    let mut queue: BinaryHeap<Reverse<(Duration, u64, Msg)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<Reverse<(Duration, u64, Msg)>>, t: Duration, m: Msg| {
        seq += 1;
        q.push(Reverse((t, seq, m)));
    };
    let t0 = Duration::ZERO;
    if tables[initiator].try_commit(key, None, t0).is_ok() {
        committed[initiator] = true;
    }
    for &(j, _, lat) in &adj[initiator] {
        report.negotiate_messages += 1;
        push(
            &mut queue,
            t0 + lat,
            Msg::Negotiate {
                from: initiator,
                to: j,
                depth: 1,
            },
        );
    }
    let latency = |a: usize, b: usize| -> Duration {
        adj[a]
            .iter()
            .find(|x| x.0 == b)
            .map_or(Duration::from_millis(1), |x| x.2)
    };
    while let Some(Reverse((t, _, msg))) = queue.pop() {
        match msg {
            Msg::Negotiate { from, to, depth } => match tables[to].try_commit(key, Some(from), t) {
                Ok(()) => {
                    if committed[to] {
                        report.double_commitments += 1;
                    }
                    committed[to] = true;
                    depth_of[to] = depth;
                    parent[to] = Some(from);
                    report.settle_time = report.settle_time.max(t);
                    push(
                        &mut queue,
                        t + latency(to, from),
                        Msg::Accept {
                            child: to,
                            parent: from,
                        },
                    );
                    if depth < cfg.depth_limit {
                        for &(j, _, lat) in &adj[to] {
                            if j != from {
                                report.negotiate_messages += 1;
                                push(
                                    &mut queue,
                                    t + lat,
                                    Msg::Negotiate {
                                        from: to,
                                        to: j,
                                        depth: depth + 1,
                                    },
                                );
                            }
                        }
                    }
                }
                Err(_) => {
                    report.refusals += 1;
                    push(&mut queue, t + latency(to, from), Msg::Refuse);
                }
            },
            Msg::Accept { child, parent: p } => {
                if tables[p].add_sub_delegate(&key, child, t).is_err() {
                    // Could not record it: release the child at once.
                    push(&mut queue, t + latency(p, child), Msg::Cancel { to: child });
                }
            }
            Msg::Refuse | Msg::Cancel { .. } => {
                if let Msg::Cancel { to } = msg
                    && let Some(rel) = tables[to].cancel(&key)
                {
                    committed[to] = false;
                    report.released_by_cancel += 1;
                    for c in rel.sub_delegates {
                        push(&mut queue, t + latency(to, c), Msg::Cancel { to: c });
                    }
                }
            }
        }
    }
    report.involved = committed.iter().filter(|c| **c).count();
    report.tree_depth = (0..n)
        .filter(|i| committed[*i])
        .map(|i| depth_of[i])
        .max()
        .unwrap_or(0);

    // Advertisements over the session tree, bottom-up.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        if committed[i]
            && let Some(p) = parent[i]
            && tables[p]
                .get(&key)
                .is_some_and(|c| c.sub_delegates.contains(&i))
        {
            children[p].push(i);
        }
    }
    fn build(
        i: usize,
        children: &[Vec<usize>],
        uplink: &[Rate],
        adj: &[Vec<(usize, Rate, Duration)>],
    ) -> AdvertTree {
        AdvertTree {
            own: uplink[i],
            children: children[i]
                .iter()
                .map(|&c| {
                    let link = adj[i].iter().find(|x| x.0 == c).map_or(Rate::ZERO, |x| x.1);
                    (link, build(c, children, uplink, adj))
                })
                .collect(),
        }
    }
    let tree = build(initiator, &children, &uplink, &adj);
    report.advert_average = tree.advertise(AdvertRule::Average, None);
    report.advert_capped_sum = tree.advertise(AdvertRule::CappedSum, None);
    report.deliverable = tree.deliverable(None);

    // Cancel from the initiator, forwarded down the recorded sub-delegates.
    let t_cancel = report.settle_time + Duration::from_secs(1);
    push(&mut queue, t_cancel, Msg::Cancel { to: initiator });
    while let Some(Reverse((t, _, msg))) = queue.pop() {
        if let Msg::Cancel { to } = msg
            && let Some(rel) = tables[to].cancel(&key)
        {
            report.released_by_cancel += 1;
            for c in rel.sub_delegates {
                push(&mut queue, t + latency(to, c), Msg::Cancel { to: c });
            }
        }
    }
    report.leftover_entries = tables.iter().map(SessionTable::len).sum();
    report
}

/// The download scenarios of the assignment.
pub fn standard_scenarios(size: u64) -> Vec<Scenario> {
    let nb = |m: f64| Neighbour::new(m, 54.0);
    let mut v = vec![
        Scenario::new("2 routers 20+20", size, vec![nb(20.0)]),
        Scenario::new("3 routers 20x3", size, vec![nb(20.0), nb(20.0)]),
        Scenario::new("4 routers 20x4", size, vec![nb(20.0), nb(20.0), nb(20.0)]),
        Scenario::new("8 routers 20x8", size, (0..7).map(|_| nb(20.0)).collect()),
        Scenario::new("hetero 20+5", size, vec![nb(5.0)]),
    ];
    let mut two_hop = nb(10.0);
    two_hop.behind = vec![
        (
            Rate::from_mbit(54.0),
            AdvertTree::leaf(Rate::from_mbit(20.0)),
        ),
        (
            Rate::from_mbit(54.0),
            AdvertTree::leaf(Rate::from_mbit(20.0)),
        ),
    ];
    v.push(Scenario::new(
        "2-hop: B10 + C20,D20 behind B",
        size,
        vec![two_hop.clone()],
    ));
    let mut nested = Scenario::new("2-hop nested: B sub-plans each piece", size, vec![two_hop]);
    nested.nested = true;
    v.push(nested);
    // The bench's 4-router testbed: D is 2 hops away, behind B; B relays
    // whole pieces like the daemon.
    let mut b_with_d = nb(20.0);
    b_with_d.behind = vec![(
        Rate::from_mbit(54.0),
        AdvertTree::leaf(Rate::from_mbit(20.0)),
    )];
    for (name, placement) in [
        (
            "4 routers, D via B: fewest pieces",
            RelayPlacement::FewestPieces,
        ),
        (
            "4 routers, D via B: earliest finish",
            RelayPlacement::EarliestFinish,
        ),
    ] {
        let mut sc = Scenario::new(name, size, vec![b_with_d.clone(), nb(20.0)]);
        sc.whole_pieces = Some(placement);
        v.push(sc);
    }
    v.push(Scenario::new(
        "slow link: B50 over 11",
        size,
        vec![Neighbour::new(50.0, 11.0)],
    ));
    let mut drop = nb(20.0);
    drop.rate_change = Some((0.5, 0.25));
    v.push(Scenario::new(
        "3 routers, C drops 4x at 1/2",
        size,
        vec![nb(20.0), drop.clone()],
    ));
    v.push(Scenario::new(
        "2 routers, B drops 4x at 1/2",
        size,
        vec![drop],
    ));
    let mut shared = Scenario::new(
        "8 routers 20x8, one 54 Mbit/s channel",
        size,
        (0..7).map(|_| nb(20.0)).collect(),
    );
    shared.shared_channel = Some(Rate::from_mbit(54.0));
    v.push(shared);
    let mut liar = Neighbour::new(50.0, 54.0);
    liar.rate_change = Some((0.0, 0.2));
    v.push(Scenario::new(
        "B advertises 50, delivers 10",
        size,
        vec![liar],
    ));
    let mut late = Scenario::new("2 routers, cut 1 MiB late, 10 ms", size, vec![nb(20.0)]);
    late.cut_overshoot = 1 << 20;
    late.cut_delay = Duration::from_millis(10);
    v.push(late);
    let mut dies = nb(20.0);
    dies.dies_at = Some(0.5);
    v.push(Scenario::new(
        "3 routers, C dies at 1/2",
        size,
        vec![nb(20.0), dies],
    ));
    v
}

/// A neighbour (B: 10 Mbit/s uplink, C and D at 20 Mbit/s behind 54 Mbit/s
/// links) planning one delegated range of each size with its own planner:
/// no original flow, no cut. This is the multi-hop overhead the aggregated
/// 2-hop model of [`standard_scenarios`] leaves out.
pub fn neighbour_side_scenarios(sizes: &[u64]) -> Vec<Scenario> {
    sizes
        .iter()
        .map(|&size| {
            let mut sc = Scenario::new(
                &format!("B sub-plans {} KiB (10+20+20)", size >> 10),
                size,
                vec![Neighbour::new(20.0, 54.0), Neighbour::new(20.0, 54.0)],
            );
            sc.a_uplink = Rate::from_mbit(10.0);
            sc.original_flow = false;
            sc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_penalty_is_small_and_monotone() {
        let rtt = Duration::from_millis(20);
        let slow = slow_start_penalty(Rate::from_mbit(5.0).bytes_per_sec(), rtt);
        let fast = slow_start_penalty(Rate::from_mbit(100.0).bytes_per_sec(), rtt);
        assert!(slow <= fast);
        assert!(fast < Duration::from_millis(200));
        assert_eq!(slow_start_penalty(1000.0, rtt), Duration::ZERO);
    }

    #[test]
    fn ideal_accounts_for_changes() {
        let mut sc = Scenario::new("x", 32 << 20, vec![Neighbour::new(20.0, 54.0)]);
        let stat = sc.static_ideal();
        assert_eq!(sc.ideal(), stat);
        sc.neighbours[0].dies_at = Some(0.5);
        let ideal = sc.ideal().as_secs_f64();
        // Half the bytes at 40 Mbit/s, the other half at 20: 1.5 x static.
        assert!((ideal / stat.as_secs_f64() - 1.5).abs() < 1e-3, "{ideal}");
    }
}
