//! The piece fetch worker: fetches the pieces of one session, in the order
//! they are queued, over one keep-alive connection to the origin, and
//! streams them as peer messages (`PieceData` chunks of at most
//! [`MAX_CHUNK`] bytes, then `PieceEnd` or `PieceError`).
//!
//! While a body streams, the next queued piece's request is pipelined on
//! the same connection about one request round trip before the body ends
//! ([`crate::stagger`]), so its response follows without a gap, on a
//! connection whose congestion window is already open. Two connections
//! taking turns (the design before) hid the request round trip too, but
//! each piece then started on a connection that had been idle for a
//! piece's time, and the second connection's first piece ramped up behind
//! the first's queue (docs/benchmarks.md, session 4). An origin that does
//! not answer pipelined requests costs one request round trip per piece
//! (the fetcher stops pipelining to it).
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::limit::RateLimiter;
use crate::stagger::Stagger;

/// One piece to fetch.
#[derive(Debug, Clone)]
pub(crate) struct PieceJob {
    pub(crate) piece: PieceId,
    pub(crate) range: Range<u64>,
}

impl PieceJob {
    /// Bytes of the piece.
    pub(crate) fn len(&self) -> u64 {
        self.range.end.saturating_sub(self.range.start)
    }
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

/// Pieces a worker keeps in flight: the one streaming and the one
/// requested behind it. The planner keeps this many outstanding per source.
pub(crate) const PIECES_IN_FLIGHT: usize = 2;

/// The piece after the current one, taken from the queue while the current
/// body streamed.
struct Next {
    job: PieceJob,
    permit: Option<OwnedSemaphorePermit>,
    /// Its request is already on the connection (pipelined).
    sent: bool,
}

/// Runs until `jobs` is closed or `out` is dropped.
pub(crate) async fn run_worker(
    session: SessionKey,
    mut fetcher: RangeFetcher,
    jobs: mpsc::UnboundedReceiver<PieceJob>,
    cancelled: CancelSet,
    out: mpsc::Sender<Message>,
    limits: WorkerLimits,
) {
    // Connect while waiting for the start: the first request then costs
    // one round trip. A failure here is retried by the fetch itself.
    let start = async {
        if let Some(t) = limits.start_at {
            tokio::time::sleep_until(t).await;
        }
    };
    let (connected, ()) = tokio::join!(fetcher.preconnect(), start);
    if let Err(e) = connected {
        tracing::debug!(%session, error = %e, "preconnect failed");
    }
    let mut w = Worker {
        session,
        fetcher,
        jobs,
        cancelled,
        out,
        limits,
        stagger: Stagger::new(2),
        slot: 0,
        next: None,
    };
    w.run().await;
    let stats = w.fetcher.stats();
    tracing::debug!(
        %session,
        connections = stats.connections,
        requests = stats.requests,
        pipelined = stats.pipelined,
        "fetch worker done"
    );
}

struct Worker {
    session: SessionKey,
    fetcher: RangeFetcher,
    jobs: mpsc::UnboundedReceiver<PieceJob>,
    cancelled: CancelSet,
    out: mpsc::Sender<Message>,
    limits: WorkerLimits,
    /// The schedule of the streaming response and the request behind it.
    stagger: Stagger,
    /// The stagger slot of the current piece (the next one uses the other).
    slot: usize,
    next: Option<Next>,
}

enum Outcome {
    Done,
    Cancelled,
    /// The receiver of the messages is gone.
    Closed,
}

impl Worker {
    async fn run(&mut self) {
        let session = self.session;
        loop {
            let cur = match self.next.take() {
                Some(n) => n,
                None => {
                    let Some(job) = self.jobs.recv().await else {
                        return;
                    };
                    Next {
                        job,
                        permit: None,
                        sent: false,
                    }
                }
            };
            let piece = cur.job.piece;
            let error = |kind, detail| Message::PieceError {
                session,
                piece,
                kind,
                detail,
            };
            if self.cancelled.take(piece) {
                // A pipelined request for it makes the next fetch reconnect
                // (its response must not be taken for another range's).
                self.next_slot();
                if self
                    .out
                    .send(error(PieceErrorKind::Cancelled, String::new()))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            let _permit = match (cur.permit, &self.limits.pieces) {
                (Some(p), _) => Some(p),
                (None, Some(sem)) => match sem.clone().acquire_owned().await {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
                (None, None) => None,
            };
            if !cur.sent {
                self.stagger.requested(self.slot, Instant::now());
            }
            let result = self.fetch_piece(&cur.job).await;
            self.next_slot();
            let msg = match result {
                Ok(Outcome::Done) => Message::PieceEnd { session, piece },
                Ok(Outcome::Cancelled) => error(PieceErrorKind::Cancelled, String::new()),
                Ok(Outcome::Closed) => return,
                Err(e) => {
                    tracing::debug!(%session, piece, error = %e, "piece fetch failed");
                    error(piece_error_kind(&e), detail(&e))
                }
            };
            if self.out.send(msg).await.is_err() {
                return;
            }
        }
    }

    /// The current piece is done with (fetched, failed or skipped): its
    /// slot goes idle and the next piece takes the other.
    fn next_slot(&mut self) {
        self.stagger.idle(self.slot);
        self.slot ^= 1;
    }

    async fn fetch_piece(&mut self, job: &PieceJob) -> Result<Outcome, FetchError> {
        let Worker {
            session,
            fetcher,
            jobs,
            cancelled,
            out,
            limits,
            stagger,
            slot,
            next,
        } = self;
        let (session, slot) = (*session, *slot);
        let mut body = fetcher.fetch(job.range.clone()).await?;
        stagger.streaming(slot, Instant::now(), job.len());
        while let Some((offset, chunk)) = body.next_chunk().await? {
            let now = Instant::now();
            stagger.progress(slot, now, chunk.len() as u64);
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
            if next.is_none() && stagger.may_start(slot ^ 1, now) {
                // A neighbour serving several sessions caps the pieces in
                // flight: without a permit the next piece waits for this one.
                let permit = match &limits.pieces {
                    Some(sem) => match sem.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => continue,
                    },
                    None => None,
                };
                let Ok(job) = jobs.try_recv() else {
                    continue;
                };
                // A bad range is reported by the piece's own fetch.
                let sent = body.pipeline(job.range.clone()).await.unwrap_or(false);
                if sent {
                    stagger.requested_behind(slot ^ 1, now);
                }
                *next = Some(Next { job, permit, sent });
            }
        }
        Ok(Outcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tandem_fetch::{FetchConfig, OriginFiles, Resource, TargetPolicy, serve_origin};
    use tandem_http::{Parse, RequestHead, ResponseHead};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// tandem's origin behind a proxy that counts connections.
    async fn counted_origin(data: Vec<u8>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let files = OriginFiles::memory().with_rate_limit(Some(8_000_000));
        files.insert("/f.bin", data);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = listener.local_addr().unwrap();
        tokio::spawn(serve_origin(listener, files));
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counter = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = proxy.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut o = TcpStream::connect(origin).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut o).await;
                });
            }
        });
        (addr, conns)
    }

    async fn resource(addr: std::net::SocketAddr) -> Resource {
        let raw = "GET /f.bin HTTP/1.1\r\nHost: o\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\n";
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let Ok(Parse::Complete { head, .. }) = ResponseHead::parse(&buf) else {
            panic!("no response head");
        };
        let total = tandem_http::ContentRange::parse(head.headers.get("content-range").unwrap())
            .unwrap()
            .complete_len
            .unwrap();
        let req = "GET /f.bin HTTP/1.1\r\nHost: o\r\n\r\n";
        let Ok(Parse::Complete { head: request, .. }) = RequestHead::parse(req.as_bytes()) else {
            panic!("bad request");
        };
        Resource {
            origin: addr,
            host: "o".into(),
            request,
            validator: head.validator().unwrap(),
            total_len: total,
        }
    }

    #[tokio::test]
    async fn pieces_follow_each_other_on_one_connection() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (addr, conns) = counted_origin(data.clone()).await;
        let res = resource(addr).await;
        let before = conns.load(Ordering::SeqCst);
        let cfg = FetchConfig {
            policy: TargetPolicy {
                allow_loopback: true,
                allowed_ports: vec![addr.port()],
                ..TargetPolicy::default()
            },
            ..FetchConfig::default()
        };
        let fetcher = RangeFetcher::new(res, cfg).unwrap();
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let (out, mut out_rx) = mpsc::channel(64);
        let session = SessionKey::random();
        let worker = tokio::spawn(run_worker(
            session,
            fetcher,
            jobs_rx,
            CancelSet::default(),
            out,
            WorkerLimits::default(),
        ));
        // Out of order and of different sizes, all queued at once.
        let ranges = [
            (1, 400_000..600_000u64),
            (2, 0..1),
            (3, 1..150_000),
            (4, 999_999..1_000_000),
            (5, 600_000..999_999),
            (6, 150_000..400_000),
        ];
        for (piece, range) in ranges.iter().cloned() {
            jobs.send(PieceJob { piece, range }).unwrap();
        }
        drop(jobs);
        let mut got = vec![0u8; data.len()];
        let mut ends = Vec::new();
        while let Some(m) = out_rx.recv().await {
            match m {
                Message::PieceData { offset, bytes, .. } => {
                    got[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
                }
                Message::PieceEnd { piece, .. } => ends.push(piece),
                other => panic!("unexpected {other:?}"),
            }
        }
        worker.await.unwrap();
        assert_eq!(ends, vec![1, 2, 3, 4, 5, 6], "pieces end in queue order");
        assert!(got == data, "bytes differ");
        assert_eq!(conns.load(Ordering::SeqCst) - before, 1, "one connection");
    }
}
