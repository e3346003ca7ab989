//! The daemon runtime: joins the NFQUEUE thread, the splice engine and the
//! delegation sessions.
//!
//! ```text
//!  nfq thread ──packet──► Engine (Mutex) ──transmits──► Injector (raw sockets)
//!      │  verdict ◄───────────┘  │ events
//!      │                         ▼
//!      │            decide(): eligibility, label the connection
//!      │                         │ Accelerated{flow, cut, download}
//!      ▼                         ▼
//!   kernel          tokio: one task per download: Session::next() ──► push_piece
//!                          timer task: poll_timeout ──► handle_timeout
//!                          peer server (Node::serve), status socket
//! ```
//!
//! Only this module reads the clock (`Instant::now()`), and only here are
//! decisions turned into firewall labels (verdict REPEAT + mark, see
//! `rules.rs`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tandem_delegate::{
    Chunk, Download, NeighbourConfig, Node, NodeConfig, Session, SessionConfig, SessionError,
};
use tandem_http::{Decision, EligibilityConfig, RequestHead};
use tandem_peer::{KeyPair, PublicKey};
use tandem_splice::{Destination, Direction, Engine, EngineConfig, Event, FlowId, SpliceError};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{Config, Marks, Policy};
use crate::platform::{self, InjectBatch, Injector, PacketMeta, QueueVerdict};
use crate::status::{DownloadStatus, PeerStatus, Snapshot};

/// [`Shared::timer_deadline`] when the engine has no deadline.
const NO_DEADLINE: u64 = u64::MAX;

/// The timer's longest sleep while downloads are accelerated (see
/// [`Shared::arm_timer`]); below the engine's `min_rto` (200 ms).
const TIMER_HEARTBEAT: Duration = Duration::from_millis(100);

/// How long the original flow keeps streaming after the decision, at the
/// uplink's rate, before the cut: time for the sessions to negotiate and the
/// first pieces to arrive.
const STARTUP: Duration = Duration::from_millis(300);

/// A's own fetcher starts this long before the original flow is expected to
/// reach the cut: a new connection needs a handshake, a request round trip
/// and slow start before it carries the uplink's rate.
const LOCAL_LEAD: Duration = Duration::from_millis(100);

/// How often (ms) a download's per-source byte counts in the status are
/// refreshed from its session.
const STATUS_REFRESH_MS: u32 = 250;

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let key_text = std::fs::read_to_string(&cfg.node.private_key_file).with_context(|| {
        format!(
            "node.private_key_file: cannot read {}",
            cfg.node.private_key_file.display()
        )
    })?;
    let keys = KeyPair::from_base64(key_text.trim())
        .map_err(|e| anyhow::anyhow!("node.private_key_file: {e}"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg, keys))
}

/// Everything the queue thread and the tokio tasks share.
struct Shared {
    cfg: Config,
    marks: Marks,
    eligibility: EligibilityConfig,
    /// The engine and the buffer its transmits are written into.
    engine: Mutex<EngineState>,
    injector: Injector,
    lan_ifindex: Vec<u32>,
    /// Wakes the timer task to recompute the engine's deadline.
    wake: Notify,
    /// The deadline the timer task sleeps until, in nanoseconds since
    /// `started` ([`NO_DEADLINE`]: none). Written by the timer task and read
    /// by [`Shared::step`], both under the engine's lock: a step wakes the
    /// timer only when the engine's next deadline moved earlier than this,
    /// not for every packet (a wake-up per packet cost most of the daemon's
    /// CPU in scheduler work).
    /// (A mutex, not an `AtomicU64`: 32-bit MIPS and PowerPC routers have
    /// no 64-bit atomics; it is only taken under the engine's lock.)
    timer_deadline: Mutex<u64>,
    /// Decisions and events for the tokio side.
    notices: mpsc::UnboundedSender<Notice>,
    counters: Mutex<Counters>,
    /// Flows whose response head never came (see [`HeadWatch`]); taken
    /// under the engine's lock, never the other way round.
    heads: Mutex<HeadWatch>,
    downloads: Mutex<HashMap<FlowId, DownloadStatus>>,
    /// The client's progress (body offset it acknowledged) per accelerated
    /// flow, fed by the engine's `Event::Progress` and read by the flow's
    /// download task, which reports it to the session's planner.
    progress: Mutex<HashMap<FlowId, watch::Sender<u64>>>,
    /// Per-neighbour state learnt from sessions, by name.
    peers: Mutex<HashMap<String, PeerStatus>>,
    active: AtomicU32,
    stopping: AtomicBool,
    started: Instant,
}

struct EngineState {
    engine: Engine,
    /// The packets one step emitted, sent together.
    batch: InjectBatch,
}

#[derive(Default)]
struct Counters {
    decisions: BTreeMap<String, u64>,
    packets: BTreeMap<String, u64>,
}

/// What called the engine before a drain of its events: tells a flow the
/// engine forgot because it saw no packet of it for `idle_timeout` (the
/// sweep) from one a packet ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// A queued packet, the table not full: the engine forgets flows only
    /// for what the packet says (a reset, not HTTP, a 1xx response...).
    Packet,
    /// The timer (its sweep expires idle flows), a piece, a failure, or a
    /// queued packet that found the flow table full (a new SYN then sweeps
    /// idle flows first).
    MaySweep,
}

/// Counts the connections the daemon stopped seeing before it could decide.
///
/// The engine reports every flow's response head (`Event::ResponseHead`,
/// which the daemon decides at once) and every flow it forgets after the
/// handshake (`Event::FlowClosed`). A flow forgotten by the sweep (no
/// packet for `splice.idle_timeout_s`) without a response head is one the
/// daemon never decided: with the firewall rules, its response head came
/// after the first `queue.first_packets` packets of the connection (the
/// kernel had stopped queueing it; it is not accelerated), or the
/// connection ended with FINs or stayed idle, within those packets,
/// without a response (e.g. a browser's unused preconnection: the engine
/// keeps an undecided flow until it expires).
#[derive(Debug, Default)]
struct HeadWatch {
    /// Flows whose response head the engine reported and that it has not
    /// forgotten yet (at most the engine's `max_flows`).
    heads: HashSet<FlowId>,
    /// Flows the sweep forgot without a response head (`undecided_expired`
    /// in the status).
    undecided_expired: u64,
}

impl HeadWatch {
    /// Follows one engine event, drained after `input`. Returns whether it
    /// counted the event's flow as expired undecided.
    fn observe(&mut self, ev: &Event, input: Input) -> bool {
        match ev {
            Event::ResponseHead { flow, .. } => {
                self.heads.insert(*flow);
                false
            }
            Event::FlowClosed { flow } => {
                let decided = self.heads.remove(flow);
                let expired = !decided && input == Input::MaySweep;
                if expired {
                    self.undecided_expired += 1;
                }
                expired
            }
            _ => false,
        }
    }
}

/// What the queue thread (or an engine drain anywhere) tells the tokio side.
enum Notice {
    Accelerated(Box<Accelerated>),
    /// The client has every byte before the cut: injection may begin.
    CutDone(FlowId),
    /// The flow finished, failed or was forgotten: its session ends.
    Ended(FlowId),
}

/// Where a download's flow stands, as its task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FlowStage {
    /// The original flow still delivers the bytes before the cut.
    BeforeCut,
    /// The client acknowledged the cut: pieces may be injected.
    CutDone,
    /// The engine is done with the flow.
    Ended,
}

struct Accelerated {
    flow: FlowId,
    client: SocketAddr,
    cut: u64,
    download: Download,
    /// The client's progress (see [`Shared::progress`]).
    progress: watch::Receiver<u64>,
    /// This router's round trip to the origin, if the handshake was seen.
    origin_rtt: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn count(&self, table: fn(&mut Counters) -> &mut BTreeMap<String, u64>, key: &str) {
        self.add(table, key, 1);
    }

    fn add(&self, table: fn(&mut Counters) -> &mut BTreeMap<String, u64>, key: &str, n: u64) {
        let mut c = lock(&self.counters);
        *table(&mut c).entry(key.to_string()).or_default() += n;
    }

    /// Handles the engine's events and, with a `batch`, sends what the
    /// engine emitted (without one the transmits wait in the engine for a
    /// later [`Shared::flush`]). Returns the connection label (state bits)
    /// for the packet being handled, if an event decided one.
    fn drain(
        &self,
        engine: &mut Engine,
        now: Instant,
        input: Input,
        batch: Option<&mut InjectBatch>,
    ) -> Option<u32> {
        let mut label = None;
        while let Some(ev) = engine.poll_event() {
            if matches!(ev, Event::ResponseHead { .. } | Event::FlowClosed { .. })
                && lock(&self.heads).observe(&ev, input)
            {
                debug!(
                    ?ev,
                    "flow expired before its response head was seen (undecided)"
                );
            }
            match ev {
                Event::ResponseHead {
                    flow,
                    client,
                    origin,
                    request,
                    response,
                    body_len,
                    client_acked,
                    pipelined,
                    origin_rtt,
                } => {
                    label = Some(self.decide(
                        engine,
                        now,
                        flow,
                        client,
                        origin,
                        *request,
                        &response,
                        body_len,
                        client_acked,
                        pipelined,
                        origin_rtt,
                    ));
                }
                Event::CutDone { flow, cut } => {
                    debug!(?flow, cut, "cut done");
                    let _ = self.notices.send(Notice::CutDone(flow));
                }
                Event::Finished { flow } => {
                    info!(?flow, "accelerated download finished");
                    self.count(|c| &mut c.packets, "downloads_finished");
                    let _ = self.notices.send(Notice::Ended(flow));
                }
                Event::Failed { flow, reason } => {
                    warn!(?flow, ?reason, "accelerated download failed; client reset");
                    self.count(|c| &mut c.packets, "downloads_failed");
                    let _ = self.notices.send(Notice::Ended(flow));
                }
                Event::Progress { flow, delivered } => {
                    if let Some(tx) = lock(&self.progress).get(&flow) {
                        tx.send_replace(delivered);
                    }
                }
                Event::FlowClosed { flow } => {
                    let _ = self.notices.send(Notice::Ended(flow));
                }
            }
        }
        if let Some(batch) = batch {
            self.flush(engine, now, batch);
        }
        label
    }

    /// Sends what the engine emitted: each packet is written straight into
    /// the batch; the batch goes out with sendmmsg whenever it is full and
    /// at the end.
    fn flush(&self, engine: &mut Engine, now: Instant, batch: &mut InjectBatch) {
        batch.clear();
        loop {
            let more = match engine.poll_transmit(now, batch.next_buf()) {
                Some(t) => {
                    batch.commit(t.to == Destination::ToOrigin);
                    true
                }
                None => false,
            };
            if !batch.is_empty() && (batch.is_full() || !more) {
                let errors = self.injector.send_batch(batch);
                batch.clear();
                if errors > 0 {
                    debug!(errors, "inject failed");
                    self.add(|c| &mut c.packets, "inject_errors", errors as u64);
                }
            }
            if !more {
                break;
            }
        }
    }

    /// The decision on a response head. Returns the connection label.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        engine: &mut Engine,
        now: Instant,
        flow: FlowId,
        client: SocketAddr,
        origin: SocketAddr,
        request: RequestHead,
        response: &tandem_http::ResponseHead,
        body_len: Option<u64>,
        client_acked: u64,
        pipelined: bool,
        origin_rtt: Option<Duration>,
    ) -> u32 {
        let pass = |engine: &mut Engine, reason: &str| {
            engine.pass_through(flow);
            self.count(|c| &mut c.decisions, reason);
            debug!(?flow, reason, "pass through");
            self.marks.pass
        };
        let (len, validator) = match tandem_http::decide(&request, response, &self.eligibility) {
            Decision::Accelerate {
                body_len: len,
                validator,
            } => (len, validator),
            Decision::PassThrough(reason) => return pass(engine, reason.as_str()),
        };
        if pipelined {
            return pass(engine, "pipelined");
        }
        if body_len != Some(len) {
            return pass(engine, "no_content_length");
        }
        if self.stopping.load(Ordering::Relaxed) {
            return pass(engine, "stopping");
        }
        if self.cfg.peers.is_empty() {
            return pass(engine, "no_peers");
        }
        let active = self.active.load(Ordering::Relaxed) as usize;
        if active >= self.cfg.splice.max_downloads {
            return pass(engine, "busy");
        }
        let startup = (self.cfg.uplink.rate_mbit * 1e6 / 8.0 * STARTUP.as_secs_f64()) as u64;
        let requested = client_acked.saturating_add(startup.max(64 * 1024));
        if requested >= len {
            return pass(engine, "nearly_done");
        }
        let cut = match engine.accelerate(now, flow, requested) {
            Ok(cut) if cut < len => cut,
            Ok(_) => return pass(engine, "nearly_done"),
            Err(e) => {
                debug!(?flow, error = %e, "cannot accelerate");
                let reason = match e {
                    SpliceError::Pipelined => "pipelined",
                    _ => "engine_refused",
                };
                return pass(engine, reason);
            }
        };
        self.active.fetch_add(1, Ordering::Relaxed);
        self.count(|c| &mut c.decisions, "accelerated");
        let url = format!(
            "http://{}{}",
            request.host().unwrap_or(&origin.to_string()),
            request.target
        );
        info!(?flow, %client, %origin, %url, len, cut, "accelerating");
        lock(&self.downloads).insert(
            flow,
            DownloadStatus {
                url,
                client: client.to_string(),
                size: len,
                delivered: client_acked,
                ..Default::default()
            },
        );
        let (progress_tx, progress) = watch::channel(cut);
        lock(&self.progress).insert(flow, progress_tx);
        let _ = self.notices.send(Notice::Accelerated(Box::new(Accelerated {
            flow,
            client,
            cut,
            progress,
            origin_rtt,
            download: Download {
                origin,
                request,
                validator,
                body_length: len,
                range: cut..len,
            },
        })));
        self.marks.own
    }

    /// One input to the engine: takes the clock, runs `f` under the engine's
    /// lock, sends what the engine emitted and handles its events, and wakes
    /// the timer task if the engine's next deadline is now earlier than the
    /// one it sleeps for. Returns `f`'s result and the connection label an
    /// event decided, if any.
    fn step<R>(&self, f: impl FnOnce(&mut Engine, Instant) -> R) -> (R, Option<u32>) {
        let now = Instant::now();
        let (r, label, wake) = {
            let mut st = lock(&self.engine);
            let st = &mut *st;
            let r = f(&mut st.engine, now);
            let label = self.drain(&mut st.engine, now, Input::MaySweep, Some(&mut st.batch));
            (r, label, self.deadline_moved_earlier(&st.engine))
        };
        if wake {
            self.wake.notify_one();
        }
        (r, label)
    }

    /// Whether `engine`'s next deadline is earlier than the one the timer
    /// task sleeps for (call under the engine's lock; see
    /// [`Shared::arm_timer`]): then the timer task must be woken.
    fn deadline_moved_earlier(&self, engine: &Engine) -> bool {
        self.deadline_nanos(engine.poll_timeout()) < *lock(&self.timer_deadline)
    }

    /// An engine deadline as nanoseconds since `started` (saturating; a
    /// deadline before `started` is 0, none is [`NO_DEADLINE`]).
    fn deadline_nanos(&self, d: Option<Instant>) -> u64 {
        d.map_or(NO_DEADLINE, |d| {
            u64::try_from(d.saturating_duration_since(self.started).as_nanos())
                .unwrap_or(NO_DEADLINE - 1)
                .min(NO_DEADLINE - 1)
        })
    }

    /// The timer task's side: reads the engine's next deadline and publishes
    /// it as the one it will sleep for, under the engine's lock (so that a
    /// concurrent [`Shared::step`] either sees the published value or runs
    /// before it is read).
    ///
    /// While downloads are accelerated the timer also wakes every
    /// [`TIMER_HEARTBEAT`]: shorter than any engine timer (`min_rto`), so a
    /// retransmission timer armed when the flight goes from empty to
    /// non-empty (after every burst, on a fast LAN) is never earlier than
    /// the published deadline and needs no wake-up of its own.
    fn arm_timer(&self) -> Option<Instant> {
        let st = lock(&self.engine);
        let mut d = st.engine.poll_timeout();
        if self.active.load(Ordering::Relaxed) > 0 {
            let beat = Instant::now() + TIMER_HEARTBEAT;
            d = Some(d.map_or(beat, |d| d.min(beat)));
        }
        *lock(&self.timer_deadline) = self.deadline_nanos(d);
        d
    }

    /// The queue thread's work for a batch of packets: one clock read and
    /// one engine lock for all of them; each packet's events are handled
    /// right after it (a decision labels that packet), what the engine
    /// emitted for the whole batch goes out together at the end, before
    /// any verdict is written back. Wakes the timer task as
    /// [`Shared::step`] does.
    fn on_batch(&self, pkts: &mut [platform::QueuedPacket]) {
        let now = Instant::now();
        let wake = {
            let mut st = lock(&self.engine);
            let st = &mut *st;
            for p in pkts.iter_mut() {
                let dir = if self.lan_ifindex.contains(&p.meta.indev) {
                    Direction::FromClient
                } else {
                    Direction::FromOrigin
                };
                // Only a new SYN that finds the table full makes the engine
                // sweep while it handles a packet.
                let input = if st.engine.flow_count() >= self.cfg.splice.max_flows {
                    Input::MaySweep
                } else {
                    Input::Packet
                };
                let verdict = st.engine.handle_packet(now, dir, &mut p.data);
                let label = self.drain(&mut st.engine, now, input, None);
                p.verdict = queue_verdict(&self.marks, verdict, label, p.meta, p.data.len());
            }
            self.flush(&mut st.engine, now, &mut st.batch);
            self.deadline_moved_earlier(&st.engine)
        };
        if wake {
            self.wake.notify_one();
        }
    }
}

/// The queue's verdict for a packet of length `len` from the engine's
/// verdict and the connection label (state bits) an event decided: a
/// labelled packet is re-queued with its mark's state bits replaced (the
/// rules save them into the connmark); an edit of the same length is an
/// in-place modification, a shorter one a truncation.
fn queue_verdict(
    marks: &Marks,
    verdict: tandem_splice::Verdict,
    label: Option<u32>,
    meta: PacketMeta,
    len: usize,
) -> QueueVerdict {
    match (verdict, label) {
        (tandem_splice::Verdict::Accept, Some(state)) => {
            QueueVerdict::RepeatWithMark(meta.mark & !marks.mask | marks.decided | state)
        }
        (tandem_splice::Verdict::Accept, None) => QueueVerdict::Accept,
        (tandem_splice::Verdict::AcceptModified { len: l }, _) if l == len => {
            QueueVerdict::AcceptModified
        }
        (tandem_splice::Verdict::AcceptModified { len: l }, _) => QueueVerdict::AcceptTruncated(l),
        (tandem_splice::Verdict::Drop, _) => QueueVerdict::Drop,
    }
}

async fn run_async(cfg: Config, keys: KeyPair) -> anyhow::Result<()> {
    let marks = cfg.queue.marks();
    let injector = Injector::new(marks.inject, marks.inject | marks.own)
        .context("cannot open raw sockets for injection (root or CAP_NET_RAW needed)")?;
    let queue = platform::open_queue(
        cfg.queue.number,
        cfg.queue.invalid_number(),
        cfg.queue.max_len,
    )
    .with_context(|| {
        format!(
            "queue.number: cannot bind NFQUEUE {} and {} (another daemon bound? root needed)",
            cfg.queue.number,
            cfg.queue.invalid_number()
        )
    })?;
    let lan_ifindex: Vec<u32> = cfg
        .interfaces
        .lan
        .iter()
        .map(|n| platform::if_index(n))
        .collect();
    if lan_ifindex.contains(&0) {
        anyhow::bail!(
            "interfaces.lan: {:?} has an interface that does not exist",
            cfg.interfaces.lan
        );
    }

    let node = Arc::new(Node::new(node_config(&cfg, keys)?));
    let listener = tokio::net::TcpListener::bind(cfg.node.listen)
        .await
        .with_context(|| format!("node.listen: cannot listen on {}", cfg.node.listen))?;
    {
        let node = node.clone();
        tokio::spawn(async move { node.serve(listener).await });
    }

    {
        let node = node.clone();
        let wan = cfg.interfaces.wan.clone();
        let uplink_bps = cfg.uplink.rate_mbit * 1e6;
        let share = cfg.uplink.neighbour_share;
        tokio::spawn(async move { lend_idle_uplink(node, wan, uplink_bps, share).await });
    }

    let engine = Engine::new(EngineConfig {
        max_flows: cfg.splice.max_flows,
        idle_timeout: Duration::from_secs(cfg.splice.idle_timeout_s),
        buffer_window: cfg.planner.window,
        progress_step: Some(progress_step(cfg.planner.window)),
        ..EngineConfig::default()
    });
    let (notices_tx, mut notices) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        eligibility: EligibilityConfig {
            min_size: cfg.eligibility.min_size,
            content_types: cfg.eligibility.content_types.clone(),
            allow_cookie: cfg.eligibility.allow_cookie,
            allow_authorization: cfg.eligibility.allow_authorization,
        },
        marks,
        cfg,
        engine: Mutex::new(EngineState {
            engine,
            batch: InjectBatch::default(),
        }),
        injector,
        lan_ifindex,
        wake: Notify::new(),
        timer_deadline: Mutex::new(NO_DEADLINE),
        notices: notices_tx,
        counters: Mutex::new(Counters::default()),
        heads: Mutex::new(HeadWatch::default()),
        downloads: Mutex::new(HashMap::new()),
        progress: Mutex::new(HashMap::new()),
        peers: Mutex::new(HashMap::new()),
        active: AtomicU32::new(0),
        stopping: AtomicBool::new(false),
        started: Instant::now(),
    });

    // The queue thread.
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("nfqueue".into())
            .spawn(move || {
                let res = platform::run_queue(queue, |pkts| shared.on_batch(pkts));
                if let Err(e) = res {
                    tracing::error!(error = %e, "NFQUEUE loop ended; traffic bypasses the daemon");
                }
            })?;
    }

    // The engine's timer.
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let deadline = shared.arm_timer();
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sleep => {
                        shared.step(|engine, now| engine.handle_timeout(now));
                    }
                    _ = shared.wake.notified() => {}
                }
            }
        });
    }

    // The status socket.
    {
        let shared = shared.clone();
        let socket = shared.cfg.status.socket.clone();
        tokio::spawn(async move {
            let path = socket.clone();
            if let Err(e) = crate::status::serve(&path, move || snapshot(&shared)).await {
                warn!(error = %e, socket = %socket.display(), "status socket failed");
            }
        });
    }

    info!(
        node = %shared.cfg.node.name,
        queue = shared.cfg.queue.number,
        peers = shared.cfg.peers.len(),
        "tandem running"
    );

    // Sessions, until a signal.
    let mut stages: HashMap<FlowId, watch::Sender<FlowStage>> = HashMap::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            n = notices.recv() => match n {
                Some(Notice::Accelerated(a)) => {
                    let (tx, rx) = watch::channel(FlowStage::BeforeCut);
                    stages.insert(a.flow, tx);
                    tokio::spawn(download(shared.clone(), node.clone(), *a, rx));
                }
                Some(Notice::CutDone(flow)) => {
                    if let Some(tx) = stages.get(&flow) {
                        tx.send_if_modified(|s| {
                            let advance = *s < FlowStage::CutDone;
                            if advance {
                                *s = FlowStage::CutDone;
                            }
                            advance
                        });
                    }
                }
                Some(Notice::Ended(flow)) => {
                    if let Some(tx) = stages.remove(&flow) {
                        let _ = tx.send(FlowStage::Ended);
                    }
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }

    // Shutdown: no new accelerations; flows in progress are reset, never
    // left half-spliced (without the daemon nobody could finish them).
    shared.stopping.store(true, Ordering::Relaxed);
    let flows: Vec<FlowId> = lock(&shared.downloads).keys().copied().collect();
    let resetting = !flows.is_empty();
    if resetting {
        warn!(
            count = flows.len(),
            "stopping: resetting downloads in progress"
        );
    }
    shared.step(|engine, now| {
        for flow in flows {
            engine.fail(now, flow);
        }
    });
    if resetting {
        // The first RST carries the client's newest ACK the engine saw; with
        // injected data in flight the client's next expected byte is past
        // it, so the client drops that RST (RFC 5961). The engine answers
        // the client's following ACKs with exact RSTs and repeats on its
        // timer: keep the queue thread and the timer running for that.
        tokio::time::sleep(SHUTDOWN_LINGER).await;
    }
    node.shutdown();
    let _ = std::fs::remove_file(&shared.cfg.status.socket);
    info!("tandem stopped");
    Ok(())
}

/// How long the daemon keeps serving the queue after resetting the
/// downloads in progress on shutdown (the engine's RST repeats use
/// `min_rto`, 200 ms by default).
const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);

/// How far the client's progress moves between two reports to the planner:
/// 1/64 of its window (so the window never waits long for news of the
/// client), at least 64 KiB (so a fast client does not cost an event per
/// ACK).
fn progress_step(window: u64) -> u64 {
    (window / 64).max(64 * 1024)
}

/// Bounds of a measured origin round trip handed to the planner (a SYN
/// answered from a cache next door, or a SYN retransmitted once).
const MIN_ORIGIN_RTT: Duration = Duration::from_millis(1);
const MAX_ORIGIN_RTT: Duration = Duration::from_secs(2);

/// How long a download may go without a piece from its session while the
/// engine has nothing left to send before the client is reset: four
/// planner stall timeouts (the planner reassigns a stalled source's pieces
/// after one), at least 30 s.
fn session_silence(cfg: &Config) -> Duration {
    (Duration::from_millis(cfg.planner.stall_timeout_ms) * 4).max(Duration::from_secs(30))
}

/// How long a download task waits for the client's progress before it
/// retries a piece the engine's buffer had no room for (progress normally
/// wakes it first).
const ROOM_RETRY: Duration = Duration::from_millis(50);

/// How often the neighbours' budget follows this router's own traffic.
const BUDGET_INTERVAL: Duration = Duration::from_millis(500);

/// Sum of the WAN interfaces' received bytes (0 for an unreadable counter).
fn wan_rx_bytes(wan: &[String]) -> u64 {
    wan.iter()
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/class/net/{i}/statistics/rx_bytes")).ok()
        })
        .filter_map(|t| t.trim().parse::<u64>().ok())
        .sum()
}

/// The neighbours' budget (bits/s) for a measured own-traffic rate: all of
/// the uplink while this router's own users are idle, shrinking twice as
/// fast as their traffic grows (so they can take the uplink back), never
/// below `neighbour_share` of it.
pub fn neighbour_budget(uplink_bps: f64, share: f64, own_bps: f64) -> u64 {
    let floor = uplink_bps * share.clamp(0.0, 1.0);
    (uplink_bps - 2.0 * own_bps.max(0.0)).clamp(floor, uplink_bps) as u64
}

/// Lends the idle uplink to neighbours: own traffic = WAN receive rate minus
/// what was served to neighbours (with 5 % for headers).
async fn lend_idle_uplink(node: Arc<Node>, wan: Vec<String>, uplink_bps: f64, share: f64) {
    node.set_neighbour_budget(uplink_bps as u64);
    let mut last_rx = wan_rx_bytes(&wan);
    let mut last_served = node.neighbour_bytes_served();
    let mut tick = tokio::time::interval(BUDGET_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let rx = wan_rx_bytes(&wan);
        let served = node.neighbour_bytes_served();
        let secs = BUDGET_INTERVAL.as_secs_f64();
        let wan_bps = rx.saturating_sub(last_rx) as f64 * 8.0 / secs;
        let served_bps = served.saturating_sub(last_served) as f64 * 8.0 / secs * 1.05;
        let budget = neighbour_budget(uplink_bps, share, wan_bps - served_bps);
        node.set_neighbour_budget(budget);
        last_rx = rx;
        last_served = served;
    }
}

/// One accelerated download: feeds the session's pieces to the engine.
async fn download(
    shared: Arc<Shared>,
    node: Arc<Node>,
    a: Accelerated,
    mut end: watch::Receiver<FlowStage>,
) {
    let flow = a.flow;
    let result = run_download(&shared, &node, &a, &mut end).await;
    lock(&shared.progress).remove(&flow);
    if let Err(e) = &result {
        warn!(?flow, client = %a.client, error = %e, "download failed; resetting the client");
        shared.step(|engine, now| engine.fail(now, flow));
    }
    // Wait until the engine is done with the flow (FIN acknowledged or reset).
    let _ = end.wait_for(|s| *s == FlowStage::Ended).await;
    lock(&shared.downloads).remove(&flow);
    shared.active.fetch_sub(1, Ordering::Relaxed);
}

/// Records what a session learnt about each neighbour.
fn record_peers(shared: &Shared, stats: &tandem_delegate::SessionStats, elapsed: Duration) {
    let mut peers = lock(&shared.peers);
    for s in stats.sources.iter().filter(|s| s.name != "local") {
        let entry = peers.entry(s.name.clone()).or_default();
        entry.state = if let Some(r) = &s.refused {
            format!("refused: {r:?}")
        } else if let Some(g) = &s.gone {
            format!("down: {g}")
        } else if s.committed {
            "committed".to_string()
        } else {
            "unknown".to_string()
        };
        entry.rate_bps = s.bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-3);
    }
}

async fn run_download(
    shared: &Shared,
    node: &Node,
    a: &Accelerated,
    end: &mut watch::Receiver<FlowStage>,
) -> anyhow::Result<()> {
    let flow = a.flow;
    let mut scfg = session_config(&shared.cfg);
    // The planner's latency model (pieces' first byte, the cut's lead, the
    // smallest piece worth a request) from this flow's handshake rather
    // than the 50 ms default: at a 20 ms origin the default made the
    // planner leave the session's last 400 KB to one source (measured on
    // the 4-router testbed: that source ended 80 ms after the others).
    if let Some(rtt) = a.origin_rtt {
        scfg.origin_rtt = rtt.clamp(MIN_ORIGIN_RTT, MAX_ORIGIN_RTT);
    }
    let mut session: Session = node
        .open_session(a.download.clone(), scfg)
        .map_err(|e| anyhow::anyhow!("session: {e}"))?;
    // No injected byte may reach the client before it has acknowledged
    // everything before the cut: its ACKs would then SACK bytes the origin
    // never sent, conntrack would call them INVALID, and the origin would
    // never see the ACKs it needs to finish the bytes before the cut. The
    // session keeps running meanwhile and its chunks wait here: if they
    // waited in the session's channel instead (64 chunks), the sources
    // would stall on back-pressure until the cut (measured in the lab: both
    // uplinks dipped by a third around 0.6-0.8 s). The planner never asks
    // for more than `planner.window` beyond the cut, which bounds this.
    let mut early: VecDeque<Chunk> = VecDeque::new();
    let mut early_end: Option<Result<(), SessionError>> = None;
    loop {
        tokio::select! {
            stage = end.wait_for(|s| *s >= FlowStage::CutDone) => match stage.map(|s| *s) {
                Ok(FlowStage::CutDone) => break,
                _ => return Ok(()),
            },
            c = session.next(), if early_end.is_none() => match c {
                Ok(Some(c)) => early.push_back(c),
                Ok(None) => early_end = Some(Ok(())),
                Err(e) => early_end = Some(Err(e)),
            },
        }
    }
    let started = Instant::now();
    let mut progress = a.progress.clone();
    let mut progress_open = true;
    // A session that stops delivering while the client waits must not
    // leave the client hanging: the engine would keep the flow alive on the
    // client's keepalives and the download would never end.
    let silence = session_silence(&shared.cfg);
    let mut last_chunk = Instant::now();
    // The client's progress goes to the planner as the engine reports it,
    // not only when the next piece arrives: with the planner's window full
    // no piece comes until it hears of progress (measured on the unshaped
    // and 100 Mbit/s testbeds: every download stalled at cut + window).
    // The per-source byte counts (a copy of the session's stats, names
    // included) are refreshed at most every STATUS_REFRESH: this runs for
    // every chunk pushed, thousands per second at Gbit/s.
    // (Milliseconds since `started` of the last refresh, u32::MAX: never;
    // 32 bits because some router targets have no 64-bit atomics.)
    let stats_at = AtomicU32::new(u32::MAX);
    let report = |session: &Session, d: u64| {
        session.delivered(d);
        let now = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX - 1);
        let last = stats_at.load(Ordering::Relaxed);
        let stats =
            (last == u32::MAX || now.saturating_sub(last) >= STATUS_REFRESH_MS).then(|| {
                stats_at.store(now, Ordering::Relaxed);
                session.stats()
            });
        if let Some(st) = lock(&shared.downloads).get_mut(&flow) {
            st.delivered = st.delivered.max(d);
            st.age_s = started.elapsed().as_secs_f64();
            st.rate_bps = (st.delivered.saturating_sub(a.cut)) as f64 * 8.0 / st.age_s.max(1e-3);
            if let Some(stats) = stats {
                st.bytes_by_source = stats
                    .sources
                    .iter()
                    .map(|s| (s.name.clone(), s.bytes))
                    .collect();
            }
        }
    };
    loop {
        let next = if let Some(c) = early.pop_front() {
            Ok(Some(c))
        } else if let Some(e) = early_end.take() {
            e.map(|()| None)
        } else {
            tokio::select! {
                c = session.next() => {
                    last_chunk = Instant::now();
                    c
                }
                changed = progress.changed(), if progress_open => {
                    match changed {
                        Ok(()) => report(&session, *progress.borrow_and_update()),
                        Err(_) => progress_open = false,
                    }
                    continue;
                }
                _ = tokio::time::sleep_until((last_chunk + silence).into()) => {
                    let info = lock(&shared.engine).engine.flow_info(flow);
                    // Nothing the client can use: every contiguous byte is
                    // acknowledged (pieces past a hole do not help).
                    if info.is_none_or(|i| i.available <= i.delivered) {
                        let stats = session.stats();
                        record_peers(shared, &stats, started.elapsed());
                        let sources: Vec<String> = stats
                            .sources
                            .iter()
                            .map(|s| format!("{}: {} bytes{}", s.name, s.bytes, s.gone.as_deref().map(|g| format!(" (gone: {g})")).unwrap_or_default()))
                            .collect();
                        anyhow::bail!(
                            "no piece for {silence:?} while the client waits at {:?} (engine: {info:?}; session: {} bytes delivered, {} stalls; {})",
                            info.and_then(|i| i.delivered),
                            stats.bytes_delivered,
                            stats.stalls,
                            sources.join(", ")
                        );
                    }
                    // The engine still has bytes to deliver: the client is
                    // the slow one.
                    last_chunk = Instant::now();
                    continue;
                }
                _ = end.wait_for(|s| *s == FlowStage::Ended) => return Ok(()),
            }
        };
        let chunk = match next {
            Ok(c) => c,
            Err(e) => {
                record_peers(shared, &session.stats(), started.elapsed());
                anyhow::bail!("session: {e}");
            }
        };
        let Some(chunk) = chunk else {
            debug!(?flow, "every piece delivered to the engine");
            let stats = session.stats();
            record_peers(shared, &stats, started.elapsed());
            let mut peers = lock(&shared.peers);
            for s in &stats.sources {
                if let Some(p) = peers.get_mut(&s.name) {
                    p.bytes += s.bytes;
                }
            }
            return Ok(());
        };
        let mut offset = chunk.offset;
        let mut data = &chunk.bytes[..];
        while !data.is_empty() {
            let ((res, delivered), _) = shared.step(|engine, now| {
                let res = engine.push_piece(now, flow, offset, data);
                (res, engine.flow_info(flow).and_then(|i| i.delivered))
            });
            if let Some(d) = delivered {
                report(&session, d);
            }
            match res {
                Ok(()) => data = &[],
                Err(SpliceError::PieceBeyondWindow { limit }) => {
                    // Store what fits, then wait for the client to ack more.
                    if limit > offset {
                        let fit = ((limit - offset) as usize).min(data.len());
                        let (stored, _) = shared.step(|engine, now| {
                            engine.push_piece(now, flow, offset, &data[..fit]).is_ok()
                        });
                        if stored {
                            offset += fit as u64;
                            data = &data[fit..];
                        }
                    }
                    // Room comes with the client's progress.
                    tokio::select! {
                        _ = tokio::time::sleep(ROOM_RETRY) => {}
                        changed = progress.changed(), if progress_open => {
                            if changed.is_err() {
                                progress_open = false;
                            }
                        }
                        _ = end.wait_for(|s| *s == FlowStage::Ended) => return Ok(()),
                    }
                }
                Err(e) => anyhow::bail!("engine refused a piece: {e}"),
            }
        }
    }
}

fn node_config(cfg: &Config, keys: KeyPair) -> anyhow::Result<NodeConfig> {
    let mut neighbours = Vec::new();
    for (i, p) in cfg.peers.iter().enumerate() {
        let key = PublicKey::from_base64(&p.public_key)
            .map_err(|e| anyhow::anyhow!("peer[{i}].public_key: {e}"))?;
        neighbours.push(NeighbourConfig {
            name: p.name.clone(),
            key,
            addr: Some(p.address),
            link_bps: (p.link_mbit * 1e6) as u64,
        });
    }
    let mut nc = NodeConfig::new(cfg.node.name.clone(), keys, neighbours);
    nc.serve.target_policy.allow_documentation_ranges = cfg.node.testbed;
    nc.serve.target_policy.allowed_ports = cfg.queue.ports.clone();
    nc.serve.target_policy.own_addrs = own_addresses();
    nc.serve.allow_credentials =
        cfg.eligibility.allow_cookie || cfg.eligibility.allow_authorization;
    nc.serve.uplink_bps = (cfg.uplink.rate_mbit * 1e6) as u64;
    nc.serve.neighbour_share = cfg.uplink.neighbour_share;
    nc.serve.fetch.bind_addr = cfg.uplink.source_address;
    nc.serve.advert_rule = match cfg.planner.advert_rule {
        crate::config::AdvertRule::CappedSum => tandem_plan::AdvertRule::CappedSum,
        crate::config::AdvertRule::Average => tandem_plan::AdvertRule::Average,
    };
    Ok(nc)
}

fn session_config(cfg: &Config) -> SessionConfig {
    let mut s = SessionConfig::default();
    s.planner.policy = match cfg.planner.policy {
        Policy::Dynamic => tandem_plan::Policy::Dynamic,
        Policy::Proportional => tandem_plan::Policy::Proportional,
    };
    s.planner.window = cfg.planner.window;
    s.planner.target_piece_time = Duration::from_millis(cfg.planner.piece_time_ms);
    s.planner.stall_timeout = Duration::from_millis(cfg.planner.stall_timeout_ms);
    s.local_rate_bps = (cfg.uplink.rate_mbit * 1e6) as u64;
    if let Some(f) = s.local_fetch.as_mut() {
        f.bind_addr = cfg.uplink.source_address;
        f.policy.allow_documentation_ranges = cfg.node.testbed;
        f.policy.allowed_ports = cfg.queue.ports.clone();
    }
    s.default_peer_rate_bps = cfg
        .peers
        .iter()
        .filter_map(|p| p.rate_mbit)
        .map(|r| (r * 1e6) as u64)
        .max()
        .unwrap_or((cfg.uplink.rate_mbit * 1e6) as u64);
    s.hop_budget = cfg.planner.max_hops;
    s.local_start_delay = STARTUP.saturating_sub(LOCAL_LEAD);
    s.delegate_credentials = cfg.eligibility.allow_cookie || cfg.eligibility.allow_authorization;
    s
}

/// Every address of this router's interfaces (never fetched for a peer).
fn own_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|sa| {
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

fn snapshot(shared: &Shared) -> Snapshot {
    let learnt = lock(&shared.peers).clone();
    // The engine's lock first and alone: the queue thread takes the
    // counters' lock while it holds the engine's (a decision counts), so
    // holding the counters' here while waiting for the engine could
    // deadlock both.
    let stats = lock(&shared.engine).engine.stats();
    let undecided_expired = lock(&shared.heads).undecided_expired;
    let counters = lock(&shared.counters);
    let mut packets = counters.packets.clone();
    for (k, v) in [
        ("queued", stats.packets),
        ("unparsed", stats.unparsed),
        ("table_full", stats.table_full),
        ("dropped", stats.dropped),
        ("modified", stats.modified),
        ("injected", stats.transmitted),
        ("retransmitted", stats.retransmitted),
        ("rto_timeouts", stats.timeouts),
        ("rto_spurious", stats.spurious_timeouts),
        ("undecided_expired", undecided_expired),
    ] {
        packets.insert(k.to_string(), v);
    }
    Snapshot {
        node: shared.cfg.node.name.clone(),
        uptime_s: shared.started.elapsed().as_secs(),
        peers: shared
            .cfg
            .peers
            .iter()
            .map(|p| {
                let l = learnt.get(&p.name);
                PeerStatus {
                    name: p.name.clone(),
                    address: p.address.to_string(),
                    state: l.map_or_else(|| "unknown".to_string(), |l| l.state.clone()),
                    bytes: l.map_or(0, |l| l.bytes),
                    rate_bps: l.map_or(0.0, |l| l.rate_bps),
                    advertised_bps: p.rate_mbit.unwrap_or(0.0) * 1e6,
                }
            })
            .collect(),
        downloads: lock(&shared.downloads).values().cloned().collect(),
        decisions: counters.decisions.clone(),
        packets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_wire::{SeqNumber, TcpFlags, TcpSegment, TcpSegmentOptions};

    #[test]
    fn queue_verdicts_keep_each_packets_own_engine_verdict() {
        use tandem_splice::Verdict as V;
        let marks = crate::config::Queue::default().marks();
        let meta = PacketMeta {
            indev: 1,
            outdev: 2,
            // Bits outside the mask survive; state bits inside are replaced.
            mark: 0x8000_0000 | marks.pass,
        };
        assert_eq!(
            queue_verdict(&marks, V::Accept, None, meta, 60),
            QueueVerdict::Accept
        );
        assert_eq!(
            queue_verdict(&marks, V::Accept, Some(marks.own), meta, 60),
            QueueVerdict::RepeatWithMark(0x8000_0000 | marks.decided | marks.own)
        );
        assert_eq!(
            queue_verdict(&marks, V::AcceptModified { len: 60 }, None, meta, 60),
            QueueVerdict::AcceptModified
        );
        // A label never overrides an edit or a drop.
        assert_eq!(
            queue_verdict(
                &marks,
                V::AcceptModified { len: 60 },
                Some(marks.own),
                meta,
                60
            ),
            QueueVerdict::AcceptModified
        );
        assert_eq!(
            queue_verdict(&marks, V::AcceptModified { len: 40 }, None, meta, 60),
            QueueVerdict::AcceptTruncated(40)
        );
        assert_eq!(
            queue_verdict(&marks, V::Drop, Some(marks.pass), meta, 60),
            QueueVerdict::Drop
        );
    }

    /// The engine between one client and one origin, fed hand-built IPv4
    /// packets, its events followed by a [`HeadWatch`] as `Shared::drain`
    /// does (a response head is passed through at once, as `decide` does
    /// for ineligible traffic, unless `accelerate_cut` is set).
    struct HeadsHarness {
        engine: Engine,
        watch: HeadWatch,
        now: Instant,
        client_seq: u32,
        origin_seq: u32,
        accelerate_cut: Option<u64>,
        decided: Vec<FlowId>,
        /// Events `observe` said it counted.
        reported: Vec<Event>,
    }

    const CLIENT: &str = "192.0.2.2:40000";
    const ORIGIN: &str = "203.0.113.10:80";
    const SYN: TcpFlags = TcpFlags::SYN;
    const RST: TcpFlags = TcpFlags::RST;
    const PSH: TcpFlags = TcpFlags::PSH;
    const ACK: TcpFlags = TcpFlags::ACK;

    impl HeadsHarness {
        fn new() -> Self {
            HeadsHarness {
                engine: Engine::new(EngineConfig {
                    idle_timeout: Duration::from_secs(2),
                    linger: Duration::from_secs(1),
                    ..EngineConfig::default()
                }),
                watch: HeadWatch::default(),
                now: Instant::now(),
                client_seq: 1000,
                origin_seq: 5000,
                accelerate_cut: None,
                decided: Vec::new(),
                reported: Vec::new(),
            }
        }

        fn drain(&mut self, input: Input) {
            while let Some(ev) = self.engine.poll_event() {
                if self.watch.observe(&ev, input) {
                    self.reported.push(ev.clone());
                }
                if let Event::ResponseHead { flow, .. } = ev {
                    self.decided.push(flow);
                    match self.accelerate_cut {
                        Some(cut) => {
                            self.engine.accelerate(self.now, flow, cut).unwrap();
                        }
                        None => self.engine.pass_through(flow),
                    }
                }
            }
            let mut buf = Vec::new();
            while self.engine.poll_transmit(self.now, &mut buf).is_some() {}
        }

        /// One segment from the client or the origin, as the queue hands
        /// it to the engine.
        fn sends(&mut self, dir: Direction, flags: TcpFlags, payload: &[u8]) {
            let (src, dst, seq, ack) = match dir {
                Direction::FromClient => (CLIENT, ORIGIN, self.client_seq, self.origin_seq),
                Direction::FromOrigin => (ORIGIN, CLIENT, self.origin_seq, self.client_seq),
            };
            let mut p = Vec::new();
            TcpSegment {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                seq: SeqNumber(seq),
                ack: SeqNumber(ack),
                flags,
                window: 0xffff,
                options: TcpSegmentOptions::default(),
                payload,
                ttl: 64,
                tos: 0,
                ident: 0,
            }
            .emit(&mut p);
            let next = seq.wrapping_add(payload.len() as u32 + u32::from(flags.contains(SYN)));
            match dir {
                Direction::FromClient => self.client_seq = next,
                Direction::FromOrigin => self.origin_seq = next,
            }
            let _ = self.engine.handle_packet(self.now, dir, &mut p);
            self.drain(Input::Packet);
        }

        fn client_sends(&mut self, flags: TcpFlags, payload: &[u8]) {
            self.sends(Direction::FromClient, flags, payload);
        }

        fn origin_sends(&mut self, flags: TcpFlags, payload: &[u8]) {
            self.sends(Direction::FromOrigin, flags, payload);
        }

        /// Handshake and request head, as the first queued packets show them.
        fn request(&mut self) {
            self.client_sends(SYN, &[]);
            self.origin_sends(SYN.with(ACK), &[]);
            self.client_sends(ACK, &[]);
            self.client_sends(PSH.with(ACK), b"GET /f.bin HTTP/1.1\r\nHost: o\r\n\r\n");
        }

        /// No more packets (the kernel stopped queueing the connection): the
        /// timer runs until the engine has nothing left to wait for.
        fn silence(&mut self, secs: u64) {
            let until = self.now + Duration::from_secs(secs);
            while let Some(t) = self.engine.poll_timeout() {
                if t > until {
                    break;
                }
                self.now = self.now.max(t);
                self.engine.handle_timeout(self.now);
                self.drain(Input::MaySweep);
            }
            self.now = until;
        }
    }

    #[test]
    fn a_flow_expired_without_a_response_head_is_counted() {
        let mut h = HeadsHarness::new();
        h.request();
        assert_eq!(h.engine.flow_count(), 1);
        // The response head would come now, past the queued packets: the
        // daemon never sees it.
        h.silence(10);
        assert_eq!(h.engine.flow_count(), 0, "the sweep forgot the flow");
        assert!(h.decided.is_empty());
        assert_eq!(h.watch.undecided_expired, 1);
        assert!(h.watch.heads.is_empty());
        assert!(
            matches!(h.reported[..], [Event::FlowClosed { .. }]),
            "observe() reports the flow it counted: {:?}",
            h.reported
        );

        // A second one on a new connection counts again.
        h.client_seq = 9000;
        h.request();
        h.silence(10);
        assert_eq!(h.watch.undecided_expired, 2);
    }

    #[test]
    fn a_decided_flow_is_never_counted() {
        let mut h = HeadsHarness::new();
        h.request();
        h.origin_sends(
            PSH.with(ACK),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
        );
        assert_eq!(h.decided.len(), 1, "the response head was reported");
        assert_eq!(h.engine.flow_count(), 0, "passed through: forgotten");
        h.silence(10);
        assert_eq!(h.watch.undecided_expired, 0);
        assert!(h.watch.heads.is_empty(), "no flow left behind");
        assert!(h.reported.is_empty());
    }

    #[test]
    fn an_accelerated_flow_forgotten_by_the_timer_is_not_counted() {
        let mut h = HeadsHarness::new();
        h.accelerate_cut = Some(1000);
        h.request();
        h.origin_sends(
            PSH.with(ACK),
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: video/mp4\r\n\r\n",
        );
        assert_eq!(h.decided.len(), 1);
        assert_eq!(h.watch.heads.len(), 1, "accelerated: still tracked");
        // The flow fails (no pieces) and is forgotten by the timer after
        // its linger: a FlowClosed drained after the timer, with a head.
        h.engine.fail(h.now, h.decided[0]);
        h.drain(Input::MaySweep);
        h.silence(30);
        assert_eq!(h.engine.flow_count(), 0);
        assert_eq!(h.watch.undecided_expired, 0);
        assert!(h.watch.heads.is_empty());
    }

    #[test]
    fn a_reset_before_the_response_head_is_not_counted() {
        // The daemon saw the connection end: it did not stop seeing it.
        let mut h = HeadsHarness::new();
        h.request();
        h.client_sends(RST.with(ACK), &[]);
        assert_eq!(h.engine.flow_count(), 0);
        h.silence(10);
        assert_eq!(h.watch.undecided_expired, 0);
    }

    #[test]
    fn budget_lends_idle_uplink_and_keeps_the_share_floor() {
        let up = 20e6;
        assert_eq!(neighbour_budget(up, 0.5, 0.0), 20_000_000);
        assert_eq!(neighbour_budget(up, 0.5, -3.0), 20_000_000);
        assert_eq!(neighbour_budget(up, 0.5, 2e6), 16_000_000);
        assert_eq!(neighbour_budget(up, 0.5, 8e6), 10_000_000);
        assert_eq!(neighbour_budget(up, 0.25, 8e6), 5_000_000);
        assert_eq!(neighbour_budget(up, 0.0, 30e6), 0);
    }
}
