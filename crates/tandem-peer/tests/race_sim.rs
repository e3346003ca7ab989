//! Seeded simulation of two well-behaved routers over one connection with
//! random interleavings: requester and server act on what they have seen
//! so far, bytes cross the wire in random slices. Legitimate races (data
//! crossing a Cancel, a PieceRequest crossing a Refuse, a PieceCancel
//! crossing a PieceEnd, ...) must never be mistaken for protocol errors,
//! and what each side's application believes may be sent must match what
//! its connection's rules allow.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_peer::{
    ByteRange, Config, Connection, Event, Hello, KeyPair, Message, Negotiate, PeerSet,
    PieceErrorKind, RefuseReason, Sent, SessionKey, Validator,
};

const BODY: u64 = 10_000;

fn pair(now: Instant) -> (Connection, Connection) {
    let (ka, kb) = (
        KeyPair::from_private([1; 32]).unwrap(),
        KeyPair::from_private([2; 32]).unwrap(),
    );
    let mut peers = PeerSet::new();
    peers.insert(ka.public(), "a");
    let mut a = Connection::new_initiator(
        now,
        &ka,
        &kb.public(),
        Hello::new("a", 0),
        Config::default(),
    )
    .unwrap();
    let mut b = Connection::new_responder(
        now,
        &kb,
        Arc::new(peers),
        Hello::new("b", 0),
        Config::default(),
    )
    .unwrap();
    let m1 = a.pending_output().to_vec();
    a.advance_output(m1.len());
    b.handle_input(now, &m1).unwrap();
    let m2 = b.pending_output().to_vec();
    b.advance_output(m2.len());
    a.handle_input(now, &m2).unwrap();
    assert!(matches!(a.poll_event(), Some(Event::Connected(_))));
    assert!(matches!(b.poll_event(), Some(Event::Connected(_))));
    (a, b)
}

#[derive(Default)]
struct ReqSession {
    committed: bool,
    next_piece: u64,
    /// Outstanding pieces not cancelled by us.
    pieces: Vec<u64>,
}

#[derive(Default)]
struct Requester {
    sessions: HashMap<SessionKey, ReqSession>,
    next_key: u8,
}

struct SrvPiece {
    next: u64,
    end: u64,
}

enum SrvSession {
    Offered,
    Committed(HashMap<u64, SrvPiece>),
}

#[derive(Default)]
struct Server {
    sessions: HashMap<SessionKey, SrvSession>,
}

fn pick<T: Copy>(rng: &mut StdRng, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.random_range(0..v.len())])
}

fn negotiate(session: SessionKey) -> Message {
    Message::Negotiate(Box::new(Negotiate {
        session,
        origin: "203.0.113.1:80".parse().unwrap(),
        host: "h".into(),
        target: "/f".into(),
        headers: vec![],
        validator: Validator::ETag("\"v\"".into()),
        body_length: BODY,
        range: ByteRange::new(0, BODY),
        hop_budget: 0,
    }))
}

/// The application acts on the events it has seen; the connection may
/// already have processed a later message that closed the session (events
/// are queued), in which case the send is skipped. It must never be a
/// rule violation.
fn must_send(c: &mut Connection, now: Instant, m: &Message) {
    match c.send(now, m) {
        Ok(Sent::Queued | Sent::Skipped) => {}
        Err(e) => panic!("app believed {m:?} was allowed, connection said {e}"),
    }
}

impl Requester {
    fn act(&mut self, rng: &mut StdRng, c: &mut Connection, now: Instant) {
        let keys: Vec<SessionKey> = self.sessions.keys().copied().collect();
        match rng.random_range(0..10) {
            0 if self.sessions.len() < 4 && self.next_key < 200 => {
                self.next_key += 1;
                let k = SessionKey([self.next_key; 16]);
                must_send(c, now, &negotiate(k));
                self.sessions.insert(k, ReqSession::default());
            }
            1..=5 => {
                let Some(k) = pick(rng, &keys) else { return };
                let s = self.sessions.get_mut(&k).unwrap();
                if !s.committed || s.pieces.len() >= 8 {
                    return;
                }
                let start = rng.random_range(0..BODY - 1);
                let end = rng.random_range(start + 1..=BODY.min(start + 3000));
                let p = s.next_piece;
                s.next_piece += 1;
                must_send(
                    c,
                    now,
                    &Message::PieceRequest {
                        session: k,
                        piece: p,
                        range: ByteRange::new(start, end),
                    },
                );
                s.pieces.push(p);
            }
            6 | 7 => {
                let Some(k) = pick(rng, &keys) else { return };
                let s = self.sessions.get_mut(&k).unwrap();
                let Some(p) = pick(rng, &s.pieces) else {
                    return;
                };
                s.pieces.retain(|x| *x != p);
                must_send(
                    c,
                    now,
                    &Message::PieceCancel {
                        session: k,
                        piece: p,
                    },
                );
            }
            8 => {
                let Some(k) = pick(rng, &keys) else { return };
                self.sessions.remove(&k);
                must_send(c, now, &Message::Cancel { session: k });
            }
            _ => {}
        }
    }

    fn on_message(&mut self, m: Message) {
        match m {
            Message::Commit { session, .. } => {
                self.sessions.get_mut(&session).unwrap().committed = true;
            }
            Message::Refuse { session, .. } => {
                assert!(self.sessions.remove(&session).is_some());
            }
            Message::PieceData { session, piece, .. } => {
                assert!(self.sessions[&session].pieces.contains(&piece));
            }
            Message::PieceEnd { session, piece } | Message::PieceError { session, piece, .. } => {
                let s = self.sessions.get_mut(&session).unwrap();
                assert!(
                    s.pieces.contains(&piece),
                    "terminal for a cancelled piece surfaced"
                );
                s.pieces.retain(|x| *x != piece);
            }
            Message::Advertise { .. } => {}
            other => panic!("requester got {other:?}"),
        }
    }
}

impl Server {
    fn act(&mut self, rng: &mut StdRng, c: &mut Connection, now: Instant) {
        let keys: Vec<SessionKey> = self.sessions.keys().copied().collect();
        let Some(k) = pick(rng, &keys) else { return };
        let roll = rng.random_range(0..12);
        let s = self.sessions.get_mut(&k).unwrap();
        match s {
            SrvSession::Offered => {
                if roll < 8 {
                    must_send(
                        c,
                        now,
                        &Message::Commit {
                            session: k,
                            rate_bps: 1,
                            parallel: 2,
                        },
                    );
                    *s = SrvSession::Committed(HashMap::new());
                } else {
                    must_send(
                        c,
                        now,
                        &Message::Refuse {
                            session: k,
                            reason: RefuseReason::Capacity,
                        },
                    );
                    self.sessions.remove(&k);
                }
            }
            SrvSession::Committed(pieces) => {
                if roll == 11 {
                    must_send(
                        c,
                        now,
                        &Message::Refuse {
                            session: k,
                            reason: RefuseReason::ShuttingDown,
                        },
                    );
                    self.sessions.remove(&k);
                    return;
                }
                let ids: Vec<u64> = pieces.keys().copied().collect();
                let Some(p) = pick(rng, &ids) else { return };
                let piece = pieces.get_mut(&p).unwrap();
                if roll == 10 {
                    must_send(
                        c,
                        now,
                        &Message::PieceError {
                            session: k,
                            piece: p,
                            kind: PieceErrorKind::Origin,
                            detail: String::new(),
                        },
                    );
                    pieces.remove(&p);
                } else if piece.next == piece.end {
                    must_send(
                        c,
                        now,
                        &Message::PieceEnd {
                            session: k,
                            piece: p,
                        },
                    );
                    pieces.remove(&p);
                } else {
                    let n = rng.random_range(1..=(piece.end - piece.next).min(700));
                    must_send(
                        c,
                        now,
                        &Message::PieceData {
                            session: k,
                            piece: p,
                            offset: piece.next,
                            bytes: Bytes::from(vec![7u8; n as usize]),
                        },
                    );
                    piece.next += n;
                }
            }
        }
    }

    fn on_message(&mut self, c: &mut Connection, now: Instant, m: Message) {
        match m {
            Message::Negotiate(n) => {
                assert!(
                    self.sessions
                        .insert(n.session, SrvSession::Offered)
                        .is_none()
                );
            }
            Message::PieceRequest {
                session,
                piece,
                range,
            } => {
                let Some(SrvSession::Committed(p)) = self.sessions.get_mut(&session) else {
                    panic!("PieceRequest surfaced for a session not committed");
                };
                p.insert(
                    piece,
                    SrvPiece {
                        next: range.start,
                        end: range.end,
                    },
                );
            }
            Message::PieceCancel { session, piece } => {
                let Some(SrvSession::Committed(p)) = self.sessions.get_mut(&session) else {
                    panic!("PieceCancel surfaced for a session not committed");
                };
                assert!(p.remove(&piece).is_some());
                must_send(
                    c,
                    now,
                    &Message::PieceError {
                        session,
                        piece,
                        kind: PieceErrorKind::Cancelled,
                        detail: String::new(),
                    },
                );
            }
            Message::Cancel { session } => {
                assert!(self.sessions.remove(&session).is_some());
            }
            other => panic!("server got {other:?}"),
        }
    }
}

/// Moves up to `n` bytes from `from`'s output into `to`.
fn transfer(from: &mut Connection, to: &mut Connection, n: usize, now: Instant) {
    let k = n.min(from.pending_output().len());
    if k == 0 {
        return;
    }
    let bytes = from.pending_output()[..k].to_vec();
    from.advance_output(k);
    if let Err(e) = to.handle_input(now, &bytes) {
        panic!("false protocol error: {e}");
    }
}

#[test]
fn legitimate_races_are_never_protocol_errors() {
    let mut messages = 0u64;
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let (mut req, mut srv) = (Requester::default(), Server::default());
        for _ in 0..400 {
            match rng.random_range(0..4) {
                0 => req.act(&mut rng, &mut a, now),
                1 => srv.act(&mut rng, &mut b, now),
                2 => {
                    let n = rng.random_range(1..3000);
                    transfer(&mut a, &mut b, n, now);
                }
                _ => {
                    let n = rng.random_range(1..3000);
                    transfer(&mut b, &mut a, n, now);
                }
            }
            while let Some(Event::Message(m)) = a.poll_event() {
                messages += 1;
                req.on_message(m);
            }
            while let Some(Event::Message(m)) = b.poll_event() {
                messages += 1;
                srv.on_message(&mut b, now, m);
            }
        }
        // drain both directions: still no error
        for _ in 0..50 {
            transfer(&mut a, &mut b, usize::MAX, now);
            transfer(&mut b, &mut a, usize::MAX, now);
            while let Some(Event::Message(m)) = a.poll_event() {
                req.on_message(m);
            }
            while let Some(Event::Message(m)) = b.poll_event() {
                srv.on_message(&mut b, now, m);
            }
        }
        assert!(!a.is_closed() && !b.is_closed());
    }
    assert!(
        messages > 10_000,
        "simulation too thin: {messages} messages"
    );
}
