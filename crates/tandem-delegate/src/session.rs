//! The requesting side: one accelerated download at router A.
//!
//! [`Node::open_session`] registers a random session key, negotiates with
//! every configured neighbour in parallel (one peer connection per
//! neighbour and session), starts A's own Range fetcher, and runs the
//! [`Planner`] over the requested body range. Pieces go to whichever
//! sources have committed; bytes come back as [`Chunk`]s, in arrival order
//! (not body order), each body byte exactly once.
//!
//! Calling contract: read chunks with [`Session::next`] until it returns
//! `Ok(None)` (every byte delivered) or an error; report the caller's
//! in-order progress with [`Session::delivered`] (the planner requests at
//! most `planner.window` bytes beyond it, which bounds what the caller must
//! buffer); drop the session to cancel it (neighbours are told, keys are
//! released). [`SessionError::ResourceChanged`] means the origin now serves
//! other bytes: the caller must not splice anything more and should reset
//! the client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tandem_fetch::{FetchConfig, RangeFetcher, Resource};
use tandem_http::{FORWARDED_HEADERS, RequestHead};
use tandem_peer::{
    ByteRange, Message, Negotiate, PeerConnection, PieceErrorKind, RefuseReason, SessionKey,
    message,
};
use tandem_plan::{
    PieceId, PlanError, PlanEvent, Planner, PlannerConfig, RangeSet, Rate, SourceId, SourceSpec,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::node::{NeighbourConfig, Node, plan_key};
use crate::worker::{CancelSet, PieceJob, WorkerLimits, run_worker};

/// What a session downloads.
#[derive(Debug, Clone)]
pub struct Download {
    /// The origin address the client used (neighbours fetch from the same).
    pub origin: SocketAddr,
    /// The client's request head (target, Host, forwardable headers).
    pub request: RequestHead,
    /// The validator of the origin's response (sent as `If-Range`).
    pub validator: tandem_http::Validator,
    /// Full body length of the response.
    pub body_length: u64,
    /// The body bytes this session must deliver (e.g. from the cut to the
    /// end).
    pub range: Range<u64>,
}

/// Settings of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Planner settings (window, piece sizes, stall timeout, ...).
    pub planner: PlannerConfig,
    /// A's own Range fetcher; `None` to use neighbours only.
    pub local_fetch: Option<FetchConfig>,
    /// A's uplink (bits/s): seed of the local fetcher's rate estimate.
    pub local_rate_bps: u64,
    /// Seed of a peer's rate when it commits without a rate (bits/s).
    pub default_peer_rate_bps: u64,
    /// Round trip to the origin, seed of the planner's latency model.
    pub origin_rtt: Duration,
    /// Connect + handshake + answer to `Negotiate` must take no longer.
    pub negotiate_timeout: Duration,
    /// Hand out no piece before every neighbour answered (or timed out).
    pub wait_for_negotiation: bool,
    /// Delegate requests that carry `Cookie`/`Authorization` (and forward
    /// those headers). Default false: such sessions use A's fetcher only.
    pub delegate_credentials: bool,
    /// Hops the neighbours may sub-delegate further.
    pub hop_budget: u8,
    /// Chunks buffered between the session task and the caller.
    pub channel_capacity: usize,
    /// A's own fetcher sends its first request this long after the session
    /// opens (its pieces are assigned at once and wait). Router A's daemon
    /// sets it to about the time the original flow needs to reach the cut,
    /// less a request round trip: before that, A's uplink is busy with the
    /// original flow, and an early local fetch would only slow it down and
    /// delay the cut (measured in the namespace lab).
    pub local_start_delay: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            planner: PlannerConfig::default(),
            local_fetch: Some(FetchConfig::default()),
            local_rate_bps: 20_000_000,
            default_peer_rate_bps: 20_000_000,
            origin_rtt: Duration::from_millis(50),
            negotiate_timeout: Duration::from_secs(3),
            wait_for_negotiation: false,
            delegate_credentials: false,
            hop_budget: 0,
            channel_capacity: 64,
            local_start_delay: Duration::ZERO,
        }
    }
}

/// Body bytes at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Body offset of `bytes[0]`.
    pub offset: u64,
    /// The bytes (at most 64 KiB).
    pub bytes: Bytes,
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The download description is unusable.
    #[error("invalid download: {0}")]
    Invalid(&'static str),
    /// The session key is already committed on this router.
    #[error("session key already in use on this router")]
    Duplicate,
    /// The origin serves a different resource now (If-Range failed). No
    /// byte of the new version was delivered.
    #[error("resource changed at the origin (reported by {by})")]
    ResourceChanged {
        /// Which source noticed.
        by: String,
    },
    /// No source is left (all refused, failed or gone).
    #[error("every source failed or refused")]
    AllSourcesLost,
    /// The planner reported misuse (a bug).
    #[error("planner: {0}")]
    Plan(#[from] PlanError),
    /// The session was cancelled or its task ended.
    #[error("session closed")]
    Closed,
}

/// Per-source counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// `"local"` or the neighbour's name.
    pub name: String,
    /// The source committed (always true for the local fetcher).
    pub committed: bool,
    /// The neighbour refused, and why.
    pub refused: Option<RefuseReason>,
    /// Body bytes received from it (duplicates included).
    pub bytes: u64,
    /// Why it was dropped, if it was.
    pub gone: Option<String>,
}

/// Counters of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// One entry per source, local first.
    pub sources: Vec<SourceStats>,
    /// Bytes handed to the caller.
    pub bytes_delivered: u64,
    /// Bytes received more than once (endgame duplicates) and dropped.
    pub duplicate_bytes: u64,
    /// Whether the neighbours were skipped because of credentials.
    pub credentials_not_delegated: bool,
    /// Sources the planner declared stalled (their pieces were cancelled
    /// and reassigned).
    pub stalls: u64,
}

enum SessionEvent {
    Data(Chunk),
    Done,
    Failed(SessionError),
}

/// A running session (see the module documentation). Dropping it cancels.
pub struct Session {
    key: SessionKey,
    events: mpsc::Receiver<SessionEvent>,
    delivered: watch::Sender<u64>,
    stats: Arc<Mutex<SessionStats>>,
    finished: Option<Result<(), SessionError>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// The session key sent to the neighbours.
    pub fn key(&self) -> SessionKey {
        self.key
    }

    /// The next chunk; `Ok(None)` once every byte of the range was
    /// delivered. After an error or `None`, keeps returning the same.
    pub async fn next(&mut self) -> Result<Option<Chunk>, SessionError> {
        if let Some(done) = &self.finished {
            return done.clone().map(|()| None);
        }
        let ev = self.events.recv().await;
        let result = match ev {
            Some(SessionEvent::Data(c)) => return Ok(Some(c)),
            Some(SessionEvent::Done) => Ok(()),
            Some(SessionEvent::Failed(e)) => Err(e),
            None => Err(SessionError::Closed),
        };
        self.finished = Some(result.clone());
        result.map(|()| None)
    }

    /// Reports that every body byte below `offset` left the caller's buffer
    /// (handed to the client): the planner may request up to `window` bytes
    /// beyond it.
    pub fn delivered(&self, offset: u64) {
        self.delivered.send_if_modified(|cur| {
            if offset > *cur {
                *cur = offset;
                true
            } else {
                false
            }
        });
    }

    /// Counters so far.
    pub fn stats(&self) -> SessionStats {
        lock(&self.stats).clone()
    }
}

impl Node {
    /// Opens a session for `download` (see [`Session`]). Must be called
    /// within a tokio runtime.
    pub fn open_session(
        &self,
        download: Download,
        config: SessionConfig,
    ) -> Result<Session, SessionError> {
        let range = download.range.clone();
        if range.start >= range.end || range.end > download.body_length {
            return Err(SessionError::Invalid("range empty or beyond the body"));
        }
        let planner = Planner::new(range.clone(), config.planner.clone())?;
        let key = SessionKey::random();
        {
            let now = self.now();
            let mut table = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            table
                .try_commit(plan_key(&key), None, now)
                .map_err(|_| SessionError::Duplicate)?;
        }
        let (events_tx, events_rx) = mpsc::channel(config.channel_capacity.max(1));
        let (delivered_tx, delivered_rx) = watch::channel(range.start);
        let stats = Arc::new(Mutex::new(SessionStats::default()));
        let (inbox_tx, inbox_rx) = mpsc::channel(64);
        let mut task = SessionTask {
            node: self.clone(),
            key,
            start: Instant::now(),
            planner,
            slots: Vec::new(),
            by_source: HashMap::new(),
            inbox: inbox_rx,
            local_rx: None,
            events: events_tx,
            delivered: delivered_rx,
            received: RangeSet::new(),
            stats: stats.clone(),
            wait_for_negotiation: config.wait_for_negotiation,
            origin_rtt: config.origin_rtt,
            default_peer_rate: Rate::from_bytes_per_sec(config.default_peer_rate_bps as f64 / 8.0),
            complete: false,
        };
        task.start_local(&download, &config);
        task.start_peers(&download, &config, &inbox_tx);
        drop(inbox_tx);
        let span = tracing::info_span!("session", %key);
        tokio::spawn(task.run().instrument(span));
        Ok(Session {
            key,
            events: events_rx,
            delivered: delivered_tx,
            stats,
            finished: None,
        })
    }
}

enum SlotKind {
    Local {
        jobs: mpsc::UnboundedSender<PieceJob>,
        cancelled: CancelSet,
    },
    Peer {
        cmds: mpsc::UnboundedSender<Message>,
        link: Rate,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Pending,
    Active(SourceId),
    Dead,
}

struct Slot {
    name: String,
    kind: SlotKind,
    state: SlotState,
    advertised: Option<u64>,
}

/// An event from one neighbour's peer task.
pub(crate) struct Inbound {
    pub(crate) slot: usize,
    pub(crate) ev: SourceEvent,
}

/// What a peer task reports.
pub(crate) enum SourceEvent {
    Committed { rate_bps: u64, parallel: u16 },
    Refused(RefuseReason),
    Msg(Message),
    Gone(String),
}

struct SessionTask {
    node: Node,
    key: SessionKey,
    start: Instant,
    planner: Planner,
    slots: Vec<Slot>,
    by_source: HashMap<SourceId, usize>,
    inbox: mpsc::Receiver<Inbound>,
    local_rx: Option<mpsc::Receiver<Message>>,
    events: mpsc::Sender<SessionEvent>,
    delivered: watch::Receiver<u64>,
    /// Body bytes already handed to the caller.
    received: RangeSet,
    stats: Arc<Mutex<SessionStats>>,
    wait_for_negotiation: bool,
    origin_rtt: Duration,
    default_peer_rate: Rate,
    complete: bool,
}

fn bps(bits_per_sec: u64) -> Rate {
    Rate::from_bytes_per_sec(bits_per_sec as f64 / 8.0)
}

fn is_credential(name: &str) -> bool {
    name.eq_ignore_ascii_case("cookie") || name.eq_ignore_ascii_case("authorization")
}

/// The `Negotiate` for a download, or why it cannot be delegated.
fn negotiate_message(
    key: SessionKey,
    d: &Download,
    cfg: &SessionConfig,
) -> Result<Message, &'static str> {
    let mut headers = Vec::new();
    for (name, value) in d.request.headers.iter() {
        let wanted = FORWARDED_HEADERS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name))
            || (cfg.delegate_credentials && is_credential(name));
        if !wanted || headers.len() >= message::MAX_HEADERS {
            continue;
        }
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if name.len() <= message::MAX_HEADER_NAME && value.len() <= message::MAX_HEADER_VALUE {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    let host = d
        .request
        .host()
        .map_or_else(|| d.origin.to_string(), str::to_owned);
    let validator = match &d.validator {
        tandem_http::Validator::ETag(v) => tandem_peer::Validator::ETag(v.clone()),
        tandem_http::Validator::LastModified(v) => tandem_peer::Validator::LastModified(v.clone()),
    };
    let msg = Message::Negotiate(Box::new(Negotiate {
        session: key,
        origin: d.origin,
        host,
        target: d.request.target.clone(),
        headers,
        validator,
        body_length: d.body_length,
        range: ByteRange::new(d.range.start, d.range.end),
        hop_budget: cfg.hop_budget,
    }));
    msg.encode()
        .map_err(|_| "request does not fit a Negotiate")?;
    Ok(msg)
}

impl SessionTask {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn start_local(&mut self, d: &Download, cfg: &SessionConfig) {
        let Some(fetch) = cfg.local_fetch.clone() else {
            return;
        };
        let host = d
            .request
            .host()
            .map_or_else(|| d.origin.to_string(), str::to_owned);
        let resource = Resource {
            origin: d.origin,
            host,
            request: d.request.clone(),
            validator: d.validator.clone(),
            total_len: d.body_length,
        };
        let mut stat = SourceStats {
            name: "local".into(),
            committed: true,
            ..SourceStats::default()
        };
        let fetcher = match RangeFetcher::new(resource, fetch) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(session = %self.key, error = %e, "local fetcher unusable");
                stat.committed = false;
                stat.gone = Some(e.to_string());
                lock(&self.stats).sources.push(stat);
                return;
            }
        };
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(16);
        let cancelled = CancelSet::default();
        tokio::spawn(run_worker(
            self.key,
            fetcher,
            jobs_rx,
            cancelled.clone(),
            out_tx,
            WorkerLimits {
                start_at: Some(Instant::now() + cfg.local_start_delay),
                ..WorkerLimits::default()
            },
        ));
        let spec = SourceSpec::local(bps(cfg.local_rate_bps), cfg.origin_rtt);
        let slot = self.slots.len();
        let state = match self.planner.add_source(spec, self.now()) {
            Ok(sid) => {
                self.by_source.insert(sid, slot);
                SlotState::Active(sid)
            }
            Err(_) => SlotState::Dead,
        };
        self.slots.push(Slot {
            name: "local".into(),
            kind: SlotKind::Local { jobs, cancelled },
            state,
            advertised: None,
        });
        self.local_rx = Some(out_rx);
        lock(&self.stats).sources.push(stat);
    }

    fn start_peers(&mut self, d: &Download, cfg: &SessionConfig, inbox: &mpsc::Sender<Inbound>) {
        let credentials = d.request.headers.iter().any(|(n, _)| is_credential(n));
        if credentials && !cfg.delegate_credentials {
            tracing::debug!(session = %self.key, "request carries credentials: not delegated");
            lock(&self.stats).credentials_not_delegated = true;
            return;
        }
        let negotiate = match negotiate_message(self.key, d, cfg) {
            Ok(m) => m,
            Err(why) => {
                tracing::debug!(session = %self.key, why, "not delegated");
                return;
            }
        };
        let neighbours: Vec<NeighbourConfig> = self.node.inner.config.neighbours.clone();
        for n in neighbours {
            let Some(addr) = n.addr else { continue };
            let (cmds, cmds_rx) = mpsc::unbounded_channel();
            let slot = self.slots.len();
            self.slots.push(Slot {
                name: n.name.clone(),
                kind: SlotKind::Peer {
                    cmds,
                    link: bps(n.link_bps),
                },
                state: SlotState::Pending,
                advertised: None,
            });
            lock(&self.stats).sources.push(SourceStats {
                name: n.name.clone(),
                ..SourceStats::default()
            });
            let span = tracing::info_span!("session_peer", session = %self.key, peer = %n.name);
            tokio::spawn(
                peer_task(PeerTask {
                    node: self.node.clone(),
                    session: self.key,
                    addr,
                    neighbour: n,
                    negotiate: negotiate.clone(),
                    slot,
                    inbox: inbox.clone(),
                    cmds: cmds_rx,
                    timeout: cfg.negotiate_timeout,
                })
                .instrument(span),
            );
        }
    }

    async fn run(mut self) {
        let result = self.run_inner().await;
        // Dropping the command channels makes the peer tasks send Cancel
        // and close; the local worker stops after its current chunk.
        self.slots.clear();
        self.local_rx = None;
        self.node.release(&self.key);
        let ev = match result {
            Ok(()) => SessionEvent::Done,
            Err(e) => {
                tracing::info!(session = %self.key, error = %e, "session failed");
                SessionEvent::Failed(e)
            }
        };
        let _ = self.events.send(ev).await;
    }

    async fn run_inner(&mut self) -> Result<(), SessionError> {
        loop {
            self.pump()?;
            if self.complete || self.received.contains_range(&self.planner.body()) {
                return Ok(());
            }
            if self.slots.iter().all(|s| s.state == SlotState::Dead) {
                return Err(SessionError::AllSourcesLost);
            }
            let deadline = self.planner.poll_timeout().map(|d| self.start + d);
            tracing::trace!(
                session = %self.key,
                cursor = self.planner.cursor(),
                live = self.planner.live_pieces(),
                received = self.received.len(),
                timeout = ?self.planner.poll_timeout(),
                now = ?self.now(),
                "waiting"
            );
            tokio::select! {
                ev = self.inbox.recv() => match ev {
                    Some(i) => self.on_event(i).await?,
                    // All peer tasks ended: their slots report Gone first.
                    None => {
                        for s in &mut self.slots {
                            if matches!(s.kind, SlotKind::Peer { .. }) && s.state == SlotState::Pending {
                                s.state = SlotState::Dead;
                            }
                        }
                    }
                },
                m = recv_opt(&mut self.local_rx) => {
                    let ev = match m {
                        Some(m) => SourceEvent::Msg(m),
                        None => {
                            self.local_rx = None;
                            SourceEvent::Gone("local fetcher stopped".into())
                        }
                    };
                    self.on_event(Inbound { slot: 0, ev }).await?;
                }
                r = self.delivered.changed() => match r {
                    Ok(()) => {
                        let off = *self.delivered.borrow_and_update();
                        let now = self.now();
                        self.planner.on_delivered(off, now);
                    }
                    Err(_) => return Err(SessionError::Closed),
                },
                () = sleep_opt(deadline) => {
                    let now = self.now();
                    self.planner.handle_timeout(now);
                }
            }
        }
    }

    fn negotiating(&self) -> bool {
        self.wait_for_negotiation && self.slots.iter().any(|s| s.state == SlotState::Pending)
    }

    /// Acts on planner events and hands out assignments until quiet.
    fn pump(&mut self) -> Result<(), SessionError> {
        loop {
            while let Some(ev) = self.planner.poll_event() {
                match ev {
                    PlanEvent::Cancel { piece, source, .. } => self.cancel_piece(source, piece),
                    PlanEvent::SourceStalled { source } => {
                        let name = self.source_name(source);
                        tracing::info!(session = %self.key, source = %name, "source stalled");
                        lock(&self.stats).stalls += 1;
                    }
                    PlanEvent::Complete => self.complete = true,
                    // Emitted once; neighbours still negotiating may yet
                    // commit, so the slots decide (see `run_inner`).
                    PlanEvent::SourcesExhausted => {
                        if !self.slots.iter().any(|s| s.state == SlotState::Pending) {
                            return Err(SessionError::AllSourcesLost);
                        }
                    }
                }
            }
            if self.complete || self.negotiating() {
                return Ok(());
            }
            let mut assigned = false;
            for slot in 0..self.slots.len() {
                let SlotState::Active(sid) = self.slots[slot].state else {
                    continue;
                };
                let now = self.now();
                while let Some(a) = self.planner.next_assignment(sid, now) {
                    assigned = true;
                    if !self.dispatch(slot, a.piece, a.range) {
                        self.kill(slot, "source task gone".into())?;
                        break;
                    }
                }
            }
            if !assigned {
                return Ok(());
            }
        }
    }

    fn source_name(&self, source: SourceId) -> String {
        self.by_source
            .get(&source)
            .and_then(|s| self.slots.get(*s))
            .map_or_else(|| format!("{source:?}"), |s| s.name.clone())
    }

    fn dispatch(&mut self, slot: usize, piece: PieceId, range: Range<u64>) -> bool {
        tracing::trace!(session = %self.key, source = %self.slots[slot].name, piece = piece.0, ?range, "assign");
        match &self.slots[slot].kind {
            SlotKind::Local { jobs, .. } => jobs
                .send(PieceJob {
                    piece: piece.0,
                    range,
                })
                .is_ok(),
            SlotKind::Peer { cmds, .. } => cmds
                .send(Message::PieceRequest {
                    session: self.key,
                    piece: piece.0,
                    range: ByteRange::new(range.start, range.end),
                })
                .is_ok(),
        }
    }

    fn cancel_piece(&mut self, source: SourceId, piece: PieceId) {
        let Some(slot) = self.by_source.get(&source).and_then(|s| self.slots.get(*s)) else {
            return;
        };
        match &slot.kind {
            SlotKind::Local { cancelled, .. } => cancelled.insert(piece.0),
            SlotKind::Peer { cmds, .. } => {
                let _ = cmds.send(Message::PieceCancel {
                    session: self.key,
                    piece: piece.0,
                });
            }
        }
    }

    /// Drops a source: its pieces go back to the pool.
    fn kill(&mut self, slot: usize, why: String) -> Result<(), SessionError> {
        let Some(s) = self.slots.get_mut(slot) else {
            return Ok(());
        };
        tracing::info!(session = %self.key, source = %s.name, why = %why, "source dropped");
        let prev = std::mem::replace(&mut s.state, SlotState::Dead);
        if let SlotKind::Peer { cmds, .. } = &mut s.kind {
            // Closing the channel makes the peer task cancel and disconnect.
            let (closed, _) = mpsc::unbounded_channel();
            *cmds = closed;
        }
        if let Some(st) = lock(&self.stats).sources.get_mut(slot) {
            st.gone.get_or_insert(why);
        }
        if let SlotState::Active(sid) = prev {
            let now = self.now();
            self.planner.source_gone(sid, now)?;
        }
        Ok(())
    }

    async fn on_event(&mut self, inbound: Inbound) -> Result<(), SessionError> {
        let slot = inbound.slot;
        let Some(state) = self.slots.get(slot).map(|s| s.state) else {
            return Ok(());
        };
        match inbound.ev {
            SourceEvent::Committed { rate_bps, parallel } => {
                if state != SlotState::Pending {
                    return Ok(());
                }
                let s = &self.slots[slot];
                let link = match &s.kind {
                    SlotKind::Peer { link, .. } => Some(*link),
                    SlotKind::Local { .. } => None,
                };
                let rate = match rate_bps {
                    0 => s.advertised.map_or(self.default_peer_rate, bps),
                    r => bps(r),
                };
                let spec = SourceSpec {
                    link_rate: link.filter(|l| l.bytes_per_sec() > 0.0),
                    depth: (parallel > 0).then_some(usize::from(parallel)),
                    ..SourceSpec::peer(rate, link.unwrap_or(rate), self.origin_rtt * 2)
                };
                let now = self.now();
                match self.planner.add_source(spec, now) {
                    Ok(sid) => {
                        self.by_source.insert(sid, slot);
                        self.slots[slot].state = SlotState::Active(sid);
                        if let Some(st) = lock(&self.stats).sources.get_mut(slot) {
                            st.committed = true;
                        }
                    }
                    Err(e) => self.kill(slot, e.to_string())?,
                }
            }
            SourceEvent::Refused(reason) => {
                if let Some(st) = lock(&self.stats).sources.get_mut(slot) {
                    st.refused = Some(reason);
                }
                self.kill(slot, format!("refused: {reason:?}"))?;
            }
            SourceEvent::Gone(why) => {
                if state != SlotState::Dead {
                    self.kill(slot, why)?;
                }
            }
            SourceEvent::Msg(m) => self.on_message(slot, state, m).await?,
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        slot: usize,
        state: SlotState,
        m: Message,
    ) -> Result<(), SessionError> {
        let SlotState::Active(sid) = state else {
            if let Message::Advertise { rate_bps } = m {
                self.slots[slot].advertised = Some(rate_bps);
            }
            return Ok(());
        };
        let now = self.now();
        tracing::trace!(session = %self.key, source = %self.slots[slot].name, kind = m.kind(), "from source");
        match m {
            Message::PieceData {
                piece,
                offset,
                bytes,
                ..
            } => {
                let len = bytes.len() as u64;
                if let Some(st) = lock(&self.stats).sources.get_mut(slot) {
                    st.bytes += len;
                }
                match self.planner.on_piece_data(PieceId(piece), len, now) {
                    Ok(()) => self.deliver(offset, bytes).await?,
                    // A piece the planner cancelled (stall, endgame): the
                    // planner does not count these bytes and will have them
                    // fetched again, so they must not reach the caller
                    // either, or the caller's cursor would pass bytes the
                    // planner still waits for.
                    Err(PlanError::UnknownPiece(_)) => {}
                    Err(e) => self.kill(slot, e.to_string())?,
                }
            }
            Message::PieceEnd { piece, .. } => {
                let _ = self.planner.on_piece_done(PieceId(piece), now);
            }
            Message::PieceError {
                piece,
                kind,
                detail,
                ..
            } => match kind {
                PieceErrorKind::ResourceChanged => {
                    return Err(SessionError::ResourceChanged {
                        by: self.slots[slot].name.clone(),
                    });
                }
                PieceErrorKind::Cancelled => {}
                _ => {
                    tracing::debug!(session = %self.key, source = %self.slots[slot].name, ?kind, %detail, "piece failed");
                    let _ = self.planner.on_piece_failed(PieceId(piece), now);
                }
            },
            Message::Advertise { rate_bps } => {
                let _ = self.planner.update_source_rate(sid, bps(rate_bps));
            }
            _ => {}
        }
        Ok(())
    }

    /// Hands the not-yet-delivered parts of `offset..offset+len` to the
    /// caller (endgame duplicates are delivered once).
    async fn deliver(&mut self, offset: u64, bytes: Bytes) -> Result<(), SessionError> {
        let end = offset + bytes.len() as u64;
        let mut pos = offset;
        let mut sent = 0u64;
        while pos < end {
            let start = self.received.first_missing(pos);
            if start >= end {
                break;
            }
            let stop = self
                .received
                .next_present(start)
                .map_or(end, |p| p.min(end));
            let part = bytes.slice((start - offset) as usize..(stop - offset) as usize);
            sent += stop - start;
            self.events
                .send(SessionEvent::Data(Chunk {
                    offset: start,
                    bytes: part,
                }))
                .await
                .map_err(|_| SessionError::Closed)?;
            pos = stop;
        }
        self.received.insert(offset..end);
        let mut st = lock(&self.stats);
        st.bytes_delivered += sent;
        st.duplicate_bytes += (end - offset) - sent;
        Ok(())
    }
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Message>>) -> Option<Message> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One neighbour of one session (used by sessions and by relays).
pub(crate) struct PeerTask {
    pub(crate) node: Node,
    pub(crate) session: SessionKey,
    pub(crate) addr: SocketAddr,
    pub(crate) neighbour: NeighbourConfig,
    pub(crate) negotiate: Message,
    pub(crate) slot: usize,
    pub(crate) inbox: mpsc::Sender<Inbound>,
    pub(crate) cmds: mpsc::UnboundedReceiver<Message>,
    pub(crate) timeout: Duration,
}

/// One neighbour of one session: connect, negotiate, then relay piece
/// requests out and piece messages in. Closing `cmds` cancels.
pub(crate) async fn peer_task(mut t: PeerTask) {
    let slot = t.slot;
    let report = |ev| Inbound { slot, ev };
    let cfg = &t.node.inner.config;
    let setup = async {
        let mut conn = PeerConnection::connect(
            t.addr,
            &cfg.keys,
            &t.neighbour.key,
            t.node.hello(),
            cfg.peer,
        )
        .await?;
        conn.send(&t.negotiate).await?;
        loop {
            match conn.recv().await? {
                Message::Commit {
                    rate_bps, parallel, ..
                } => return Ok((conn, Ok((rate_bps, parallel)))),
                Message::Refuse { reason, .. } => return Ok((conn, Err(reason))),
                _ => continue,
            }
        }
    };
    let result: Result<_, tandem_peer::PeerError> =
        match tokio::time::timeout(t.timeout, setup).await {
            Ok(r) => r,
            Err(_) => {
                let _ = t
                    .inbox
                    .send(report(SourceEvent::Gone("negotiation timed out".into())))
                    .await;
                return;
            }
        };
    let (mut conn, answer) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = t
                .inbox
                .send(report(SourceEvent::Gone(format!("connect: {e}"))))
                .await;
            return;
        }
    };
    match answer {
        Err(reason) => {
            let _ = t.inbox.send(report(SourceEvent::Refused(reason))).await;
            let _ = conn.shutdown().await;
            return;
        }
        Ok((rate_bps, parallel)) => {
            if t.inbox
                .send(report(SourceEvent::Committed { rate_bps, parallel }))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    loop {
        // Take a message only when the session has room for it. While it
        // has none (its caller is not reading), keep the connection alive
        // without reading: the neighbour's data waits in the socket.
        let permit = tokio::select! {
            p = t.inbox.reserve() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            e = conn.keep_alive() => {
                let _ = t.inbox.send(report(SourceEvent::Gone(e.to_string()))).await;
                return;
            }
            c = t.cmds.recv() => {
                if !command(&mut conn, t.session, c, &t.inbox, slot).await {
                    return;
                }
                continue;
            }
        };
        tokio::select! {
            r = conn.recv() => match r {
                Ok(m) => permit.send(report(SourceEvent::Msg(m))),
                Err(e) => {
                    permit.send(report(SourceEvent::Gone(e.to_string())));
                    return;
                }
            },
            c = t.cmds.recv() => {
                drop(permit);
                if !command(&mut conn, t.session, c, &t.inbox, slot).await {
                    return;
                }
            }
        }
    }
}

/// Sends one command of the session to the neighbour; `false` when the
/// peer task must end (the session closed its channel, or the connection
/// failed).
async fn command(
    conn: &mut PeerConnection,
    session: SessionKey,
    cmd: Option<Message>,
    inbox: &mpsc::Sender<Inbound>,
    slot: usize,
) -> bool {
    match cmd {
        Some(m) => match conn.send(&m).await {
            Ok(_) => true,
            Err(e) if e.is_fatal() => {
                let ev = SourceEvent::Gone(e.to_string());
                let _ = inbox.send(Inbound { slot, ev }).await;
                false
            }
            Err(e) => {
                tracing::debug!(%session, error = %e, "message not sent");
                true
            }
        },
        None => {
            let _ = conn.send(&Message::Cancel { session }).await;
            let _ = conn.shutdown().await;
            false
        }
    }
}
