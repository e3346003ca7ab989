//! A router's delegation node: its keys, neighbours, session table and the
//! serving side (answering neighbours' negotiations and piece requests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_fetch::{FetchConfig, RangeFetcher, Resource, TargetPolicy};
use tandem_http::{Headers, RequestHead};
use tandem_peer::{
    Config as PeerConfig, Hello, KeyPair, Message, Negotiate, PeerConnection, PeerError, PeerSet,
    PublicKey, RefuseReason, SessionKey, features,
};
use tandem_plan::{SessionError as TableError, SessionLimits, SessionTable};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::limit::RateLimiter;
use crate::relay::{RelayCmd, spawn_relay, sub_neighbours};
use crate::worker::{CancelSet, PIECES_IN_FLIGHT, PieceJob, WorkerLimits, run_worker};

/// A neighbour router.
#[derive(Debug, Clone)]
pub struct NeighbourConfig {
    /// Name for logs.
    pub name: String,
    /// Its static public key (it is accepted as a peer, and expected when
    /// we connect to it).
    pub key: PublicKey,
    /// Where to connect to it to delegate pieces; `None` if we only accept
    /// its connections.
    pub addr: Option<SocketAddr>,
    /// Capacity of the link to it (bits/s), for the planner's link cost.
    pub link_bps: u64,
}

/// How this router serves its neighbours.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Which origins may be fetched for neighbours (SSRF guard): public
    /// unicast only, configured ports, never our own addresses;
    /// `allow_documentation_ranges` for the lab, `allow_loopback` for
    /// in-process tests only.
    pub target_policy: TargetPolicy,
    /// Serve requests that carried `Cookie`/`Authorization` (default false:
    /// refused with `Credentials`).
    pub allow_credentials: bool,
    /// This router's uplink (bits/s); 0 means unknown/unlimited.
    pub uplink_bps: u64,
    /// Share of the uplink given to neighbours, 0.0..=1.0 (pacing of the
    /// bytes served; with `uplink_bps` 0 nothing is paced).
    pub neighbour_share: f64,
    /// Pieces fetched for neighbours at once, over all neighbours.
    pub max_concurrent_pieces: usize,
    /// Fetcher settings (timeouts, source address). Its policy is replaced
    /// by `target_policy`.
    pub fetch: FetchConfig,
    /// How the rate committed to a session counts the sub-neighbours this
    /// router may delegate to (`tandem_plan::advertise`).
    pub advert_rule: tandem_plan::AdvertRule,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            target_policy: TargetPolicy::default(),
            allow_credentials: false,
            uplink_bps: 0,
            neighbour_share: 0.5,
            max_concurrent_pieces: 4,
            fetch: FetchConfig::default(),
            advert_rule: tandem_plan::AdvertRule::CappedSum,
        }
    }
}

/// Everything a [`Node`] needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Router name (sent in `Hello`).
    pub name: String,
    /// The router's static key pair.
    pub keys: KeyPair,
    /// Its neighbours.
    pub neighbours: Vec<NeighbourConfig>,
    /// Serving side.
    pub serve: ServeConfig,
    /// Peer connection timers.
    pub peer: PeerConfig,
    /// Session table limits (capacity, idle expiry).
    pub session_limits: SessionLimits,
}

impl NodeConfig {
    /// A config with defaults for everything but identity and neighbours.
    pub fn new(name: impl Into<String>, keys: KeyPair, neighbours: Vec<NeighbourConfig>) -> Self {
        Self {
            name: name.into(),
            keys,
            neighbours,
            serve: ServeConfig::default(),
            peer: PeerConfig::default(),
            session_limits: SessionLimits::default(),
        }
    }
}

/// Counters of a node (for tests, logs and the status socket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Peer connections that completed the handshake.
    pub connections: u64,
    /// `Negotiate` messages received.
    pub negotiations: u64,
    /// Sessions committed to.
    pub commits: u64,
    /// Sessions refused.
    pub refusals: u64,
    /// Pieces requested by neighbours.
    pub pieces_requested: u64,
}

pub(crate) struct Inner {
    pub(crate) config: NodeConfig,
    pub(crate) peers: Arc<PeerSet>,
    pub(crate) sessions: Mutex<SessionTable<PublicKey>>,
    start: Instant,
    pub(crate) limits: WorkerLimits,
    stats: Mutex<NodeStats>,
    shutdown: watch::Sender<bool>,
}

/// A router's delegation node. Cheap to clone (shared state).
///
/// Serving: [`Node::serve`] accepts neighbours on a listener. Requesting:
/// [`Node::open_session`] (see [`crate::Session`]).
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.config.name)
            .field("key", &self.inner.config.keys.public())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// Builds a node (no task is started).
    pub fn new(config: NodeConfig) -> Self {
        let peers: PeerSet = config
            .neighbours
            .iter()
            .map(|n| (n.key, n.name.clone()))
            .collect();
        let serve = &config.serve;
        let share = serve.neighbour_share.clamp(0.0, 1.0);
        let rate_bytes = (serve.uplink_bps as f64 / 8.0 * share) as u64;
        let limits = WorkerLimits {
            rate: RateLimiter::new(rate_bytes, 64 * 1024).map(Arc::new),
            pieces: Some(Arc::new(Semaphore::new(serve.max_concurrent_pieces.max(1)))),
            start_at: None,
        };
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                sessions: Mutex::new(SessionTable::new(config.session_limits)),
                peers: Arc::new(peers),
                start: Instant::now(),
                limits,
                stats: Mutex::new(NodeStats::default()),
                shutdown,
                config,
            }),
        }
    }

    /// This router's public key.
    pub fn public_key(&self) -> PublicKey {
        self.inner.config.keys.public()
    }

    /// Counters so far.
    pub fn stats(&self) -> NodeStats {
        *lock(&self.inner.stats)
    }

    /// Whether this router currently holds a commitment for `key` (as a
    /// server, or as the initiator of a session).
    pub fn is_committed(&self, key: &SessionKey) -> bool {
        let now = self.now();
        lock(&self.inner.sessions).is_committed(&plan_key(key), now)
    }

    /// Time since the node started: the clock of its session table.
    pub(crate) fn now(&self) -> Duration {
        self.inner.start.elapsed()
    }

    pub(crate) fn hello(&self) -> Hello {
        let relays = self
            .inner
            .config
            .neighbours
            .iter()
            .any(|n| n.addr.is_some());
        let bits = if relays { features::SUB_DELEGATION } else { 0 };
        Hello::new(self.inner.config.name.clone(), bits)
    }

    /// The rate this router offers a neighbour for one session (bits/s);
    /// 0 when no uplink is configured (unknown).
    pub(crate) fn offered_rate_bps(&self) -> u64 {
        let s = &self.inner.config.serve;
        if s.uplink_bps == 0 {
            return 0;
        }
        match &self.inner.limits.rate {
            Some(rate) => rate.rate().saturating_mul(8),
            None => (s.uplink_bps as f64 * s.neighbour_share.clamp(0.0, 1.0)) as u64,
        }
    }

    /// The rate committed to `asker` for a session that may be delegated
    /// `hop_budget` more hops: this router's offered rate, combined by
    /// [`ServeConfig::advert_rule`] with what its other neighbours could
    /// bring. Their uplinks are not known before they are asked, so each is
    /// assumed to match ours, capped by the link to it; 0 means unknown.
    pub(crate) fn committed_rate_bps(&self, asker: &PublicKey, hop_budget: u8) -> u64 {
        use tandem_plan::{NeighbourRate, Rate, advertise};
        let own = self.offered_rate_bps();
        if own == 0 {
            return 0;
        }
        let cfg = &self.inner.config;
        let link_to_asker = cfg
            .neighbours
            .iter()
            .find(|n| n.key == *asker && n.link_bps > 0)
            .map(|n| Rate::from_bytes_per_sec(n.link_bps as f64 / 8.0));
        let others: Vec<NeighbourRate> = if hop_budget > 0 {
            crate::relay::sub_neighbours(self, asker)
                .iter()
                .map(|n| {
                    let link = if n.link_bps > 0 { n.link_bps } else { own };
                    NeighbourRate {
                        advertised: Rate::from_bytes_per_sec(own as f64 / 8.0),
                        link: Rate::from_bytes_per_sec(link as f64 / 8.0),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let own = Rate::from_bytes_per_sec(own as f64 / 8.0);
        let rate = advertise(cfg.serve.advert_rule, own, link_to_asker, &others);
        (rate.bytes_per_sec() * 8.0) as u64
    }

    /// Sets how much of the uplink neighbours may use from now on (bits/s),
    /// e.g. from a measurement of the router's own traffic (the daemon lends
    /// idle capacity and keeps `1 - neighbour_share` for its own users when
    /// they are busy). No effect without a configured uplink.
    pub fn set_neighbour_budget(&self, bits_per_sec: u64) {
        if let Some(rate) = &self.inner.limits.rate {
            rate.set_rate(bits_per_sec / 8);
        }
    }

    /// Body bytes served to neighbours so far (paced bytes; 0 without a
    /// configured uplink).
    pub fn neighbour_bytes_served(&self) -> u64 {
        self.inner.limits.rate.as_ref().map_or(0, |r| r.total())
    }

    /// Stops [`Node::serve`] and drops every connection it accepted (their
    /// sessions are released). For shutdown and for tests that kill a peer.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Accepts neighbours on `listener` until [`Node::shutdown`]. Each
    /// connection runs in its own task; a misbehaving neighbour only loses
    /// its own connection.
    pub async fn serve(&self, listener: TcpListener) {
        let mut stop = self.inner.shutdown.subscribe();
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let node = self.clone();
                        let span = tracing::info_span!("peer", %addr);
                        conns.spawn(
                            async move { node.serve_connection(stream, addr).await }
                                .instrument(span),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                () = stopped(&mut stop) => break,
            }
        }
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }

    async fn serve_connection(self, stream: TcpStream, addr: SocketAddr) {
        let cfg = &self.inner.config;
        let conn = PeerConnection::accept(
            stream,
            &cfg.keys,
            self.inner.peers.clone(),
            self.hello(),
            cfg.peer,
        )
        .await;
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(peer = %addr, error = %e, "peer handshake refused");
                return;
            }
        };
        lock(&self.inner.stats).connections += 1;
        let mut served = Served {
            node: self.clone(),
            peer: conn.peer().key,
            sessions: HashMap::new(),
        };
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
        let rate = self.offered_rate_bps();
        if rate > 0 {
            let _ = conn.send(&Message::Advertise { rate_bps: rate }).await;
        }
        loop {
            tokio::select! {
                msg = conn.recv() => match msg {
                    Ok(m) => {
                        if let Some(reply) = served.handle(m, &out_tx) {
                            if let Err(e) = conn.send(&reply).await {
                                if e.is_fatal() { break; }
                            }
                        }
                    }
                    Err(PeerError::Eof) => {
                        tracing::debug!(peer = %addr, "peer closed the connection");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(peer = %addr, error = %e, "peer connection ended");
                        break;
                    }
                },
                Some(m) = out_rx.recv() => {
                    if let Err(e) = conn.send(&m).await {
                        if e.is_fatal() { break; }
                        tracing::debug!(error = %e, "dropped piece message");
                    }
                }
            }
        }
        served.release_all();
    }

    /// Decides on a negotiation; `Ok` carries the fetcher for the session.
    fn negotiate(
        &self,
        n: &Negotiate,
        from: PublicKey,
    ) -> Result<(RangeFetcher, u64), RefuseReason> {
        let cfg = &self.inner.config.serve;
        let credentials = n.headers.iter().any(|(name, _)| {
            name.eq_ignore_ascii_case("cookie") || name.eq_ignore_ascii_case("authorization")
        });
        if credentials && !cfg.allow_credentials {
            return Err(RefuseReason::Credentials);
        }
        if let Err(e) = cfg.target_policy.check(n.origin) {
            tracing::info!(origin = %n.origin, reason = %e, "refused target");
            return Err(RefuseReason::Target);
        }
        let resource = resource_of(n).ok_or(RefuseReason::Unsupported)?;
        let mut fetch = cfg.fetch.clone();
        fetch.policy = cfg.target_policy.clone();
        let fetcher = RangeFetcher::new(resource, fetch).map_err(|e| {
            tracing::info!(error = %e, "cannot fetch for neighbour");
            RefuseReason::Target
        })?;
        let now = self.now();
        let mut table = lock(&self.inner.sessions);
        // Expired entries would otherwise linger until the table fills.
        let _ = table.expire(now);
        match table.try_commit(plan_key(&n.session), Some(from), now) {
            Ok(()) => {}
            Err(TableError::AlreadyCommitted(_)) => return Err(RefuseReason::DuplicateSession),
            Err(_) => return Err(RefuseReason::Capacity),
        }
        Ok((fetcher, self.committed_rate_bps(&from, n.hop_budget)))
    }

    pub(crate) fn release(&self, key: &SessionKey) {
        lock(&self.inner.sessions).cancel(&plan_key(key));
    }

    pub(crate) fn touch(&self, key: &SessionKey) {
        let now = self.now();
        let _ = lock(&self.inner.sessions).touch(&plan_key(key), now);
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

pub(crate) fn plan_key(k: &SessionKey) -> tandem_plan::SessionKey {
    tandem_plan::SessionKey::from_bytes(k.0)
}

/// The request a neighbour repeats, rebuilt from a `Negotiate`.
fn resource_of(n: &Negotiate) -> Option<Resource> {
    let mut headers = Headers::new();
    for (name, value) in &n.headers {
        headers.push(name, value.as_bytes()).ok()?;
    }
    let validator = match &n.validator {
        tandem_peer::Validator::ETag(v) => tandem_http::Validator::ETag(v.clone()),
        tandem_peer::Validator::LastModified(v) => tandem_http::Validator::LastModified(v.clone()),
    };
    Some(Resource {
        origin: n.origin,
        host: n.host.clone(),
        request: RequestHead {
            method: "GET".into(),
            target: n.target.clone(),
            version: 1,
            headers,
        },
        validator,
        total_len: n.body_length,
    })
}

/// How a served session's pieces are fetched.
enum Route {
    /// By our own fetcher.
    Direct {
        jobs: mpsc::UnboundedSender<PieceJob>,
        cancelled: CancelSet,
    },
    /// By our fetcher and sub-delegates (see `relay`).
    Relay(mpsc::UnboundedSender<RelayCmd>),
}

/// One session served on one connection.
struct ServedSession {
    route: Route,
    task: tokio::task::JoinHandle<()>,
}

/// The sessions a connection serves.
struct Served {
    node: Node,
    peer: PublicKey,
    sessions: HashMap<SessionKey, ServedSession>,
}

impl Served {
    /// Handles one message from the requester; returns a direct reply.
    fn handle(&mut self, msg: Message, out: &mpsc::Sender<Message>) -> Option<Message> {
        match msg {
            Message::Negotiate(n) => {
                lock(&self.node.inner.stats).negotiations += 1;
                let session = n.session;
                match self.node.negotiate(&n, self.peer) {
                    Ok((fetcher, rate_bps)) => {
                        lock(&self.node.inner.stats).commits += 1;
                        let subs = if n.hop_budget > 0 {
                            sub_neighbours(&self.node, &self.peer)
                        } else {
                            Vec::new()
                        };
                        let limits = self.node.inner.limits.clone();
                        // Every source (own uplink, each sub-delegate)
                        // keeps PIECES_IN_FLIGHT pieces in flight.
                        let parallel =
                            u16::try_from(PIECES_IN_FLIGHT * (1 + subs.len())).unwrap_or(u16::MAX);
                        let served = if subs.is_empty() {
                            let (jobs, jobs_rx) = mpsc::unbounded_channel();
                            let cancelled = CancelSet::default();
                            let task = tokio::spawn(run_worker(
                                session,
                                fetcher,
                                jobs_rx,
                                cancelled.clone(),
                                out.clone(),
                                limits,
                            ));
                            ServedSession {
                                route: Route::Direct { jobs, cancelled },
                                task,
                            }
                        } else {
                            let (cmds, task) = spawn_relay(
                                self.node.clone(),
                                &n,
                                subs,
                                fetcher,
                                out.clone(),
                                limits,
                            );
                            ServedSession {
                                route: Route::Relay(cmds),
                                task,
                            }
                        };
                        self.sessions.insert(session, served);
                        tracing::debug!(%session, "committed");
                        Some(Message::Commit {
                            session,
                            rate_bps,
                            parallel,
                        })
                    }
                    Err(reason) => {
                        lock(&self.node.inner.stats).refusals += 1;
                        tracing::debug!(%session, ?reason, "refused");
                        Some(Message::Refuse { session, reason })
                    }
                }
            }
            Message::PieceRequest {
                session,
                piece,
                range,
            } => {
                lock(&self.node.inner.stats).pieces_requested += 1;
                self.node.touch(&session);
                if let Some(s) = self.sessions.get(&session) {
                    let job = PieceJob {
                        piece,
                        range: range.start..range.end,
                    };
                    let sent = match &s.route {
                        Route::Direct { jobs, .. } => jobs.send(job).is_ok(),
                        Route::Relay(cmds) => cmds.send(RelayCmd::Job(job)).is_ok(),
                    };
                    if !sent {
                        return Some(Message::PieceError {
                            session,
                            piece,
                            kind: tandem_peer::PieceErrorKind::Internal,
                            detail: "worker gone".into(),
                        });
                    }
                }
                None
            }
            Message::PieceCancel { session, piece } => {
                if let Some(s) = self.sessions.get(&session) {
                    match &s.route {
                        Route::Direct { cancelled, .. } => cancelled.insert(piece),
                        Route::Relay(cmds) => {
                            let _ = cmds.send(RelayCmd::Cancel(piece));
                        }
                    }
                }
                None
            }
            Message::Cancel { session } => {
                if let Some(s) = self.sessions.remove(&session) {
                    s.task.abort();
                    self.node.release(&session);
                    tracing::debug!(%session, "cancelled by requester");
                }
                None
            }
            // Rates of the requester, and anything for sessions we asked
            // for (never on an accepted connection): nothing to do.
            _ => None,
        }
    }

    fn release_all(&mut self) {
        for (key, s) in self.sessions.drain() {
            s.task.abort();
            self.node.release(&key);
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.release_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod advert_tests {
    use super::*;

    fn node(rule: tandem_plan::AdvertRule) -> (Node, PublicKey) {
        let asker = KeyPair::generate().unwrap().public();
        let sub = KeyPair::generate().unwrap().public();
        let addr = |p| Some(SocketAddr::from(([192, 0, 2, 1], p)));
        let neighbours = vec![
            NeighbourConfig {
                name: "asker".into(),
                key: asker,
                addr: addr(1),
                link_bps: 54_000_000,
            },
            NeighbourConfig {
                name: "sub".into(),
                key: sub,
                addr: addr(2),
                link_bps: 10_000_000,
            },
        ];
        let mut cfg = NodeConfig::new("b", KeyPair::generate().unwrap(), neighbours);
        cfg.serve.uplink_bps = 20_000_000;
        cfg.serve.neighbour_share = 1.0;
        cfg.serve.advert_rule = rule;
        (Node::new(cfg), asker)
    }

    #[test]
    fn committed_rate_follows_the_advert_rule_and_hop_budget() {
        let (n, asker) = node(tandem_plan::AdvertRule::CappedSum);
        let within = |v: u64, want: u64| v.abs_diff(want) <= want / 1000;
        // no hops left: own rate only
        assert!(within(n.committed_rate_bps(&asker, 0), 20_000_000));
        // capped sum: own 20 + sub min(20 assumed, link 10) = 30, under the 54 link
        assert!(within(n.committed_rate_bps(&asker, 1), 30_000_000));
        let (n, asker) = node(tandem_plan::AdvertRule::Average);
        // the seed's average of own (20) and the sub's assumed 20
        assert!(within(n.committed_rate_bps(&asker, 1), 20_000_000));
    }
}
