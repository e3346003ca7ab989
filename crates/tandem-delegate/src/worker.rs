//! The piece fetch worker: fetches the pieces of one session over
//! [`LANES`] keep-alive connections to the origin (each lane takes the next
//! queued piece when it is free and sends its request about one round trip
//! before the streaming lane's body ends — [`crate::stagger`] — so one
//! piece's request round trip overlaps another piece's body), and streams them as peer messages (`PieceData` chunks of at most
//! [`MAX_CHUNK`] bytes, then `PieceEnd` or `PieceError`).
//!
//! Used on both sides: a neighbour serving a session streams the messages
//! to the requester's connection; router A's own fetcher streams them into
//! its session task, which treats them like a peer's.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tandem_fetch::{FetchError, FetchErrorClass, RangeFetcher};
use tandem_peer::{MAX_CHUNK, Message, PieceErrorKind, PieceId, SessionKey};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

use crate::limit::RateLimiter;
use crate::stagger::Stagger;

/// One piece to fetch.
#[derive(Debug, Clone)]
pub(crate) struct PieceJob {
    pub(crate) piece: PieceId,
    pub(crate) range: Range<u64>,
}

/// Pieces the requester cancelled; checked before a piece starts and after
/// every chunk.
#[derive(Debug, Default, Clone)]
pub(crate) struct CancelSet(Arc<Mutex<HashSet<PieceId>>>);

impl CancelSet {
    pub(crate) fn insert(&self, piece: PieceId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(piece);
    }

    fn take(&self, piece: PieceId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&piece)
    }
}

/// Limits applied to a worker serving neighbours.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerLimits {
    /// Paces the bytes sent.
    pub(crate) rate: Option<Arc<RateLimiter>>,
    /// One permit per piece being fetched.
    pub(crate) pieces: Option<Arc<Semaphore>>,
    /// No request goes out before this instant (pieces queue meanwhile).
    pub(crate) start_at: Option<Instant>,
}

/// What an origin failure means for the piece.
pub(crate) fn piece_error_kind(e: &FetchError) -> PieceErrorKind {
    match e.class() {
        FetchErrorClass::ResourceChanged => PieceErrorKind::ResourceChanged,
        FetchErrorClass::Refused => PieceErrorKind::Refused,
        FetchErrorClass::Transient if matches!(e, FetchError::Timeout(_)) => {
            PieceErrorKind::Timeout
        }
        FetchErrorClass::Transient
        | FetchErrorClass::Protocol
        | FetchErrorClass::RangesUnsupported => PieceErrorKind::Origin,
    }
}

fn detail(e: &impl std::fmt::Display) -> String {
    let mut s = e.to_string();
    if s.len() > tandem_peer::message::MAX_DETAIL {
        let mut cut = tandem_peer::message::MAX_DETAIL;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Connections per worker. With one, every piece costs its source a request
/// round trip of idle uplink (measured in the namespace lab: ~18 of 20
/// Mbit/s per source at 250 ms pieces and a 20 ms RTT); two hide it, as long
/// as the planner keeps at least two pieces outstanding per source.
pub(crate) const LANES: usize = 2;

/// Runs until `jobs` is closed or `out` is dropped.
pub(crate) async fn run_worker(
    session: SessionKey,
    fetcher: RangeFetcher,
    jobs: mpsc::UnboundedReceiver<PieceJob>,
    cancelled: CancelSet,
    out: mpsc::Sender<Message>,
    limits: WorkerLimits,
) {
    if let Some(t) = limits.start_at {
        tokio::time::sleep_until(t).await;
    }
    let jobs = tokio::sync::Mutex::new(jobs);
    let mut fetchers: Vec<RangeFetcher> =
        (1..LANES).map(|_| fetcher.another_connection()).collect();
    fetchers.push(fetcher);
    let gate = Gate {
        stagger: Mutex::new(Stagger::new(LANES)),
        changed: Notify::new(),
    };
    let ctx = LaneCtx {
        session,
        jobs: &jobs,
        cancelled: &cancelled,
        out: &out,
        limits: &limits,
        gate: &gate,
    };
    let lanes = fetchers
        .into_iter()
        .enumerate()
        .map(|(i, f)| run_lane(i, f, ctx));
    futures_join_all(lanes).await;
}

/// Polls every lane to completion on the current task.
async fn futures_join_all<F: std::future::Future<Output = ()>>(lanes: impl Iterator<Item = F>) {
    let mut lanes: Vec<std::pin::Pin<Box<F>>> = lanes.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        lanes.retain_mut(|l| l.as_mut().poll(cx).is_pending());
        if lanes.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// The lanes' shared schedule (see [`crate::stagger`]).
struct Gate {
    stagger: Mutex<Stagger>,
    /// Signalled when a lane goes idle or starts streaming.
    changed: Notify,
}

impl Gate {
    fn with<R>(&self, f: impl FnOnce(&mut Stagger) -> R) -> R {
        f(&mut self.stagger.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until lane `lane` may send its request, then marks it sent.
    async fn take_turn(&self, lane: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let wait = self.with(|s| {
                if s.may_start(lane, now) {
                    s.requested(lane, now);
                    None
                } else {
                    Some(s.wait_hint(lane, now))
                }
            });
            let Some(wait) = wait else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut changed => {}
            }
        }
    }

    fn idle(&self, lane: usize) {
        self.with(|s| s.idle(lane));
        self.changed.notify_waiters();
    }
}

/// What every lane of a worker shares.
#[derive(Clone, Copy)]
struct LaneCtx<'a> {
    session: SessionKey,
    jobs: &'a tokio::sync::Mutex<mpsc::UnboundedReceiver<PieceJob>>,
    cancelled: &'a CancelSet,
    out: &'a mpsc::Sender<Message>,
    limits: &'a WorkerLimits,
    gate: &'a Gate,
}

/// One connection's loop: takes the next job when free, and sends its
/// request when the schedule says (see [`crate::stagger`]).
async fn run_lane(lane: usize, mut fetcher: RangeFetcher, ctx: LaneCtx<'_>) {
    let LaneCtx {
        session,
        jobs,
        cancelled,
        out,
        limits,
        gate,
    } = ctx;
    if lane > 0 {
        // Waiting lanes connect now: their first request then costs one
        // round trip, inside the lead the schedule gives it. A failure here
        // is retried by the fetch itself.
        if let Err(e) = fetcher.preconnect().await {
            tracing::debug!(%session, lane, error = %e, "preconnect failed");
        }
    }
    loop {
        let Some(job) = jobs.lock().await.recv().await else {
            return;
        };
        let piece = job.piece;
        let error = |kind, detail| Message::PieceError {
            session,
            piece,
            kind,
            detail,
        };
        if cancelled.take(piece) {
            if out
                .send(error(PieceErrorKind::Cancelled, String::new()))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let _permit = match &limits.pieces {
            Some(sem) => match sem.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            None => None,
        };
        gate.take_turn(lane).await;
        let result = fetch_piece(lane, &mut fetcher, &job, ctx).await;
        gate.idle(lane);
        let msg = match result {
            Ok(Outcome::Done) => Message::PieceEnd { session, piece },
            Ok(Outcome::Cancelled) => error(PieceErrorKind::Cancelled, String::new()),
            Ok(Outcome::Closed) => return,
            Err(e) => {
                tracing::debug!(%session, piece, error = %e, "piece fetch failed");
                error(piece_error_kind(&e), detail(&e))
            }
        };
        if out.send(msg).await.is_err() {
            return;
        }
    }
}

enum Outcome {
    Done,
    Cancelled,
    /// The receiver of the messages is gone.
    Closed,
}

async fn fetch_piece(
    lane: usize,
    fetcher: &mut RangeFetcher,
    job: &PieceJob,
    ctx: LaneCtx<'_>,
) -> Result<Outcome, FetchError> {
    let LaneCtx {
        session,
        cancelled,
        out,
        limits,
        gate,
        ..
    } = ctx;
    let mut body = fetcher.fetch(job.range.clone()).await?;
    let len = job.range.end - job.range.start;
    gate.with(|s| s.streaming(lane, Instant::now(), len));
    gate.changed.notify_waiters();
    while let Some((offset, chunk)) = body.next_chunk().await? {
        gate.with(|s| s.progress(lane, Instant::now(), chunk.len() as u64));
        let mut off = offset;
        for part in chunk.chunks(MAX_CHUNK) {
            if let Some(rate) = &limits.rate {
                rate.acquire(part.len()).await;
            }
            let msg = Message::PieceData {
                session,
                piece: job.piece,
                offset: off,
                bytes: Bytes::copy_from_slice(part),
            };
            if out.send(msg).await.is_err() {
                return Ok(Outcome::Closed);
            }
            off += part.len() as u64;
        }
        if cancelled.take(job.piece) {
            return Ok(Outcome::Cancelled);
        }
    }
    Ok(Outcome::Done)
}
