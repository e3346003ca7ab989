//! Sub-delegation: a neighbour that received a session with a hop budget
//! left negotiates the same session key with its own neighbours (never the
//! requester it serves, budget minus one) and relays.
//!
//! Each piece the requester asks for is served whole by one source: this
//! router's own fetcher or one sub-delegate, whichever has the fewest
//! pieces outstanding (ties: our own fetcher, then committed sub-delegates).
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

use std::collections::{HashMap, HashSet};

use tandem_fetch::RangeFetcher;
use tandem_peer::{Message, Negotiate, PieceErrorKind, PieceId, PublicKey, SessionKey};
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

struct Sub {
    name: String,
    key: PublicKey,
    cmds: Option<mpsc::UnboundedSender<Message>>,
    state: SubState,
    outstanding: HashSet<PieceId>,
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
            self.outstanding.insert(job.piece);
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
    local_outstanding: HashSet<PieceId>,
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
            outstanding: HashSet::new(),
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
    let relay = Relay {
        node,
        session,
        out,
        cmds,
        local_jobs: Some(local_jobs),
        local_cancelled,
        local_rx: Some(local_rx),
        local_outstanding: HashSet::new(),
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
                        let lost: Vec<PieceId> = self.local_outstanding.drain().collect();
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

    /// Gives `job` to the least loaded live source (ties: our own fetcher,
    /// then committed sub-delegates, then negotiating ones).
    async fn dispatch(&mut self, job: PieceJob) -> Result<(), ()> {
        let mut best: Option<((usize, u8), Holder)> = self
            .local_jobs
            .as_ref()
            .map(|_| ((self.local_outstanding.len(), 0), Holder::Local));
        for (i, s) in self.subs.iter().enumerate() {
            let rank = match s.state {
                SubState::Active => 1,
                SubState::Pending => 2,
                SubState::Dead => continue,
            };
            let load = (s.outstanding.len() + s.waiting.len(), rank);
            if best.is_none_or(|(b, _)| load < b) {
                best = Some((load, Holder::Sub(i)));
            }
        }
        let piece = job.piece;
        if let Some((_, Holder::Sub(i))) = best
            && self.subs[i].state == SubState::Pending
        {
            self.subs[i].waiting.push(job);
            self.holder.insert(piece, Holder::Sub(i));
            return Ok(());
        }
        let sent = match best {
            Some((_, Holder::Local)) => {
                let ok = self
                    .local_jobs
                    .as_ref()
                    .is_some_and(|j| j.send(job.clone()).is_ok());
                if ok {
                    self.local_outstanding.insert(piece);
                }
                ok.then_some(Holder::Local)
            }
            Some((_, Holder::Sub(i))) => self.subs[i]
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
            Message::PieceData { .. } => {}
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
        match from {
            Holder::Local => {
                self.local_outstanding.remove(&piece);
            }
            Holder::Sub(i) => {
                if let Some(s) = self.subs.get_mut(i) {
                    s.outstanding.remove(&piece);
                }
            }
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
            SourceEvent::Committed { .. } => {
                if sub.state == SubState::Pending {
                    sub.state = SubState::Active;
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
        let lost: Vec<PieceId> = sub.outstanding.drain().collect();
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

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Message>>) -> Option<Message> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
