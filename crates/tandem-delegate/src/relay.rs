//! Sub-delegation: a neighbour that received a session with a hop budget
//! left negotiates the same session key with its own neighbours (never the
//! requester it serves, budget minus one) and relays.
//!
//! Each piece the requester asks for is served whole by one source: this
//! router's own fetcher or one sub-delegate, whichever is expected to
//! finish it first — its bytes still to come plus the piece, at its rate
//! (measured over the pieces it served, seeded with the configured uplink
//! or the sub-delegate's committed rate); ties: our own fetcher, then
//! committed sub-delegates. Counting pieces instead put the session's last
//! piece behind a half-done one on one uplink while the other had only a
//! few bytes left (the requester's planner assumes this rule: it plans a
//! relay as lanes fetching whole pieces, `tandem_plan::SourceSpec::depth`).
//! A sub-delegate still negotiating gets pieces too: they wait here until
//! it commits (then they are sent) or refuses or fails (then they go to the
//! other sources) — without that, every piece of the session's start went
//! to our own fetcher (measured: the 2-hop router began 0.6 s late). The
//! requester keeps `Commit::parallel` pieces outstanding here (two per
//! source), so every source has work. A sub-delegate's
//! piece messages are forwarded unchanged (same session key and piece id;
//! the peer protocol already guarantees they arrive in order and within the
//! piece). A sub-delegate that refuses or dies fails its outstanding pieces
//! with `PieceError{Origin}`, which the requester's planner reassigns.
//!
//! The parallelism a relay can offer is the requester's pipeline depth per
//! source (pieces outstanding at once); splitting one piece over several
//! sub-sources (the nested planner of docs/planner.md) is not done.

use std::collections::HashMap;
use std::time::Duration;

use tandem_fetch::RangeFetcher;
use tandem_peer::{Message, Negotiate, PieceErrorKind, PieceId, PublicKey, SessionKey};
use tandem_plan::{Rate, RateEstimator};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::node::{NeighbourConfig, Node, plan_key};
use crate::session::{Inbound, PeerTask, SourceEvent, peer_task};
use crate::worker::{CancelSet, PieceJob, WorkerLimits, run_worker};

/// What the requester's connection hands a relay.
#[derive(Debug)]
pub(crate) enum RelayCmd {
    /// A `PieceRequest`.
    Job(PieceJob),
    /// A `PieceCancel`.
    Cancel(PieceId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Local,
    Sub(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    Pending,
    Active,
    Dead,
}

/// Rate assumed for a source nobody gave a rate for (bytes/s): equal
/// unknown rates make the rule "fewest bytes to come".
const UNKNOWN_RATE: f64 = 2_500_000.0;

/// What one source (our fetcher or a sub-delegate) has outstanding, and how
/// fast it delivers.
#[derive(Debug)]
struct Load {
    /// Outstanding pieces and their bytes still to come.
    left: HashMap<PieceId, u64>,
    est: RateEstimator,
}

impl Load {
    /// A load seeded with `rate_bps` (bits/s; 0: unknown).
    fn new(rate_bps: u64) -> Self {
        let seed = if rate_bps == 0 {
            UNKNOWN_RATE
        } else {
            rate_bps as f64 / 8.0
        };
        Load {
            left: HashMap::new(),
            est: RateEstimator::new(
                Rate::from_bytes_per_sec(seed),
                Duration::from_secs(2),
                Duration::from_millis(100),
            ),
        }
    }

    fn reseed(&mut self, rate_bps: u64) {
        if rate_bps > 0 && self.est.samples() == 0 {
            *self = Load {
                left: std::mem::take(&mut self.left),
                ..Load::new(rate_bps)
            };
        }
    }

    fn add(&mut self, piece: PieceId, len: u64) {
        self.left.insert(piece, len);
    }

    /// `bytes` of `piece` arrived at `now`.
    fn on_data(&mut self, piece: PieceId, bytes: u64, now: Duration) {
        if let Some(l) = self.left.get_mut(&piece) {
            *l = l.saturating_sub(bytes);
            self.est.on_bytes(bytes, now);
        }
    }

    fn remove(&mut self, piece: PieceId) {
        self.left.remove(&piece);
        if self.left.is_empty() {
            self.est.on_idle();
        }
    }

    fn drain(&mut self) -> Vec<PieceId> {
        self.est.on_idle();
        self.left.drain().map(|(p, _)| p).collect()
    }

    /// Seconds until it would have delivered `len` more bytes after what it
    /// has outstanding (plus `extra` bytes not sent to it yet).
    fn finish_in(&self, len: u64, extra: u64) -> f64 {
        let queued: u64 = self.left.values().sum();
        let rate = self.est.estimate().bytes_per_sec().max(1.0);
        queued.saturating_add(extra).saturating_add(len) as f64 / rate
    }
}

struct Sub {
    name: String,
    key: PublicKey,
    cmds: Option<mpsc::UnboundedSender<Message>>,
    state: SubState,
    load: Load,
    /// Pieces given to it while it negotiates, not yet sent.
    waiting: Vec<PieceJob>,
}

impl Sub {
    /// Sends `job` to the sub-delegate; false if its task is gone.
    fn request(&mut self, session: SessionKey, job: &PieceJob) -> bool {
        let req = Message::PieceRequest {
            session,
            piece: job.piece,
            range: tandem_peer::ByteRange::new(job.range.start, job.range.end),
        };
        let ok = self.cmds.as_ref().is_some_and(|c| c.send(req).is_ok());
        if ok {
            self.load.add(job.piece, job.len());
            tracing::debug!(%session, piece = job.piece, to = %self.name, "relayed piece");
        }
        ok
    }
}

struct Relay {
    node: Node,
    session: SessionKey,
    out: mpsc::Sender<Message>,
    cmds: mpsc::UnboundedReceiver<RelayCmd>,
    local_jobs: Option<mpsc::UnboundedSender<PieceJob>>,
    local_cancelled: CancelSet,
    local_rx: Option<mpsc::Receiver<Message>>,
    local: Load,
    subs: Vec<Sub>,
    inbox: mpsc::Receiver<Inbound>,
    inbox_open: bool,
    holder: HashMap<PieceId, Holder>,
}

/// The neighbours a relay may sub-delegate to: those with an address,
/// except the requester.
pub(crate) fn sub_neighbours(node: &Node, parent: &PublicKey) -> Vec<NeighbourConfig> {
    node.inner
        .config
        .neighbours
        .iter()
        .filter(|n| n.addr.is_some() && n.key != *parent)
        .cloned()
        .collect()
}

/// Starts a relay for a committed session. Returns the command channel and
/// the task (abort it to end the session: sub-delegates are then told to
/// cancel as their peer tasks see their command channels close).
pub(crate) fn spawn_relay(
    node: Node,
    negotiate: &Negotiate,
    subs: Vec<NeighbourConfig>,
    fetcher: RangeFetcher,
    out: mpsc::Sender<Message>,
    limits: WorkerLimits,
) -> (mpsc::UnboundedSender<RelayCmd>, JoinHandle<()>) {
    let session = negotiate.session;
    let mut sub_negotiate = negotiate.clone();
    sub_negotiate.hop_budget = negotiate.hop_budget.saturating_sub(1);
    let sub_negotiate = Message::Negotiate(Box::new(sub_negotiate));
    let (inbox_tx, inbox) = mpsc::channel(64);
    let mut slots = Vec::new();
    for (slot, n) in subs.into_iter().enumerate() {
        let Some(addr) = n.addr else { continue };
        let (cmds, cmds_rx) = mpsc::unbounded_channel();
        slots.push(Sub {
            name: n.name.clone(),
            key: n.key,
            cmds: Some(cmds),
            state: SubState::Pending,
            load: Load::new(0),
            waiting: Vec::new(),
        });
        let span = tracing::info_span!("relay_peer", %session, peer = %n.name);
        tokio::spawn(
            peer_task(PeerTask {
                node: node.clone(),
                session,
                addr,
                neighbour: n,
                negotiate: sub_negotiate.clone(),
                slot,
                inbox: inbox_tx.clone(),
                cmds: cmds_rx,
                timeout: node.inner.config.peer.handshake_timeout,
            })
            .instrument(span),
        );
    }
    drop(inbox_tx);
    let (local_jobs, jobs_rx) = mpsc::unbounded_channel();
    let (local_out, local_rx) = mpsc::channel(16);
    let local_cancelled = CancelSet::default();
    let worker = tokio::spawn(run_worker(
        session,
        fetcher,
        jobs_rx,
        local_cancelled.clone(),
        local_out,
        limits,
    ));
    let (cmd_tx, cmds) = mpsc::unbounded_channel();
    let local = Load::new(node.offered_rate_bps());
    let relay = Relay {
        node,
        session,
        out,
        cmds,
        local_jobs: Some(local_jobs),
        local_cancelled,
        local_rx: Some(local_rx),
        local,
        subs: slots,
        inbox,
        inbox_open: true,
        holder: HashMap::new(),
    };
    let task = tokio::spawn(async move {
        relay.run().await;
        worker.abort();
    });
    (cmd_tx, task)
}

impl Relay {
    async fn run(mut self) {
        loop {
            tokio::select! {
                c = self.cmds.recv() => match c {
                    None => return,
                    Some(RelayCmd::Job(job)) => {
                        if self.dispatch(job).await.is_err() { return; }
                    }
                    Some(RelayCmd::Cancel(piece)) => {
                        if self.cancel(piece).await.is_err() { return; }
                    }
                },
                m = recv_opt(&mut self.local_rx) => match m {
                    Some(m) => {
                        if self.forward(Holder::Local, m).await.is_err() { return; }
                    }
                    None => {
                        self.local_rx = None;
                        self.local_jobs = None;
                        let lost = self.local.drain();
                        if self.fail(lost, "local fetcher stopped").await.is_err() { return; }
                    }
                },
                i = self.inbox.recv(), if self.inbox_open => match i {
                    Some(i) => {
                        if self.on_inbound(i).await.is_err() { return; }
                    }
                    None => self.inbox_open = false,
                },
            }
        }
    }

    async fn send(&self, m: Message) -> Result<(), ()> {
        self.out.send(m).await.map_err(|_| ())
    }

    /// Gives `job` to the live source expected to finish it first (ties:
    /// our own fetcher, then committed sub-delegates, then negotiating
    /// ones).
    async fn dispatch(&mut self, job: PieceJob) -> Result<(), ()> {
        let len = job.len();
        let local = self
            .local_jobs
            .as_ref()
            .map(|_| (Holder::Local, 0, self.local.finish_in(len, 0)));
        let subs = self.subs.iter().enumerate().filter_map(|(i, s)| {
            let rank = match s.state {
                SubState::Active => 1,
                SubState::Pending => 2,
                SubState::Dead => return None,
            };
            let waiting: u64 = s.waiting.iter().map(PieceJob::len).sum();
            Some((Holder::Sub(i), rank, s.load.finish_in(len, waiting)))
        });
        let best = earliest_finish(local.into_iter().chain(subs));
        let piece = job.piece;
        if let Some(Holder::Sub(i)) = best
            && self.subs[i].state == SubState::Pending
        {
            self.subs[i].waiting.push(job);
            self.holder.insert(piece, Holder::Sub(i));
            return Ok(());
        }
        let sent = match best {
            Some(Holder::Local) => {
                let ok = self
                    .local_jobs
                    .as_ref()
                    .is_some_and(|j| j.send(job.clone()).is_ok());
                if ok {
                    self.local.add(piece, len);
                }
                ok.then_some(Holder::Local)
            }
            Some(Holder::Sub(i)) => self.subs[i]
                .request(self.session, &job)
                .then_some(Holder::Sub(i)),
            None => None,
        };
        match sent {
            Some(h) => {
                self.holder.insert(piece, h);
                Ok(())
            }
            None => self.fail(vec![piece], "no source left").await,
        }
    }

    async fn cancel(&mut self, piece: PieceId) -> Result<(), ()> {
        match self.holder.get(&piece) {
            Some(Holder::Local) => self.local_cancelled.insert(piece),
            Some(Holder::Sub(i)) => {
                let i = *i;
                if let Some(s) = self.subs.get_mut(i)
                    && let Some(at) = s.waiting.iter().position(|j| j.piece == piece)
                {
                    // Never sent: answer the cancel here.
                    s.waiting.remove(at);
                    self.holder.remove(&piece);
                    return self
                        .send(Message::PieceError {
                            session: self.session,
                            piece,
                            kind: PieceErrorKind::Cancelled,
                            detail: String::new(),
                        })
                        .await;
                }
                if let Some(c) = self.subs.get(i).and_then(|s| s.cmds.as_ref()) {
                    let _ = c.send(Message::PieceCancel {
                        session: self.session,
                        piece,
                    });
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Forwards a piece message from `from` to the requester.
    async fn forward(&mut self, from: Holder, m: Message) -> Result<(), ()> {
        match &m {
            Message::PieceData { piece, bytes, .. } => {
                let now = self.node.now();
                if let Some(load) = self.load_mut(from) {
                    load.on_data(*piece, bytes.len() as u64, now);
                }
            }
            Message::PieceEnd { piece, .. } | Message::PieceError { piece, .. } => {
                self.finished(from, *piece);
            }
            _ => return Ok(()),
        }
        self.send(m).await
    }

    /// `from` answered `piece` for good.
    fn finished(&mut self, from: Holder, piece: PieceId) {
        if self.holder.get(&piece) == Some(&from) {
            self.holder.remove(&piece);
        }
        if let Some(load) = self.load_mut(from) {
            load.remove(piece);
        }
    }

    fn load_mut(&mut self, h: Holder) -> Option<&mut Load> {
        match h {
            Holder::Local => Some(&mut self.local),
            Holder::Sub(i) => self.subs.get_mut(i).map(|s| &mut s.load),
        }
    }

    /// Fails `pieces` towards the requester (it reassigns them).
    async fn fail(&mut self, pieces: Vec<PieceId>, why: &str) -> Result<(), ()> {
        for piece in pieces {
            self.holder.remove(&piece);
            self.send(Message::PieceError {
                session: self.session,
                piece,
                kind: PieceErrorKind::Origin,
                detail: why.to_owned(),
            })
            .await?;
        }
        Ok(())
    }

    async fn on_inbound(&mut self, i: Inbound) -> Result<(), ()> {
        let Some(sub) = self.subs.get_mut(i.slot) else {
            return Ok(());
        };
        match i.ev {
            SourceEvent::Committed { rate_bps, .. } => {
                if sub.state == SubState::Pending {
                    sub.state = SubState::Active;
                    sub.load.reseed(rate_bps);
                    let now = self.node.now();
                    let _ = self
                        .node
                        .inner
                        .sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add_sub_delegate(&plan_key(&self.session), sub.key, now);
                    tracing::debug!(session = %self.session, sub = %sub.name, "sub-delegate committed");
                    let waiting = std::mem::take(&mut sub.waiting);
                    let mut unsent = Vec::new();
                    for job in waiting {
                        if !sub.request(self.session, &job) {
                            unsent.push(job);
                        }
                    }
                    // Its task is gone (the Gone event follows): these go
                    // to the other sources.
                    self.redispatch(unsent).await?;
                }
                Ok(())
            }
            SourceEvent::Refused(reason) => {
                tracing::debug!(session = %self.session, sub = %sub.name, ?reason, "sub-delegate refused");
                self.drop_sub(i.slot, "sub-delegate refused").await
            }
            SourceEvent::Gone(why) => {
                tracing::debug!(session = %self.session, sub = %sub.name, %why, "sub-delegate gone");
                self.drop_sub(i.slot, "sub-delegate lost").await
            }
            SourceEvent::Msg(m) => {
                if sub.state == SubState::Active {
                    self.forward(Holder::Sub(i.slot), m).await
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn drop_sub(&mut self, slot: usize, why: &str) -> Result<(), ()> {
        let Some(sub) = self.subs.get_mut(slot) else {
            return Ok(());
        };
        sub.state = SubState::Dead;
        sub.cmds = None;
        let key = sub.key;
        let lost = sub.load.drain();
        let waiting = std::mem::take(&mut sub.waiting);
        self.node
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_sub_delegate(&plan_key(&self.session), &key);
        self.fail(lost, why).await?;
        self.redispatch(waiting).await
    }

    /// Gives pieces a dead sub-delegate never started to the other sources.
    async fn redispatch(&mut self, jobs: Vec<PieceJob>) -> Result<(), ()> {
        for job in jobs {
            self.holder.remove(&job.piece);
            self.dispatch(job).await?;
        }
        Ok(())
    }
}

/// The candidate `(holder, rank, seconds to finish)` expected to finish
/// first; equal times go to the lower rank, then the earlier candidate.
fn earliest_finish(cands: impl Iterator<Item = (Holder, u8, f64)>) -> Option<Holder> {
    let mut best: Option<(Holder, u8, f64)> = None;
    for c in cands {
        if best.is_none_or(|b| c.2 < b.2 || (c.2 == b.2 && c.1 < b.1)) {
            best = Some(c);
        }
    }
    best.map(|b| b.0)
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Message>>) -> Option<Message> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT20: u64 = 20_000_000;

    #[test]
    fn a_source_with_few_bytes_left_beats_one_with_fewer_pieces() {
        // The 4-router trace: our uplink had one piece with 500 KB to come,
        // the sub-delegate two with 60 KB between them. Counting pieces
        // queued the last piece behind the 500 KB.
        let mut local = Load::new(MBIT20);
        local.add(53, 500_000);
        let mut sub = Load::new(MBIT20);
        sub.add(52, 40_000);
        sub.add(56, 20_000);
        let len = 605_000;
        let pick = earliest_finish(
            [
                (Holder::Local, 0, local.finish_in(len, 0)),
                (Holder::Sub(0), 1, sub.finish_in(len, 0)),
            ]
            .into_iter(),
        );
        assert_eq!(pick, Some(Holder::Sub(0)));
    }

    #[test]
    fn ties_go_to_our_own_fetcher_then_committed_sub_delegates() {
        let idle = Load::new(MBIT20);
        let c = |h, rank| (h, rank, idle.finish_in(100_000, 0));
        assert_eq!(
            earliest_finish(
                [
                    c(Holder::Sub(1), 2),
                    c(Holder::Sub(0), 1),
                    c(Holder::Local, 0)
                ]
                .into_iter()
            ),
            Some(Holder::Local)
        );
        assert_eq!(
            earliest_finish([c(Holder::Sub(1), 2), c(Holder::Sub(0), 1)].into_iter()),
            Some(Holder::Sub(0))
        );
        assert_eq!(earliest_finish(std::iter::empty()), None);
    }

    #[test]
    fn bytes_waiting_for_a_negotiating_sub_delegate_count() {
        let a = Load::new(MBIT20);
        assert!(a.finish_in(100_000, 300_000) > a.finish_in(100_000, 0));
        // 2.5 MB/s: 400 KB in 0.16 s.
        assert!((a.finish_in(100_000, 300_000) - 0.16).abs() < 1e-9);
    }

    #[test]
    fn the_rate_is_measured_and_an_unknown_seed_is_replaced_by_the_committed_rate() {
        let mut l = Load::new(0);
        l.reseed(8_000_000); // 1 MB/s committed
        assert!((l.finish_in(1_000_000, 0) - 1.0).abs() < 1e-9);
        // It delivers 250 kB/s for 4 s: the estimate follows.
        l.add(1, 2_000_000);
        for i in 0..=40u64 {
            l.on_data(1, 25_000, Duration::from_millis(100 * i));
        }
        assert!(
            l.finish_in(1_000_000, 0) > 2.5,
            "{}",
            l.finish_in(1_000_000, 0)
        );
        // A measured estimate is not reseeded.
        let before = l.finish_in(0, 0);
        l.reseed(80_000_000);
        assert_eq!(l.finish_in(0, 0), before);
        // Finished pieces leave nothing queued.
        l.remove(1);
        assert!(l.drain().is_empty());
    }
}
