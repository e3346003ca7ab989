//! The engine: flow table, dispatch and the public API.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_wire::{TcpFlags, TcpPacket, parse_ip_tcp};

use crate::flow::{After, Flow, FlowKey, SegInfo};
use crate::types::{
    Direction, EngineConfig, Event, FailReason, FlowId, SpliceError, Transmit, Verdict,
};

/// Counters for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Packets handed to [`Engine::handle_packet`].
    pub packets: u64,
    /// Packets that were not IPv4/IPv6 + TCP or were malformed.
    pub unparsed: u64,
    /// SYNs not tracked because the table was full.
    pub table_full: u64,
    /// Packets dropped.
    pub dropped: u64,
    /// Packets modified.
    pub modified: u64,
    /// Packets emitted by [`Engine::poll_transmit`].
    pub transmitted: u64,
    /// Data segments injected again (retransmissions of any kind), over
    /// every accelerated flow, live or gone.
    pub retransmitted: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Of those, timeouts the sender found spurious (the ACKs were late,
    /// nothing was lost) and undid: see `docs/splice.md`.
    pub spurious_timeouts: u64,
}

/// A diagnostic snapshot of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    /// State name.
    pub state: &'static str,
    /// Cut point (accelerated flows).
    pub cut: Option<u64>,
    /// Body offset the client acknowledged (accelerated flows).
    pub delivered: Option<u64>,
    /// Highest body offset injected (accelerated flows).
    pub sent: Option<u64>,
    /// Bytes held in the piece buffer.
    pub buffered: u64,
    /// End of the body bytes the engine holds contiguously from the
    /// client's acknowledged offset (accelerated flows): when it equals
    /// `delivered`, the engine has nothing the client can use and waits
    /// for a piece (pieces held past a hole do not count).
    pub available: Option<u64>,
    /// Current retransmission timeout of the injected stream (accelerated
    /// flows), backoff included.
    pub rto: Option<Duration>,
    /// Data segments injected again (accelerated flows).
    pub retransmitted: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Of those, timeouts found spurious and undone.
    pub spurious_timeouts: u64,
}

/// The splice engine. See the crate documentation for the calling contract.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    by_key: HashMap<FlowKey, FlowId>,
    flows: HashMap<FlowId, Flow>,
    /// Flows with a sender, pending control packets or a linger timer.
    active: Vec<FlowId>,
    rr: usize,
    next_id: u64,
    events: VecDeque<Event>,
    next_sweep: Option<Instant>,
    scratch: Vec<u8>,
    stats: EngineStats,
    /// Sender counters of the flows already forgotten.
    retired: crate::sender::SenderCounters,
}

impl Engine {
    /// Creates an engine.
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            by_key: HashMap::new(),
            flows: HashMap::new(),
            active: Vec::new(),
            rr: 0,
            next_id: 1,
            events: VecDeque::new(),
            next_sweep: None,
            scratch: Vec::new(),
            stats: EngineStats::default(),
            retired: crate::sender::SenderCounters::default(),
        }
    }

    /// Counters. The sender counters (`retransmitted`, `timeouts`,
    /// `spurious_timeouts`) are summed over the live flows on each call.
    pub fn stats(&self) -> EngineStats {
        let mut sum = self.retired;
        for id in &self.active {
            if let Some(f) = self.flows.get(id) {
                sum.add(f.counters());
            }
        }
        EngineStats {
            retransmitted: self.stats.retransmitted + sum.retransmitted,
            timeouts: self.stats.timeouts + sum.timeouts,
            spurious_timeouts: self.stats.spurious_timeouts + sum.spurious_timeouts,
            ..self.stats
        }
    }

    /// Number of tracked flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// A snapshot of a flow, if tracked.
    pub fn flow_info(&self, flow: FlowId) -> Option<FlowInfo> {
        self.flows.get(&flow).map(Flow::info)
    }

    /// Processes one queued packet; see the crate docs for the verdicts.
    pub fn handle_packet(&mut self, now: Instant, dir: Direction, pkt: &mut [u8]) -> Verdict {
        self.stats.packets += 1;
        let v = self.handle_inner(now, dir, pkt);
        match v {
            Verdict::Accept => {}
            Verdict::AcceptModified { .. } => self.stats.modified += 1,
            Verdict::Drop => self.stats.dropped += 1,
        }
        v
    }

    fn handle_inner(&mut self, now: Instant, dir: Direction, pkt: &mut [u8]) -> Verdict {
        let Ok(meta) = parse_ip_tcp(pkt) else {
            self.stats.unparsed += 1;
            return Verdict::Accept;
        };
        let Ok(tcp) = TcpPacket::new_checked(&pkt[meta.tcp_offset..meta.ip_len]) else {
            self.stats.unparsed += 1;
            return Verdict::Accept;
        };
        let src = SocketAddr::new(meta.src, tcp.src_port());
        let dst = SocketAddr::new(meta.dst, tcp.dst_port());
        let key = match dir {
            Direction::FromClient => FlowKey {
                client: src,
                origin: dst,
            },
            Direction::FromOrigin => FlowKey {
                client: dst,
                origin: src,
            },
        };
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => {
                let f = tcp.flags();
                if dir != Direction::FromClient
                    || !f.contains(TcpFlags::SYN)
                    || f.contains(TcpFlags::ACK)
                {
                    return Verdict::Accept;
                }
                let seg = SegInfo::parse(&meta, &tcp);
                if self.flows.len() >= self.cfg.max_flows {
                    self.sweep(now);
                    if self.flows.len() >= self.cfg.max_flows {
                        self.stats.table_full += 1;
                        return Verdict::Accept;
                    }
                }
                let id = FlowId(self.next_id);
                self.next_id += 1;
                self.flows.insert(id, Flow::new(id, key, now, &meta, &seg));
                self.by_key.insert(key, id);
                if self.next_sweep.is_none() {
                    self.next_sweep = Some(now + self.cfg.idle_timeout / 2);
                }
                return Verdict::Accept;
            }
        };
        let seg = SegInfo::parse(&meta, &tcp);
        let Some(flow) = self.flows.get_mut(&id) else {
            self.by_key.remove(&key);
            return Verdict::Accept;
        };
        let was_active = flow.is_active();
        let (verdict, after) =
            flow.on_packet(now, &self.cfg, dir, &meta, &seg, pkt, &mut self.events);
        let is_active = flow.is_active();
        match after {
            After::Forget => self.forget(id),
            After::Keep => {
                if is_active && !was_active {
                    self.active.push(id);
                }
            }
        }
        verdict
    }

    fn forget(&mut self, id: FlowId) {
        if let Some(f) = self.flows.remove(&id) {
            self.retired.add(f.counters());
            self.by_key.remove(&f.key);
            self.active.retain(|a| *a != id);
            if f.state != crate::flow::FlowState::Handshake {
                self.events.push_back(Event::FlowClosed { flow: id });
            }
        }
    }

    fn mark_active(&mut self, id: FlowId) {
        if !self.active.contains(&id) {
            self.active.push(id);
        }
    }

    /// The driver decided not to accelerate: the engine forgets the flow
    /// (its packets pass untouched from now on). Unknown flows are ignored.
    pub fn pass_through(&mut self, flow: FlowId) {
        if let Some(f) = self.flows.get(&flow) {
            if f.state == crate::flow::FlowState::HeadSeen {
                self.forget(flow);
            }
        }
    }

    /// Takes the flow over at body offset `>= requested_cut`; returns the
    /// actual cut (see the crate docs). The driver must then push every body
    /// byte from the cut to the end.
    pub fn accelerate(
        &mut self,
        now: Instant,
        flow: FlowId,
        requested_cut: u64,
    ) -> Result<u64, SpliceError> {
        let f = self.flows.get_mut(&flow).ok_or(SpliceError::UnknownFlow)?;
        let cut = f.accelerate(now, &self.cfg, requested_cut)?;
        f.after_accelerate(&mut self.events);
        self.mark_active(flow);
        Ok(cut)
    }

    /// Body bytes `[offset, offset + data.len())` of an accelerated flow.
    pub fn push_piece(
        &mut self,
        now: Instant,
        flow: FlowId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SpliceError> {
        let f = self.flows.get_mut(&flow).ok_or(SpliceError::UnknownFlow)?;
        f.push_piece(now, offset, data)
    }

    /// How many more bytes past the contiguous end of the buffered body the
    /// engine accepts for this flow (0 for flows not accelerated).
    pub fn buffer_room(&self, flow: FlowId) -> u64 {
        self.flows.get(&flow).map_or(0, Flow::buffer_room)
    }

    /// The rest of the body cannot be delivered: reset the client (RST
    /// rounds at the candidate sequence numbers, bounded; see the crate
    /// doc) and the origin. A flow that already failed or closed is left
    /// as it is; one whose body the client already acknowledged whole only
    /// has its origin reset.
    pub fn fail(&mut self, now: Instant, flow: FlowId) {
        if let Some(f) = self.flows.get_mut(&flow) {
            if f.is_active() {
                f.fail(now, &self.cfg, FailReason::Caller, &mut self.events);
            }
        }
    }

    /// Writes the next packet to inject into `buf` (cleared first).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let n = self.active.len();
        for i in 0..n {
            let idx = (self.rr + i) % n;
            let id = self.active[idx];
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            if let Some(to) = f.poll_transmit(now, buf, &mut self.scratch) {
                // Next call starts with the next flow: one packet per flow
                // per round, so a bulk flow cannot starve the others.
                self.rr = (idx + 1) % n;
                self.stats.transmitted += 1;
                return Some(Transmit {
                    flow: id,
                    to,
                    len: buf.len(),
                });
            }
        }
        // Nothing to send: advance the round-robin start.
        if n > 0 {
            self.rr = (self.rr + 1) % n;
        }
        None
    }

    /// The earliest instant at which [`Engine::handle_timeout`] must be
    /// called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_sweep;
        for id in &self.active {
            if let Some(d) = self.flows.get(id).and_then(Flow::poll_timeout) {
                t = Some(t.map_or(d, |x| x.min(d)));
            }
        }
        t
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<FlowId> = self.active.clone();
        for id in ids {
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            if f.on_timeout(now, &self.cfg, &mut self.events) == After::Forget {
                self.forget(id);
            }
        }
        if self.next_sweep.is_some_and(|t| now >= t) {
            self.sweep(now);
            self.next_sweep = if self.flows.is_empty() {
                None
            } else {
                Some(now + self.cfg.idle_timeout / 2)
            };
        }
    }

    /// Expires idle flows.
    fn sweep(&mut self, now: Instant) {
        let idle = self.cfg.idle_timeout;
        let stale: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.last_activity) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            f.last_activity = now;
            match f.on_idle(now, &self.cfg, &mut self.events) {
                After::Forget => self.forget(id),
                After::Keep => self.mark_active(id),
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
