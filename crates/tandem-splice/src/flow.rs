//! One tracked TCP flow: handshake learning, head collection, the cut and
//! the accelerated states.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_http::{MAX_HEAD_LEN, Parse, RequestHead, ResponseHead};
use tandem_wire::{
    IpTcpMeta, Ipv4Packet, Ipv6Packet, SackBlock, SeqNumber, TcpFlags, TcpOption, TcpPacket,
    TcpSegment, TcpSegmentOptions,
};

use crate::buffer::InsertError;
use crate::ends::SegmentEnds;
use crate::sender::{Ack, Sender, SenderConfig, SenderCounters};
use crate::types::{
    Destination, Direction, EngineConfig, Event, FailReason, FlowId, SpliceError, Verdict,
};

/// Key of the flow table: the client's and the origin's socket addresses
/// as seen in the router's FORWARD hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub client: SocketAddr,
    pub origin: SocketAddr,
}

/// The per-flow state machine.
///
/// ```text
///  client SYN        origin SYN-ACK        request head, then response head
///  ----------> Handshake ------> Observing ------------------------------> HeadSeen
///                                  |  (Event::ResponseHead)                  |
///          malformed / not HTTP /  |                                         |
///          response before request v                      pass_through() --> forgotten
///                              forgotten                                     |
///                                                               accelerate(cut)
///                                                                            v
///                              origin streams the head of the body ---> Streaming
///                              (bytes >= cut dropped, straddlers trimmed)    |
///                                               client ACKs the cut; origin  |
///                                               gets a zero-window ACK       |
///                                               (Event::CutDone)             v
///                              every client packet absorbed, bytes --> Injecting
///                              injected from the pieces                      |
///                                               client ACKs body + FIN       |
///                                               (Event::Finished)            v
///                                                                       Finished
///                                               client FIN ACKed; origin     |
///                                               gets an RST                  v
///                                                                        Closed --(linger)--> forgotten
///
///  Streaming | Injecting --fail() / RTO limit / client RST / idle--> Failed --(linger)--> forgotten
///                           (client and origin get RSTs; Event::Failed)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowState {
    Handshake,
    Observing,
    HeadSeen,
    Streaming,
    Injecting,
    Finished,
    Closed,
    Failed,
}

/// TCP options a side announced in its SYN.
#[derive(Debug, Clone, Copy, Default)]
struct SynOptions {
    mss: Option<u16>,
    wscale: Option<u8>,
    sack: bool,
    ts: bool,
}

/// The fields of one segment the engine uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegInfo {
    pub seq: SeqNumber,
    pub ack: SeqNumber,
    pub flags: TcpFlags,
    pub window: u16,
    /// Offset of the payload within the IP packet.
    pub payload_at: usize,
    pub payload_len: usize,
    mss: Option<u16>,
    wscale: Option<u8>,
    sack_perm: bool,
    ts: Option<(u32, u32)>,
    sacks: [Option<SackBlock>; 4],
}

impl SegInfo {
    pub(crate) fn parse(meta: &IpTcpMeta, tcp: &TcpPacket<&[u8]>) -> SegInfo {
        let mut s = SegInfo {
            seq: tcp.seq(),
            ack: tcp.ack(),
            flags: tcp.flags(),
            window: tcp.window(),
            payload_at: meta.tcp_offset + tcp.header_len(),
            payload_len: tcp.payload().len(),
            mss: None,
            wscale: None,
            sack_perm: false,
            ts: None,
            sacks: [None; 4],
        };
        // A malformed option ends the walk; what was parsed before stays.
        for opt in tcp.option_iter().map_while(Result::ok) {
            match opt {
                TcpOption::Mss(m) => s.mss = Some(m),
                TcpOption::WindowScale(w) => s.wscale = Some(w.min(14)),
                TcpOption::SackPermitted => s.sack_perm = true,
                TcpOption::Timestamps { tsval, tsecr } => s.ts = Some((tsval, tsecr)),
                TcpOption::Sack(_) => {
                    for (slot, b) in s.sacks.iter_mut().zip(opt.sack_blocks()) {
                        *slot = Some(b);
                    }
                }
                _ => {}
            }
        }
        s
    }

    fn seq_len(&self) -> u32 {
        self.payload_len as u32
            + u32::from(self.flags.contains(TcpFlags::SYN))
            + u32::from(self.flags.contains(TcpFlags::FIN))
    }

    fn end(&self) -> SeqNumber {
        self.seq.add(self.seq_len())
    }
}

/// How far injected TSvals run ahead of the estimated origin clock.
const TS_LEAD_MS: u32 = 1000;

/// Timed RST rounds to the client after a failure (the first at the
/// failure, then [`RST_REPEATS`] repeats).
pub(crate) const RST_REPEATS: u8 = 3;

/// RSTs to the client in one round: the best guess of the client's
/// `rcv_nxt`, the highest sequence number sent to it, the number below that
/// and up to [`RST_BOUNDARIES_PER_ROUND`] segment boundaries (72 RSTs per
/// failure at most, with [`RST_REPEATS`] and [`RST_ANSWERS`]).
pub(crate) const RST_ROUND_MAX: usize = 4 + RST_BOUNDARIES_PER_ROUND;

/// Segment boundaries tried per RST round (rotating over the boundaries
/// between the client's last ACK and the highest byte sent).
const RST_BOUNDARIES_PER_ROUND: usize = 12;

// The documented bound (docs/splice.md): RSTs to the client per failure.
const _: () = assert!((1 + RST_REPEATS as usize) * RST_ROUND_MAX + RST_ANSWERS as usize == 72);

/// RSTs answering client packets (challenge ACKs among them) after a
/// failure, each at the sequence number the packet acknowledges.
pub(crate) const RST_ANSWERS: u8 = 8;

/// Control packets waiting to be sent.
mod pending {
    pub const ACK_ORIGIN: u8 = 1;
    pub const RST_ORIGIN: u8 = 2;
    pub const RST_CLIENT: u8 = 4;
    pub const ACK_CLIENT: u8 = 8;
}

/// What the engine must do with the flow after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    Keep,
    Forget,
}

#[derive(Debug)]
pub(crate) struct Flow {
    pub id: FlowId,
    pub key: FlowKey,
    pub state: FlowState,
    pub last_activity: Instant,
    /// When the client's SYN passed (a retransmitted SYN restarts the flow).
    syn_at: Instant,
    /// The SYN to SYN-ACK time seen here.
    origin_rtt: Option<Duration>,
    client_syn: SynOptions,
    origin_syn: SynOptions,
    client_isn: SeqNumber,
    origin_isn: SeqNumber,
    wscale_ok: bool,
    sack_ok: bool,
    ts_ok: bool,
    /// Next sequence number the client will use (end of its data so far).
    client_next: SeqNumber,
    /// Highest ACK the client sent.
    client_ack: Option<SeqNumber>,
    client_window_raw: u16,
    client_ts: u32,
    client_ttl: u8,
    client_tos: u8,
    /// End of the highest segment the origin sent.
    origin_max: SeqNumber,
    /// The origin's newest TSval (echoed to it).
    origin_ts: u32,
    /// Estimate of the origin's clock: a value and when it held.
    ts_clock: Option<(u32, Instant)>,
    origin_window_raw: u16,
    origin_ttl: u8,
    origin_tos: u8,
    flow_label: u32,
    ip_ident: u16,
    // Head collection.
    req_buf: Vec<u8>,
    req_next: SeqNumber,
    request: Option<RequestHead>,
    pipelined: bool,
    resp_buf: Vec<u8>,
    resp_next: SeqNumber,
    /// Origin sequence number of body byte 0.
    body_start: SeqNumber,
    body_len: Option<u64>,
    // Acceleration.
    cut: u64,
    sender: Option<Box<Sender>>,
    /// ACK number the engine sends to the client (the client's data the
    /// origin had acknowledged, +1 once the client's FIN is acknowledged).
    ack_to_client: SeqNumber,
    client_fin_acked: bool,
    /// ACK number of the zero-window ACKs to the stopped origin.
    stop_ack: SeqNumber,
    /// The origin's rcv_nxt: the client's sequence number when the cut was
    /// done (later client bytes and FIN never reach the origin).
    origin_rcv_nxt: SeqNumber,
    origin_gone: bool,
    last_origin_ack: Option<Instant>,
    pending: u8,
    /// RSTs left that answer client packets after a failure.
    rst_client_budget: u8,
    /// Timed repeats of the RST round to the client left.
    rst_client_repeats: u8,
    /// Timer firings since the failure or close (the interval doubles).
    rst_timer_fired: u8,
    /// RSTs of the current round to the client, not yet sent (in reverse:
    /// the next one is last).
    rst_round: Vec<SeqNumber>,
    /// Rounds queued so far (rotates the boundaries tried).
    rst_rounds: u8,
    /// Ends (stream offsets past the last byte, FIN counted: see
    /// `stream_offset`) of segments towards the client, injected or the
    /// origin's own: where the client's `rcv_nxt` can be (bounded).
    sent_ends: SegmentEnds,
    /// End of the origin's segments that passed to the client (FIN counted).
    origin_passed_end: SeqNumber,
    /// RSTs sent to the origin (repeated: one may be lost on the WAN).
    rst_origin_sent: u8,
    /// When to repeat the RST to the client (it may be lost).
    rst_timer: Option<Instant>,
    linger_until: Option<Instant>,
    /// Delivered offset of the last [`Event::Progress`].
    progress_reported: u64,
}

impl Flow {
    pub(crate) fn new(
        id: FlowId,
        key: FlowKey,
        now: Instant,
        meta: &IpTcpMeta,
        syn: &SegInfo,
    ) -> Flow {
        Flow {
            id,
            key,
            state: FlowState::Handshake,
            last_activity: now,
            syn_at: now,
            origin_rtt: None,
            client_syn: SynOptions {
                mss: syn.mss,
                wscale: syn.wscale,
                sack: syn.sack_perm,
                ts: syn.ts.is_some(),
            },
            origin_syn: SynOptions::default(),
            client_isn: syn.seq,
            origin_isn: SeqNumber(0),
            wscale_ok: false,
            sack_ok: false,
            ts_ok: false,
            client_next: syn.seq.add(1),
            client_ack: None,
            client_window_raw: syn.window,
            client_ts: syn.ts.map_or(0, |t| t.0),
            client_ttl: meta.ttl,
            client_tos: meta.tos,
            origin_max: SeqNumber(0),
            origin_ts: 0,
            ts_clock: None,
            origin_window_raw: 0,
            origin_ttl: 64,
            origin_tos: 0,
            flow_label: 0,
            ip_ident: 0,
            req_buf: Vec::new(),
            req_next: syn.seq.add(1),
            request: None,
            pipelined: false,
            resp_buf: Vec::new(),
            resp_next: SeqNumber(0),
            body_start: SeqNumber(0),
            body_len: None,
            cut: 0,
            sender: None,
            ack_to_client: SeqNumber(0),
            client_fin_acked: false,
            stop_ack: SeqNumber(0),
            origin_rcv_nxt: syn.seq.add(1),
            origin_gone: false,
            last_origin_ack: None,
            pending: 0,
            rst_client_budget: 0,
            rst_client_repeats: 0,
            rst_timer_fired: 0,
            rst_round: Vec::new(),
            rst_rounds: 0,
            sent_ends: SegmentEnds::default(),
            origin_passed_end: SeqNumber(0),
            rst_origin_sent: 0,
            rst_timer: None,
            linger_until: None,
            progress_reported: 0,
        }
    }

    /// Whether the flow has something for `poll_transmit` or timers.
    pub(crate) fn is_active(&self) -> bool {
        self.sender.is_some()
            || self.pending != 0
            || !self.rst_round.is_empty()
            || self.linger_until.is_some()
    }

    fn seq_of(&self, offset: u64) -> SeqNumber {
        self.body_start.add(offset as u32)
    }

    /// Body offset of `seq`, relative to `reference` (an offset near it).
    fn offset_of(&self, seq: SeqNumber, reference: u64) -> i64 {
        reference as i64 + i64::from(seq.delta(self.seq_of(reference)))
    }

    fn client_shift(&self) -> u32 {
        if self.wscale_ok {
            u32::from(self.client_syn.wscale.unwrap_or(0))
        } else {
            0
        }
    }

    /// Current TSval continuing the origin's clock (1 ms ticks assumed,
    /// monotonic: never below the origin's last value), led by
    /// [`TS_LEAD_MS`].
    ///
    /// The engine sees the origin's TSvals one trip late, and the origin's
    /// own segments before the cut may reach the client after injected
    /// ones: an in-order origin segment then sets the client's TS.Recent
    /// above a plain estimate and PAWS would drop the injected segments.
    /// A TSval ahead of the origin's clock is harmless: PAWS only rejects
    /// older values, and injected segments (which start at the cut) can
    /// only update TS.Recent once every origin byte before the cut is in.
    fn tsval_now(&self, now: Instant) -> u32 {
        self.ts_clock_estimate(now)
            .unwrap_or(self.origin_ts)
            .wrapping_add(TS_LEAD_MS)
    }

    fn ts_clock_estimate(&self, now: Instant) -> Option<u32> {
        let (v, at) = self.ts_clock?;
        let ms = now.saturating_duration_since(at).as_millis();
        Some(v.wrapping_add(ms as u32))
    }

    // ----- packet input ------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_packet(
        &mut self,
        now: Instant,
        cfg: &EngineConfig,
        dir: Direction,
        meta: &IpTcpMeta,
        seg: &SegInfo,
        pkt: &mut [u8],
        events: &mut VecDeque<Event>,
    ) -> (Verdict, After) {
        self.last_activity = now;
        match self.state {
            FlowState::Handshake => (Verdict::Accept, self.on_handshake(now, dir, meta, seg)),
            FlowState::Observing | FlowState::HeadSeen => {
                self.track(now, dir, meta, seg);
                if seg.flags.contains(TcpFlags::RST) {
                    return (Verdict::Accept, After::Forget);
                }
                let after = if self.state == FlowState::Observing {
                    self.observe(dir, seg, pkt, events)
                } else {
                    if dir == Direction::FromClient && seg.payload_len > 0 {
                        self.pipelined = true;
                    }
                    After::Keep
                };
                if dir == Direction::FromOrigin {
                    // After `observe`: the segment that completes the head
                    // is remembered as a boundary too.
                    self.note_origin_passed(seg, seg.payload_len, true);
                }
                (Verdict::Accept, after)
            }
            FlowState::Streaming => self.on_streaming(now, cfg, dir, meta, seg, pkt, events),
            FlowState::Injecting | FlowState::Finished | FlowState::Closed | FlowState::Failed => {
                self.on_owned(now, cfg, dir, meta, seg, pkt, events)
            }
        }
    }

    fn on_handshake(
        &mut self,
        now: Instant,
        dir: Direction,
        meta: &IpTcpMeta,
        seg: &SegInfo,
    ) -> After {
        let f = seg.flags;
        match dir {
            Direction::FromClient if f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::ACK) => {
                // A retransmitted SYN, or a new connection on the same tuple.
                let fresh = Flow::new(self.id, self.key, now, meta, seg);
                *self = fresh;
                After::Keep
            }
            Direction::FromOrigin
                if f.contains(TcpFlags::SYN)
                    && f.contains(TcpFlags::ACK)
                    && seg.ack == self.client_isn.add(1) =>
            {
                self.origin_syn = SynOptions {
                    mss: seg.mss,
                    wscale: seg.wscale,
                    sack: seg.sack_perm,
                    ts: seg.ts.is_some(),
                };
                self.origin_isn = seg.seq;
                self.origin_rtt = Some(now.saturating_duration_since(self.syn_at));
                self.wscale_ok =
                    self.client_syn.wscale.is_some() && self.origin_syn.wscale.is_some();
                self.sack_ok = self.client_syn.sack && self.origin_syn.sack;
                self.ts_ok = self.client_syn.ts && self.origin_syn.ts;
                self.origin_max = seg.seq.add(1);
                self.origin_passed_end = seg.seq.add(1);
                self.resp_next = seg.seq.add(1);
                self.track(now, dir, meta, seg);
                self.state = FlowState::Observing;
                After::Keep
            }
            _ if f.contains(TcpFlags::RST) => After::Forget,
            _ => After::Keep,
        }
    }

    /// Updates what the flow knows from any segment.
    fn track(&mut self, now: Instant, dir: Direction, meta: &IpTcpMeta, seg: &SegInfo) {
        match dir {
            Direction::FromClient => {
                if seg.flags.contains(TcpFlags::ACK) {
                    match self.client_ack {
                        Some(a) if !seg.ack.after(a) => {
                            if seg.ack == a {
                                self.client_window_raw = seg.window;
                            }
                        }
                        _ => {
                            self.client_ack = Some(seg.ack);
                            self.client_window_raw = seg.window;
                        }
                    }
                }
                if let Some((v, _)) = seg.ts {
                    if SeqNumber(v).after(SeqNumber(self.client_ts)) || self.client_ts == 0 {
                        self.client_ts = v;
                    }
                }
                self.client_next = self.client_next.max_of(seg.end());
                if matches!(
                    self.state,
                    FlowState::Handshake
                        | FlowState::Observing
                        | FlowState::HeadSeen
                        | FlowState::Streaming
                ) {
                    // Until the cut is done every client byte reaches the origin.
                    self.origin_rcv_nxt = self.client_next;
                }
                self.client_ttl = meta.ttl;
                self.client_tos = meta.tos;
            }
            Direction::FromOrigin => {
                self.origin_max = self.origin_max.max_of(seg.end());
                if let Some((v, _)) = seg.ts {
                    if SeqNumber(v).after(SeqNumber(self.origin_ts)) || self.origin_ts == 0 {
                        self.origin_ts = v;
                        // The estimate only moves forward: a delayed
                        // segment may carry a newer but lagging value.
                        let behind = self
                            .ts_clock_estimate(now)
                            .is_none_or(|est| SeqNumber(v).after(SeqNumber(est)));
                        if behind {
                            self.ts_clock = Some((v, now));
                        }
                    }
                }
                self.origin_window_raw = seg.window;
                self.origin_ttl = meta.ttl;
                self.origin_tos = meta.tos;
                self.flow_label = meta.flow_label;
            }
        }
    }

    /// Appends the in-order part of a payload to a head buffer.
    fn append_in_order(buf: &mut Vec<u8>, next: &mut SeqNumber, seq: SeqNumber, payload: &[u8]) {
        let skip = next.delta(seq);
        if skip < 0 || skip as usize >= payload.len() {
            return; // a gap (out of order: wait for the retransmission) or old data
        }
        let fresh = &payload[skip as usize..];
        let room = (MAX_HEAD_LEN + 1).saturating_sub(buf.len());
        let take = fresh.len().min(room);
        buf.extend_from_slice(&fresh[..take]);
        *next = next.add(take as u32);
    }

    fn observe(
        &mut self,
        dir: Direction,
        seg: &SegInfo,
        pkt: &[u8],
        events: &mut VecDeque<Event>,
    ) -> After {
        if seg.payload_len == 0 {
            return After::Keep;
        }
        let payload = &pkt[seg.payload_at..seg.payload_at + seg.payload_len];
        match dir {
            Direction::FromClient => {
                if self.request.is_some() {
                    if seg.end().after(self.req_next) {
                        self.pipelined = true;
                    }
                    return After::Keep;
                }
                Self::append_in_order(&mut self.req_buf, &mut self.req_next, seg.seq, payload);
                match RequestHead::parse(&self.req_buf) {
                    Ok(Parse::Complete { head, head_len }) => {
                        if self.req_buf.len() > head_len {
                            self.pipelined = true;
                        }
                        self.request = Some(head);
                        self.req_buf = Vec::new();
                        After::Keep
                    }
                    Ok(Parse::Partial) => After::Keep,
                    Err(_) => After::Forget,
                }
            }
            Direction::FromOrigin => {
                if self.request.is_none() {
                    return After::Forget;
                }
                Self::append_in_order(&mut self.resp_buf, &mut self.resp_next, seg.seq, payload);
                match ResponseHead::parse(&self.resp_buf) {
                    Ok(Parse::Complete { head, head_len }) => {
                        if head.status < 200 {
                            // 1xx interim responses: not worth following.
                            return After::Forget;
                        }
                        self.body_start = self.origin_isn.add(1).add(head_len as u32);
                        self.body_len = head.content_length().ok().flatten();
                        self.resp_buf = Vec::new();
                        self.state = FlowState::HeadSeen;
                        let client_acked = self.client_acked_body();
                        let Some(request) = self.request.take() else {
                            return After::Forget;
                        };
                        events.push_back(Event::ResponseHead {
                            flow: self.id,
                            client: self.key.client,
                            origin: self.key.origin,
                            request: Box::new(request),
                            response: Box::new(head),
                            body_len: self.body_len,
                            client_acked,
                            pipelined: self.pipelined,
                            origin_rtt: self.origin_rtt,
                        });
                        After::Keep
                    }
                    Ok(Parse::Partial) => After::Keep,
                    Err(_) => After::Forget,
                }
            }
        }
    }

    /// Body bytes the client acknowledged (0 while still in the head).
    fn client_acked_body(&self) -> u64 {
        match self.client_ack {
            Some(a) if a.after(self.body_start) => a.delta(self.body_start) as u32 as u64,
            _ => 0,
        }
    }

    // ----- decisions -----------------------------------------------------

    pub(crate) fn accelerate(
        &mut self,
        now: Instant,
        cfg: &EngineConfig,
        requested_cut: u64,
    ) -> Result<u64, SpliceError> {
        if self.state != FlowState::HeadSeen {
            return Err(SpliceError::NotAwaitingDecision);
        }
        let body_len = self.body_len.ok_or(SpliceError::NoContentLength)?;
        if self.pipelined {
            return Err(SpliceError::Pipelined);
        }
        if requested_cut > body_len {
            return Err(SpliceError::CutBeyondBody {
                cut: requested_cut,
                body_len,
            });
        }
        self.last_activity = now;
        let acked = self.client_acked_body().min(body_len);
        let cut = requested_cut.max(acked);
        // MSS towards the client: what it announced, minus the timestamp
        // option carried in every segment.
        let default_mss: u16 = if self.key.client.is_ipv4() { 536 } else { 1220 };
        let mss = usize::from(self.client_syn.mss.unwrap_or(default_mss).max(64))
            - if self.ts_ok { 12 } else { 0 };
        let window = u64::from(self.client_window_raw) << self.client_shift();
        let ack_off = match self.client_ack {
            Some(a) => self.offset_of(a, cut).max(0) as u64,
            None => 0,
        };
        let sender = Sender::new(
            SenderConfig {
                mss,
                buffer_window: cfg.buffer_window,
                initial_rto: cfg.initial_rto,
                min_rto: cfg.min_rto,
                max_rto: cfg.max_rto,
                max_retransmits: cfg.max_retransmits,
                initial_cwnd_segments: cfg.initial_cwnd_segments,
            },
            cut,
            body_len,
            ack_off + window,
            self.sack_ok,
            self.ts_ok,
        );
        self.sender = Some(Box::new(sender));
        self.cut = cut;
        self.progress_reported = cut;
        self.ack_to_client = self.client_next;
        self.state = FlowState::Streaming;
        tracing::debug!(flow = self.id.0, cut, body_len, mss, "accelerating");
        Ok(cut)
    }

    /// Called after `accelerate` and on every client ACK in Streaming.
    fn maybe_cut_done(&mut self, events: &mut VecDeque<Event>) -> bool {
        if self.state != FlowState::Streaming {
            return false;
        }
        let cut_seq = self.seq_of(self.cut);
        match self.client_ack {
            Some(a) if !a.before(cut_seq) => {
                self.state = FlowState::Injecting;
                self.stop_ack = self.origin_max;
                self.origin_rcv_nxt = self.client_next;
                self.pending |= pending::ACK_ORIGIN;
                events.push_back(Event::CutDone {
                    flow: self.id,
                    cut: self.cut,
                });
                true
            }
            _ => false,
        }
    }

    pub(crate) fn after_accelerate(&mut self, events: &mut VecDeque<Event>) {
        self.maybe_cut_done(events);
    }

    pub(crate) fn push_piece(
        &mut self,
        now: Instant,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SpliceError> {
        let body_len = self.body_len.unwrap_or(0);
        let Some(sender) = self.sender.as_mut() else {
            return Err(SpliceError::NotAccelerated);
        };
        if !matches!(self.state, FlowState::Streaming | FlowState::Injecting) {
            return Err(SpliceError::NotAccelerated);
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > body_len {
            return Err(SpliceError::PieceBeyondBody { end, body_len });
        }
        self.last_activity = now;
        sender.push_piece(offset, data).map_err(|e| match e {
            InsertError::BeyondWindow { limit } => SpliceError::PieceBeyondWindow { limit },
        })
    }

    pub(crate) fn buffer_room(&self) -> u64 {
        match (&self.sender, self.state) {
            (Some(s), FlowState::Streaming | FlowState::Injecting) => s.room(),
            _ => 0,
        }
    }

    pub(crate) fn fail(
        &mut self,
        now: Instant,
        cfg: &EngineConfig,
        reason: FailReason,
        events: &mut VecDeque<Event>,
    ) {
        if matches!(self.state, FlowState::Failed | FlowState::Closed) {
            return;
        }
        if let Some(s) = self.sender.as_mut() {
            s.fail();
        }
        let was_finished = self.state == FlowState::Finished;
        self.state = FlowState::Failed;
        if !was_finished {
            // A round of RSTs now, timed repeats, and answers to the
            // client's packets (challenge ACKs) at the number they
            // acknowledge: see `queue_rst_round`.
            self.rst_client_budget = RST_ANSWERS;
            self.rst_client_repeats = RST_REPEATS;
            self.queue_rst_round();
            self.rst_timer = Some(now + cfg.min_rto);
        }
        if !self.origin_gone {
            self.pending |= pending::RST_ORIGIN;
            self.rst_timer = Some(now + cfg.min_rto);
        }
        self.linger_until = Some(now + cfg.linger);
        if !was_finished {
            events.push_back(Event::Failed {
                flow: self.id,
                reason,
            });
        }
        tracing::debug!(flow = self.id.0, ?reason, "flow failed");
    }

    // ----- accelerated states -------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn on_streaming(
        &mut self,
        now: Instant,
        cfg: &EngineConfig,
        dir: Direction,
        meta: &IpTcpMeta,
        seg: &SegInfo,
        pkt: &mut [u8],
        events: &mut VecDeque<Event>,
    ) -> (Verdict, After) {
        let cut_seq = self.seq_of(self.cut);
        match dir {
            Direction::FromOrigin => {
                if seg.flags.contains(TcpFlags::RST) {
                    // The origin gave up before the client had every byte
                    // before the cut: the rest cannot be completed.
                    self.origin_gone = true;
                    self.fail(now, cfg, FailReason::OriginReset, events);
                    return (Verdict::Drop, After::Keep);
                }
                self.track(now, dir, meta, seg);
                let start = seg.seq;
                let end = start.add(seg.payload_len as u32);
                if seg.payload_len == 0 || !end.after(cut_seq) {
                    if seg.flags.contains(TcpFlags::FIN) && !start.before(cut_seq) {
                        return (Verdict::Drop, After::Keep);
                    }
                    self.note_origin_passed(seg, seg.payload_len, true);
                    return (Verdict::Accept, After::Keep);
                }
                if !start.before(cut_seq) {
                    return (Verdict::Drop, After::Keep); // entirely past the cut
                }
                // Straddles the cut: keep only the bytes before it.
                let keep = cut_seq.delta(start) as usize;
                let verdict = trim_segment(pkt, meta, seg, keep);
                if verdict != Verdict::Drop {
                    self.note_origin_passed(seg, keep, false);
                }
                (verdict, After::Keep)
            }
            Direction::FromClient => {
                if seg.flags.contains(TcpFlags::RST) {
                    self.fail(now, cfg, FailReason::ClientReset, events);
                    return (Verdict::Drop, After::Keep);
                }
                if !self.client_checksum_ok(meta, pkt) {
                    return (Verdict::Drop, After::Keep);
                }
                self.track(now, dir, meta, seg);
                self.feed_sender(now, seg);
                self.report_progress(cfg, events);
                if self.maybe_cut_done(events) {
                    return (Verdict::Drop, After::Keep);
                }
                // Still forwarded to the origin: hide what the origin never
                // sent (SACK blocks past its data, TSecr past its clock).
                (self.sanitize_for_origin(meta, seg, pkt), After::Keep)
            }
        }
    }

    fn client_checksum_ok(&self, meta: &IpTcpMeta, pkt: &[u8]) -> bool {
        match TcpPacket::new_checked(&pkt[meta.tcp_offset..meta.ip_len]) {
            Ok(t) => t.verify_checksum(meta.src, meta.dst),
            Err(_) => false,
        }
    }

    fn sanitize_for_origin(&self, meta: &IpTcpMeta, seg: &SegInfo, pkt: &mut [u8]) -> Verdict {
        let Ok(mut tcp) = TcpPacket::new_checked(&mut pkt[meta.tcp_offset..meta.ip_len]) else {
            return Verdict::Accept;
        };
        let mut modified = false;
        if seg
            .sacks
            .iter()
            .flatten()
            .any(|b| b.right.after(self.origin_max))
        {
            let mut keep = [SackBlock {
                left: SeqNumber(0),
                right: SeqNumber(0),
            }; 4];
            let mut n = 0;
            for b in seg.sacks.iter().flatten() {
                if !b.right.after(self.origin_max) {
                    keep[n] = *b;
                    n += 1;
                }
            }
            modified |= tcp.rewrite_sack(&keep[..n]);
        }
        if let Some((tsval, tsecr)) = seg.ts {
            if self.ts_ok && SeqNumber(tsecr).after(SeqNumber(self.origin_ts)) {
                modified |= tcp.update_timestamps(tsval, self.origin_ts);
            }
        }
        if modified {
            Verdict::AcceptModified { len: meta.ip_len }
        } else {
            Verdict::Accept
        }
    }

    fn feed_sender(&mut self, now: Instant, seg: &SegInfo) {
        if !seg.flags.contains(TcpFlags::ACK) {
            return;
        }
        let shift = self.client_shift();
        let Some(sender) = self.sender.as_ref() else {
            return;
        };
        let reference = sender.una();
        let ack = self.offset_of(seg.ack, reference);
        if ack < 0 {
            return;
        }
        let mut sacks = [(0u64, 0u64); 4];
        let mut n = 0;
        if self.sack_ok {
            for b in seg.sacks.iter().flatten() {
                let l = self.offset_of(b.left, reference);
                let r = self.offset_of(b.right, reference);
                if l >= 0 && r > l {
                    sacks[n] = (l as u64, r as u64);
                    n += 1;
                }
            }
        }
        let window = u64::from(seg.window) << shift;
        let pure = seg.payload_len == 0
            && !seg.flags.contains(TcpFlags::SYN)
            && !seg.flags.contains(TcpFlags::FIN);
        let origin_sent = self.offset_of(self.origin_max, reference).max(0) as u64;
        // TSecr of the ACK and our TSval clock now: the sender tells a
        // spurious timeout by them (Eifel) and takes its RTT sample.
        let ts = match seg.ts {
            Some((_, tsecr)) if self.ts_ok => Some((tsecr, self.tsval_now(now))),
            _ => None,
        };
        let info = Ack {
            ack: ack as u64,
            window,
            sacks: &sacks[..n],
            pure,
            delivered_elsewhere: origin_sent,
            ts,
        };
        if let Some(sender) = self.sender.as_mut() {
            let out = sender.on_ack(now, &info);
            if out.invalid {
                tracing::trace!(flow = self.id.0, ack, "client acked unsent data");
            }
            if out.spurious_timeout {
                tracing::debug!(
                    flow = self.id.0,
                    rto_ms = sender.rto().as_millis() as u64,
                    "spurious retransmission timeout undone"
                );
            }
        }
    }

    /// Emits [`Event::Progress`] when the client's acknowledged offset moved
    /// by `cfg.progress_step` (or reached the end of the body).
    fn report_progress(&mut self, cfg: &EngineConfig, events: &mut VecDeque<Event>) {
        let (Some(step), Some(sender)) = (cfg.progress_step, self.sender.as_ref()) else {
            return;
        };
        let una = sender.una();
        let end = self.body_len.unwrap_or(0);
        let due = una >= self.progress_reported.saturating_add(step.max(1))
            || (una == end && una > self.progress_reported);
        if due {
            self.progress_reported = una;
            events.push_back(Event::Progress {
                flow: self.id,
                delivered: una,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_owned(
        &mut self,
        now: Instant,
        cfg: &EngineConfig,
        dir: Direction,
        meta: &IpTcpMeta,
        seg: &SegInfo,
        pkt: &mut [u8],
        events: &mut VecDeque<Event>,
    ) -> (Verdict, After) {
        match dir {
            Direction::FromOrigin => {
                if seg.flags.contains(TcpFlags::RST) {
                    self.origin_gone = true;
                    self.pending &= !(pending::ACK_ORIGIN | pending::RST_ORIGIN);
                    return (Verdict::Drop, After::Keep);
                }
                if self.origin_gone || self.state == FlowState::Failed {
                    return (Verdict::Drop, After::Keep);
                }
                self.track(now, dir, meta, seg);
                // The origin still has unacknowledged data or probes the
                // zero window: acknowledge everything it sent, window 0.
                self.stop_ack = self.stop_ack.max_of(self.origin_max);
                let due = self
                    .last_origin_ack
                    .is_none_or(|t| now.saturating_duration_since(t) >= cfg.origin_ack_interval);
                if due && matches!(self.state, FlowState::Injecting | FlowState::Finished) {
                    self.pending |= pending::ACK_ORIGIN;
                }
                (Verdict::Drop, After::Keep)
            }
            Direction::FromClient => {
                if !self.client_checksum_ok(meta, pkt) {
                    return (Verdict::Drop, After::Keep);
                }
                if seg.flags.contains(TcpFlags::RST) {
                    match self.state {
                        FlowState::Injecting => {
                            self.fail(now, cfg, FailReason::ClientReset, events)
                        }
                        FlowState::Finished => {
                            self.close(now, cfg);
                        }
                        _ => {}
                    }
                    return (Verdict::Drop, After::Keep);
                }
                self.track(now, dir, meta, seg);
                match self.state {
                    FlowState::Failed => {
                        if self.rst_client_budget > 0 && !seg.flags.contains(TcpFlags::RST) {
                            self.pending |= pending::RST_CLIENT;
                        }
                        return (Verdict::Drop, After::Keep);
                    }
                    FlowState::Closed => {
                        if seg.flags.contains(TcpFlags::FIN) {
                            self.pending |= pending::ACK_CLIENT;
                        }
                        return (Verdict::Drop, After::Keep);
                    }
                    _ => {}
                }
                self.feed_sender(now, seg);
                self.report_progress(cfg, events);
                // The client's FIN at the position the origin acknowledged.
                if seg.flags.contains(TcpFlags::FIN) {
                    let fin_seq = seg.seq.add(seg.payload_len as u32);
                    if fin_seq == self.ack_to_client && !self.client_fin_acked {
                        self.ack_to_client = fin_seq.add(1);
                        self.client_fin_acked = true;
                    }
                    if fin_seq.add(1) == self.ack_to_client {
                        self.pending |= pending::ACK_CLIENT;
                    }
                } else if seg.payload_len > 0 && self.state == FlowState::Finished {
                    // A new request on a connection whose response is
                    // complete: the engine cannot serve it; reset so the
                    // client retries on a new connection.
                    self.pending |= pending::RST_CLIENT;
                    self.rst_client_budget = 1;
                    self.close(now, cfg);
                    return (Verdict::Drop, After::Keep);
                }
                self.check_progress(now, cfg, events);
                (Verdict::Drop, After::Keep)
            }
        }
    }

    fn check_progress(&mut self, now: Instant, cfg: &EngineConfig, events: &mut VecDeque<Event>) {
        let fin_acked = self.sender.as_ref().is_some_and(|s| s.fin_acked());
        if self.state == FlowState::Injecting && fin_acked {
            self.state = FlowState::Finished;
            events.push_back(Event::Finished { flow: self.id });
            tracing::debug!(flow = self.id.0, "body delivered");
        }
        if self.state == FlowState::Finished && self.client_fin_acked {
            self.close(now, cfg);
        }
    }

    fn close(&mut self, now: Instant, cfg: &EngineConfig) {
        self.state = FlowState::Closed;
        if !self.origin_gone {
            self.pending |= pending::RST_ORIGIN;
            self.pending &= !pending::ACK_ORIGIN;
            self.rst_timer = Some(now + cfg.min_rto);
        }
        self.linger_until = Some(now + cfg.linger);
    }

    // ----- timers ----------------------------------------------------------

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let s = match self.state {
            FlowState::Streaming | FlowState::Injecting => {
                self.sender.as_ref().and_then(|s| s.poll_timeout())
            }
            FlowState::Failed | FlowState::Closed => self.rst_timer,
            _ => None,
        };
        match (s, self.linger_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn on_timeout(
        &mut self,
        now: Instant,
        cfg: &EngineConfig,
        events: &mut VecDeque<Event>,
    ) -> After {
        if let Some(t) = self.rst_timer {
            if now >= t {
                // An RST may have been lost: repeat it (an endpoint that got
                // it has no connection left and ignores the copy).
                let mut again = false;
                if self.rst_client_repeats > 0 && self.state == FlowState::Failed {
                    self.rst_client_repeats -= 1;
                    self.queue_rst_round();
                    again = true;
                }
                if (1..3).contains(&self.rst_origin_sent) && !self.origin_gone {
                    self.pending |= pending::RST_ORIGIN;
                    again = true;
                }
                // 200 ms, 400 ms, 800 ms (with the default `min_rto`): the
                // last round comes after the client's challenge-ACK rate
                // limit (Linux 500 ms per socket, smoltcp 1 s) has expired.
                self.rst_timer_fired = self.rst_timer_fired.saturating_add(1);
                let factor = 1u32 << self.rst_timer_fired.min(4);
                self.rst_timer = again.then_some(now + cfg.min_rto * factor);
            }
        }
        if let Some(t) = self.linger_until {
            if now >= t && self.pending == 0 && self.rst_round.is_empty() {
                return After::Forget;
            }
        }
        if matches!(self.state, FlowState::Streaming | FlowState::Injecting) {
            let failed = self
                .sender
                .as_mut()
                .is_some_and(|s| s.on_timeout(now).is_err());
            if failed {
                self.fail(now, cfg, FailReason::RetransmitLimit, events);
            }
        }
        After::Keep
    }

    /// The idle timeout fired for this flow.
    pub(crate) fn on_idle(
        &mut self,
        now: Instant,
        cfg: &EngineConfig,
        events: &mut VecDeque<Event>,
    ) -> After {
        match self.state {
            FlowState::Streaming | FlowState::Injecting => {
                self.fail(now, cfg, FailReason::IdleTimeout, events);
                After::Keep
            }
            FlowState::Finished => {
                self.close(now, cfg);
                After::Keep
            }
            FlowState::Closed | FlowState::Failed => After::Forget,
            _ => After::Forget,
        }
    }

    // ----- output ------------------------------------------------------------

    fn next_ident(&mut self) -> u32 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        if self.key.client.is_ipv4() {
            u32::from(self.ip_ident)
        } else {
            self.flow_label
        }
    }

    // ----- resetting the client ---------------------------------------------
    //
    // RFC 5961 section 3 (Linux, and any stack that follows it): an RST
    // resets only when its sequence number is exactly the receiver's
    // rcv_nxt; one elsewhere in the receive window draws a challenge ACK
    // (rate-limited per connection: Linux 500 ms, smoltcp 1 s); one outside
    // the window is dropped in silence. The engine knows rcv_nxt only from
    // the client's newest ACK, which is stale when the client's last ACKs
    // were lost. rcv_nxt always lies between that ACK and the highest
    // sequence number sent to the client, at the end of some segment the
    // client received. So each round tries, in order:
    //
    // 1. the best guess: the client's newest ACK;
    // 2. the highest sequence number sent to the client (exact when the
    //    client holds everything; else in its window: a challenge ACK, or a
    //    reset on stacks that accept any in-window RST);
    // 3. the number below it (in the window whenever the client misses
    //    anything, even when the highest one is the window's right edge);
    // 4. the cut (where the origin's bytes end for a client that no
    //    injected segment reached);
    // 5. up to `RST_BOUNDARIES_PER_ROUND` ends of segments sent to the
    //    client in between (injected or the origin's own), from both ends
    //    of the range alternately, rotating over the rounds.
    //
    // Every client packet that arrives after the failure (a challenge ACK
    // among them) updates the best guess and is answered at once with one
    // RST at it. Only RSTs, never data; the origin's side is unchanged.

    /// Remembers where a segment to the client ended (a possible rcv_nxt).
    fn note_sent_end(&mut self, end: SeqNumber) {
        let Ok(end) = u64::try_from(self.stream_offset(end)) else {
            return;
        };
        let acked = self
            .client_ack
            .map_or(0, |a| self.stream_offset(a).max(0) as u64);
        self.sent_ends.note(end, acked);
    }

    /// An origin segment passes to the client with its first `len` payload
    /// bytes (and its FIN when `fin_kept`).
    fn note_origin_passed(&mut self, seg: &SegInfo, len: usize, fin_kept: bool) {
        let fin = fin_kept && seg.flags.contains(TcpFlags::FIN);
        if len == 0 && !fin {
            return;
        }
        let end = seg.seq.add(len as u32 + u32::from(fin));
        self.origin_passed_end = self.origin_passed_end.max_of(end);
        self.note_sent_end(end);
    }

    /// Position of `seq` in the origin's stream (0 = the first byte after
    /// its SYN). Until the response head is parsed (the body's start is not
    /// known yet) the plain distance from the SYN; from then on through the
    /// body offset, so that bodies beyond 2 GiB stay ordered.
    fn stream_offset(&self, seq: SeqNumber) -> i64 {
        let start = self.origin_isn.add(1);
        match self.state {
            FlowState::Handshake | FlowState::Observing => i64::from(seq.delta(start)),
            _ => i64::from(self.body_start.delta(start)) + self.offset_of(seq, self.cut),
        }
    }

    /// The client's rcv_nxt as far as the engine knows: its newest ACK.
    fn rst_best_guess(&self) -> SeqNumber {
        self.client_ack.unwrap_or(self.origin_max)
    }

    /// The highest sequence number sent to the client: the end of the
    /// injected bytes (FIN counted) or of the origin's segments that passed
    /// through (before the decision they may reach past the cut).
    fn highest_sent_to_client(&self) -> SeqNumber {
        let Some(sender) = &self.sender else {
            return self.origin_max;
        };
        let body_len = self.body_len.unwrap_or(0);
        let mut hi = self.seq_of(sender.max_sent());
        if sender.fin_sent_ever() && sender.max_sent() >= body_len {
            hi = self.seq_of(body_len).add(1);
        }
        hi.max_of(self.origin_passed_end)
    }

    /// Queues one round of RSTs to the client (see above).
    fn queue_rst_round(&mut self) {
        let best = self.rst_best_guess();
        let hi = self.highest_sent_to_client();
        let mut round: Vec<SeqNumber> = Vec::with_capacity(RST_ROUND_MAX);
        round.push(best);
        if hi.after(best) {
            round.push(hi);
            let below = hi.sub(1);
            if below.after(best) {
                round.push(below);
            }
            // The cut: where the origin's bytes end for a client that no
            // injected segment reached.
            let cut = self.seq_of(self.cut);
            if self.sender.is_some() && cut.after(best) && cut.before(below) {
                round.push(cut);
            }
            // The candidates the rounds can try, from both ends of the range.
            let lo = self.stream_offset(best).max(0) as u64;
            let hi_off = self.stream_offset(below).max(0) as u64;
            let max = RST_BOUNDARIES_PER_ROUND * (1 + usize::from(RST_REPEATS));
            let start = self.origin_isn.add(1);
            let between: Vec<SeqNumber> = self
                .sent_ends
                .spread_between(lo, hi_off, max)
                .into_iter()
                .map(|e| start.add(e as u32))
                .filter(|e| *e != cut)
                .collect();
            let n = between.len();
            if n > 0 {
                let take = n.min(RST_BOUNDARIES_PER_ROUND);
                let start = (usize::from(self.rst_rounds) * RST_BOUNDARIES_PER_ROUND) % n;
                for i in 0..take {
                    round.push(between[(start + i) % n]);
                }
            }
        }
        self.rst_rounds = self.rst_rounds.saturating_add(1);
        // Sent in order: `poll_transmit` pops from the back.
        round.reverse();
        self.rst_round = round;
    }

    /// Our sequence number for control segments to the client.
    fn snd_nxt_seq(&self) -> SeqNumber {
        match &self.sender {
            Some(s) if s.fin_sent_ever() && s.nxt() >= self.body_len.unwrap_or(0) => {
                self.seq_of(self.body_len.unwrap_or(0)).add(1)
            }
            Some(s) => self.seq_of(s.nxt()),
            None => self.origin_max,
        }
    }

    fn segment_to_client<'a>(
        &mut self,
        now: Instant,
        seq: SeqNumber,
        flags: TcpFlags,
        payload: &'a [u8],
    ) -> TcpSegment<'a> {
        TcpSegment {
            src: self.key.origin,
            dst: self.key.client,
            seq,
            ack: self.ack_to_client,
            flags,
            window: self.origin_window_raw,
            options: TcpSegmentOptions {
                timestamps: self.ts_ok.then(|| (self.tsval_now(now), self.client_ts)),
                ..Default::default()
            },
            payload,
            ttl: self.origin_ttl,
            tos: self.origin_tos & !0x03,
            ident: self.next_ident(),
        }
    }

    fn segment_to_origin(&mut self, flags: TcpFlags, window: u16) -> TcpSegment<'static> {
        TcpSegment {
            src: self.key.client,
            dst: self.key.origin,
            seq: self.origin_rcv_nxt,
            ack: self.stop_ack.max_of(self.origin_max),
            flags,
            window,
            options: TcpSegmentOptions {
                timestamps: self.ts_ok.then_some((self.client_ts, self.origin_ts)),
                ..Default::default()
            },
            payload: &[],
            ttl: self.client_ttl,
            tos: self.client_tos & !0x03,
            ident: self.next_ident(),
        }
    }

    /// Writes the next packet of this flow into `buf` (cleared first).
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Option<Destination> {
        buf.clear();
        if self.pending & pending::RST_CLIENT != 0 {
            self.pending &= !pending::RST_CLIENT;
            self.rst_client_budget = self.rst_client_budget.saturating_sub(1);
            // An answer to a client packet: its ACK (now `client_ack`) is
            // the client's rcv_nxt when it sent it, the number RFC 5961
            // requires.
            let seq = self.rst_best_guess();
            let seg = self.segment_to_client(now, seq, TcpFlags::RST.with(TcpFlags::ACK), &[]);
            seg.emit(buf);
            return Some(Destination::ToClient);
        }
        if let Some(seq) = self.rst_round.pop() {
            let seg = self.segment_to_client(now, seq, TcpFlags::RST.with(TcpFlags::ACK), &[]);
            seg.emit(buf);
            return Some(Destination::ToClient);
        }
        if self.pending & pending::RST_ORIGIN != 0 {
            self.pending &= !(pending::RST_ORIGIN | pending::ACK_ORIGIN);
            self.rst_origin_sent = self.rst_origin_sent.saturating_add(1);
            let seg = self.segment_to_origin(TcpFlags::RST.with(TcpFlags::ACK), 0);
            seg.emit(buf);
            return Some(Destination::ToOrigin);
        }
        if self.pending & pending::ACK_ORIGIN != 0 {
            self.pending &= !pending::ACK_ORIGIN;
            if self.rst_origin_sent > 0 || self.origin_gone {
                return self.poll_transmit(now, buf, scratch);
            }
            self.last_origin_ack = Some(now);
            self.stop_ack = self.stop_ack.max_of(self.origin_max);
            let seg = self.segment_to_origin(TcpFlags::ACK, 0);
            seg.emit(buf);
            return Some(Destination::ToOrigin);
        }
        if matches!(self.state, FlowState::Streaming | FlowState::Injecting) {
            // The TSval this segment will carry (`segment_to_client` computes
            // the same value for the same `now`).
            let tsval = self.ts_ok.then(|| self.tsval_now(now));
            let sender = self.sender.as_mut()?;
            if let Some(seg) = sender.next_segment(now, tsval) {
                sender.hole_sent(&seg);
                scratch.clear();
                if !sender.read(&seg, scratch) {
                    // Cannot happen: the sender only offers held bytes. Never
                    // emit bytes we were not given.
                    return None;
                }
                let seq = self.seq_of(seg.offset);
                self.note_sent_end(seq.add(seg.len as u32 + u32::from(seg.fin)));
                let mut flags = TcpFlags::ACK;
                if seg.len > 0 {
                    flags = flags.with(TcpFlags::PSH);
                }
                if seg.fin {
                    flags = flags.with(TcpFlags::FIN);
                }
                let payload = std::mem::take(scratch);
                let tcp = self.segment_to_client(now, seq, flags, &payload);
                tcp.emit(buf);
                *scratch = payload;
                return Some(Destination::ToClient);
            }
        }
        if self.pending & pending::ACK_CLIENT != 0 {
            self.pending &= !pending::ACK_CLIENT;
            let seq = self.snd_nxt_seq();
            let seg = self.segment_to_client(now, seq, TcpFlags::ACK, &[]);
            seg.emit(buf);
            return Some(Destination::ToClient);
        }
        None
    }

    /// Diagnostic snapshot.
    pub(crate) fn info(&self) -> crate::FlowInfo {
        crate::FlowInfo {
            state: match self.state {
                FlowState::Handshake => "handshake",
                FlowState::Observing => "observing",
                FlowState::HeadSeen => "head-seen",
                FlowState::Streaming => "streaming",
                FlowState::Injecting => "injecting",
                FlowState::Finished => "finished",
                FlowState::Closed => "closed",
                FlowState::Failed => "failed",
            },
            cut: self.sender.as_ref().map(|_| self.cut),
            delivered: self.sender.as_ref().map(|s| s.una()),
            sent: self.sender.as_ref().map(|s| s.max_sent()),
            buffered: self.sender.as_ref().map_or(0, |s| s.buffered()),
            available: self.sender.as_ref().map(|s| s.available()),
            rto: self.sender.as_ref().map(|s| s.rto()),
            retransmitted: self.counters().retransmitted,
            timeouts: self.counters().timeouts,
            spurious_timeouts: self.counters().spurious_timeouts,
        }
    }

    /// The sender's counters (zero for flows that were not accelerated).
    pub(crate) fn counters(&self) -> SenderCounters {
        self.sender
            .as_ref()
            .map_or_else(SenderCounters::default, |s| s.counters())
    }
}

/// Trims a segment's payload to `keep` bytes (clearing FIN), fixing the IP
/// length and both checksums.
fn trim_segment(pkt: &mut [u8], meta: &IpTcpMeta, seg: &SegInfo, keep: usize) -> Verdict {
    let new_len = seg.payload_at + keep;
    if new_len > u16::MAX as usize + 40 {
        return Verdict::Drop;
    }
    if meta.is_ipv4() {
        let mut ip = Ipv4Packet::new_unchecked(&mut pkt[..]);
        ip.update_total_len(new_len as u16);
    } else {
        let mut ip = Ipv6Packet::new_unchecked(&mut pkt[..]);
        ip.set_payload_len((new_len - 40) as u16);
    }
    let Ok(mut tcp) = TcpPacket::new_checked(&mut pkt[meta.tcp_offset..new_len]) else {
        return Verdict::Drop;
    };
    let f = tcp.flags().without(TcpFlags::FIN);
    let hl = tcp.header_len();
    tcp.set_header_len_and_flags(hl, f);
    tcp.fill_checksum(meta.src, meta.dst);
    Verdict::AcceptModified { len: new_len }
}
