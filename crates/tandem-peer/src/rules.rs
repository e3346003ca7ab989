//! Per-connection session and piece state rules.
//!
//! Each side of a connection tracks the sessions it requested over this
//! connection ("outbound": it sent `Negotiate`) and the sessions the remote
//! requested ("inbound"). The message type tells which table a message
//! belongs to, so the same key may live in both without ambiguity.
//!
//! ```text
//!  requester side (outbound)                 server side (inbound)
//!
//!  send Negotiate ─► Negotiating             recv Negotiate ─► Offered
//!  recv Commit    ─► Committed               send Commit    ─► Committed
//!  recv Refuse    ─► (closed)                send Refuse    ─► (closed)
//!  send Cancel    ─► (closed)                recv Cancel    ─► (closed)
//!
//!  piece (in a committed session):
//!  send PieceRequest ─► Outstanding(next=start)
//!  recv PieceData     requires offset == next, next+len <= end
//!  recv PieceEnd      requires next == end            ─► (done)
//!  recv PieceError                                    ─► (done)
//!  send PieceCancel  ─► Cancelling (data dropped until PieceEnd/PieceError)
//! ```
//!
//! A closed session leaves a tombstone (bounded FIFO). A requester may
//! negotiate a key again on the same connection after a `Refuse` (nothing
//! of it can still be in flight), never after its own `Cancel`. Messages that cross a
//! close on the wire (data after our `Cancel`, a `PieceRequest` after our
//! `Refuse`) hit a tombstone and are dropped silently; messages for a session
//! never seen are protocol errors.

use std::collections::{HashMap, VecDeque};

use crate::message::{ByteRange, Message, PieceId, SessionKey};

/// Most sessions open in one direction of one connection.
pub const MAX_SESSIONS_PER_CONNECTION: usize = 1024;
/// Most outstanding pieces in one session on one connection.
pub const MAX_PIECES_PER_SESSION: usize = 256;
/// Closed sessions remembered per direction for late messages.
pub const TOMBSTONES: usize = 1024;

/// A message that breaks the state rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// `Hello` outside the handshake.
    #[error("Hello after the handshake")]
    HelloAfterHandshake,
    /// A message names a session never negotiated on this connection.
    #[error("{kind} for unknown session {session}")]
    UnknownSession {
        /// Message type.
        kind: &'static str,
        /// The session.
        session: SessionKey,
    },
    /// A message that is not valid in the session's current state.
    #[error("{kind} not allowed in state {state} of session {session}")]
    WrongState {
        /// Message type.
        kind: &'static str,
        /// State name.
        state: &'static str,
        /// The session.
        session: SessionKey,
    },
    /// `Negotiate` for a session already open in that direction.
    #[error("duplicate Negotiate for session {0}")]
    DuplicateSession(SessionKey),
    /// A piece message names a piece that is not outstanding.
    #[error("{kind} for unknown piece {piece} of session {session}")]
    UnknownPiece {
        /// Message type.
        kind: &'static str,
        /// The session.
        session: SessionKey,
        /// The piece.
        piece: PieceId,
    },
    /// `PieceRequest` reusing an outstanding piece id.
    #[error("duplicate piece id {1} in session {0}")]
    DuplicatePiece(SessionKey, PieceId),
    /// A piece range outside the negotiated range.
    #[error("piece range {0:?} outside negotiated range {1:?}")]
    RangeOutside(ByteRange, ByteRange),
    /// `PieceData` not at the next expected offset, or past the piece end.
    #[error("piece data at {offset}+{len}, expected offset {expected} below end {end}")]
    DataOutOfOrder {
        /// Offset received.
        offset: u64,
        /// Bytes received.
        len: u64,
        /// Offset expected.
        expected: u64,
        /// End of the piece.
        end: u64,
    },
    /// `PieceEnd` before all bytes of the piece were sent.
    #[error("PieceEnd at offset {next}, piece ends at {end}")]
    EarlyEnd {
        /// Bytes sent so far end here.
        next: u64,
        /// Piece end.
        end: u64,
    },
    /// Too many sessions or pieces.
    #[error("limit exceeded: {0}")]
    Limit(&'static str),
    /// Reusing a session key that was closed on this connection.
    #[error("session key {0} was already used on this connection")]
    KeyReused(SessionKey),
}

/// What to do with a message that passed the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Deliver (received) / transmit (sent).
    Pass,
    /// Drop silently (late message for a closed session or cancelled piece).
    Drop,
}

#[derive(Debug)]
struct Piece {
    next: u64,
    end: u64,
    cancelling: bool,
}

#[derive(Debug)]
enum SessionState {
    /// Outbound: sent Negotiate; inbound: received it, not answered.
    Negotiating,
    Committed(HashMap<PieceId, Piece>),
}

impl SessionState {
    fn name(&self) -> &'static str {
        match self {
            SessionState::Negotiating => "Negotiating",
            SessionState::Committed(_) => "Committed",
        }
    }
}

#[derive(Debug)]
struct Session {
    range: ByteRange,
    state: SessionState,
}

#[derive(Debug, Default)]
struct Tombstones {
    order: VecDeque<SessionKey>,
    /// Key -> whether the requester may negotiate it again on this
    /// connection (true after a `Refuse`: the server sends nothing after it;
    /// false after a `Cancel`: data sent before the server saw it may still
    /// be in flight).
    set: HashMap<SessionKey, bool>,
}

impl Tombstones {
    fn insert(&mut self, key: SessionKey, reusable: bool) {
        if self.set.insert(key, reusable).is_none() {
            self.order.push_back(key);
            if self.order.len() > TOMBSTONES {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, key: &SessionKey) -> bool {
        self.set.contains_key(key)
    }

    fn reusable(&self, key: &SessionKey) -> bool {
        self.set.get(key).copied().unwrap_or(true)
    }

    fn remove(&mut self, key: &SessionKey) {
        if self.set.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

/// Which table a message acts on, seen from the side that *receives* it.
#[derive(Clone, Copy)]
enum Table {
    /// Sessions the local side requested.
    Outbound,
    /// Sessions the remote side requested.
    Inbound,
}

#[derive(Debug, Default)]
struct Directional {
    sessions: HashMap<SessionKey, Session>,
    tombstones: Tombstones,
}

impl Directional {
    fn close(&mut self, key: SessionKey, reusable: bool) {
        self.sessions.remove(&key);
        self.tombstones.insert(key, reusable);
    }
}

/// The rule tracker of one connection.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    outbound: Directional,
    inbound: Directional,
}

impl Rules {
    /// Checks and applies a message the local side is about to send.
    pub(crate) fn on_send(&mut self, msg: &Message) -> Result<Disposition, Violation> {
        self.apply(msg, true)
    }

    /// Checks and applies a message received from the remote side.
    pub(crate) fn on_recv(&mut self, msg: &Message) -> Result<Disposition, Violation> {
        self.apply(msg, false)
    }

    /// Number of sessions open in each direction (outbound, inbound).
    pub(crate) fn open_sessions(&self) -> (usize, usize) {
        (self.outbound.sessions.len(), self.inbound.sessions.len())
    }

    fn table(&mut self, t: Table) -> &mut Directional {
        match t {
            Table::Outbound => &mut self.outbound,
            Table::Inbound => &mut self.inbound,
        }
    }

    /// `sending`: the local side sends `msg`; otherwise it received it.
    fn apply(&mut self, msg: &Message, sending: bool) -> Result<Disposition, Violation> {
        // The requester's table is "outbound" on the requester and "inbound"
        // on the server. Messages sent by the requester: Negotiate, Cancel,
        // PieceRequest, PieceCancel. Messages sent by the server: Commit,
        // Refuse, PieceData, PieceEnd, PieceError.
        let requester_msg = matches!(
            msg,
            Message::Negotiate(_)
                | Message::Cancel { .. }
                | Message::PieceRequest { .. }
                | Message::PieceCancel { .. }
        );
        let table = match (requester_msg, sending) {
            (true, true) | (false, false) => Table::Outbound,
            (true, false) | (false, true) => Table::Inbound,
        };
        let kind = msg.kind();
        match msg {
            Message::Hello(_) => Err(Violation::HelloAfterHandshake),
            Message::Advertise { .. } | Message::Keepalive => Ok(Disposition::Pass),
            Message::Negotiate(n) => {
                let dir = self.table(table);
                if dir.sessions.contains_key(&n.session) {
                    return Err(Violation::DuplicateSession(n.session));
                }
                if dir.tombstones.contains(&n.session) {
                    if sending && !dir.tombstones.reusable(&n.session) {
                        // Late data of the old incarnation could be mistaken
                        // for the new one: never reuse a key on a connection.
                        return Err(Violation::KeyReused(n.session));
                    }
                    dir.tombstones.remove(&n.session);
                }
                if dir.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
                    return Err(Violation::Limit("sessions per connection"));
                }
                dir.sessions.insert(
                    n.session,
                    Session {
                        range: n.range,
                        state: SessionState::Negotiating,
                    },
                );
                Ok(Disposition::Pass)
            }
            Message::Commit { session, .. } => {
                let dir = self.table(table);
                let s = match lookup(dir, *session, kind)? {
                    Some(s) => s,
                    None => return Ok(Disposition::Drop),
                };
                match s.state {
                    SessionState::Negotiating => {
                        s.state = SessionState::Committed(HashMap::new());
                        Ok(Disposition::Pass)
                    }
                    SessionState::Committed(_) => Err(wrong_state(kind, s, *session)),
                }
            }
            Message::Refuse { session, .. } => {
                let dir = self.table(table);
                if lookup(dir, *session, kind)?.is_none() {
                    return Ok(Disposition::Drop);
                }
                dir.close(*session, true);
                Ok(Disposition::Pass)
            }
            Message::Cancel { session } => {
                let dir = self.table(table);
                if dir.sessions.contains_key(session) {
                    dir.close(*session, false);
                    Ok(Disposition::Pass)
                } else if sending {
                    // Cancelling a session the peer already refused: the
                    // peer has forgotten it, nothing to send.
                    if dir.tombstones.contains(session) {
                        Ok(Disposition::Drop)
                    } else {
                        Err(Violation::UnknownSession {
                            kind,
                            session: *session,
                        })
                    }
                } else {
                    // Cancel is idempotent: it may cross our Refuse.
                    Ok(Disposition::Drop)
                }
            }
            Message::PieceRequest {
                session,
                piece,
                range,
            } => {
                let dir = self.table(table);
                let s = match lookup(dir, *session, kind)? {
                    Some(s) => s,
                    None => return Ok(Disposition::Drop),
                };
                let neg_range = s.range;
                let pieces = committed(s, kind, *session)?;
                if !neg_range.contains_range(range) {
                    return Err(Violation::RangeOutside(*range, neg_range));
                }
                if pieces.contains_key(piece) {
                    return Err(Violation::DuplicatePiece(*session, *piece));
                }
                if pieces.len() >= MAX_PIECES_PER_SESSION {
                    return Err(Violation::Limit("pieces per session"));
                }
                pieces.insert(
                    *piece,
                    Piece {
                        next: range.start,
                        end: range.end,
                        cancelling: false,
                    },
                );
                Ok(Disposition::Pass)
            }
            Message::PieceCancel { session, piece } => {
                let dir = self.table(table);
                let s = match lookup(dir, *session, kind)? {
                    Some(s) => s,
                    None => return Ok(Disposition::Drop),
                };
                let pieces = committed(s, kind, *session)?;
                match pieces.get_mut(piece) {
                    Some(p) if sending => {
                        if p.cancelling {
                            Ok(Disposition::Drop)
                        } else {
                            p.cancelling = true;
                            Ok(Disposition::Pass)
                        }
                    }
                    // Received: the server must answer with PieceError or
                    // PieceEnd; the piece stays tracked until it does.
                    Some(_) => Ok(Disposition::Pass),
                    None if sending => Err(Violation::UnknownPiece {
                        kind,
                        session: *session,
                        piece: *piece,
                    }),
                    // It may cross our PieceEnd/PieceError.
                    None => Ok(Disposition::Drop),
                }
            }
            Message::PieceData {
                session,
                piece,
                offset,
                bytes,
            } => {
                let dir = self.table(table);
                let s = match lookup(dir, *session, kind)? {
                    Some(s) => s,
                    None => return Ok(Disposition::Drop),
                };
                let pieces = committed(s, kind, *session)?;
                let p = pieces.get_mut(piece).ok_or(Violation::UnknownPiece {
                    kind,
                    session: *session,
                    piece: *piece,
                })?;
                let len = bytes.len() as u64;
                let fits = offset.checked_add(len).is_some_and(|e| e <= p.end);
                if *offset != p.next || !fits {
                    return Err(Violation::DataOutOfOrder {
                        offset: *offset,
                        len,
                        expected: p.next,
                        end: p.end,
                    });
                }
                p.next += len;
                if p.cancelling && !sending {
                    Ok(Disposition::Drop)
                } else {
                    Ok(Disposition::Pass)
                }
            }
            Message::PieceEnd { session, piece } | Message::PieceError { session, piece, .. } => {
                let is_end = matches!(msg, Message::PieceEnd { .. });
                let dir = self.table(table);
                let s = match lookup(dir, *session, kind)? {
                    Some(s) => s,
                    None => return Ok(Disposition::Drop),
                };
                let pieces = committed(s, kind, *session)?;
                let p = pieces.get(piece).ok_or(Violation::UnknownPiece {
                    kind,
                    session: *session,
                    piece: *piece,
                })?;
                if is_end && p.next != p.end {
                    return Err(Violation::EarlyEnd {
                        next: p.next,
                        end: p.end,
                    });
                }
                let cancelling = p.cancelling;
                pieces.remove(piece);
                if cancelling && !sending {
                    Ok(Disposition::Drop)
                } else {
                    Ok(Disposition::Pass)
                }
            }
        }
    }
}

/// Finds an open session; `Ok(None)` for a tombstoned one (drop), error for
/// a session never seen.
fn lookup<'a>(
    dir: &'a mut Directional,
    session: SessionKey,
    kind: &'static str,
) -> Result<Option<&'a mut Session>, Violation> {
    if dir.tombstones.contains(&session) && !dir.sessions.contains_key(&session) {
        return Ok(None);
    }
    dir.sessions
        .get_mut(&session)
        .map(Some)
        .ok_or(Violation::UnknownSession { kind, session })
}

fn committed<'a>(
    s: &'a mut Session,
    kind: &'static str,
    session: SessionKey,
) -> Result<&'a mut HashMap<PieceId, Piece>, Violation> {
    match &mut s.state {
        SessionState::Committed(p) => Ok(p),
        SessionState::Negotiating => Err(Violation::WrongState {
            kind,
            state: "Negotiating",
            session,
        }),
    }
}

fn wrong_state(kind: &'static str, s: &Session, session: SessionKey) -> Violation {
    Violation::WrongState {
        kind,
        state: s.state.name(),
        session,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::{Negotiate, RefuseReason, Validator};

    const S: SessionKey = SessionKey([1; 16]);

    fn negotiate(range: ByteRange) -> Message {
        Message::Negotiate(Box::new(Negotiate {
            session: S,
            origin: "203.0.113.1:80".parse().unwrap(),
            host: "h".into(),
            target: "/".into(),
            headers: vec![],
            validator: Validator::ETag("\"x\"".into()),
            body_length: range.end,
            range,
            hop_budget: 0,
        }))
    }

    fn data(piece: PieceId, offset: u64, len: usize) -> Message {
        Message::PieceData {
            session: S,
            piece,
            offset,
            bytes: Bytes::from(vec![0u8; len]),
        }
    }

    /// Requester `a` and server `b`, with session S committed over 0..100.
    fn committed_pair() -> (Rules, Rules) {
        let (mut a, mut b) = (Rules::default(), Rules::default());
        let n = negotiate(ByteRange::new(0, 100));
        assert_eq!(a.on_send(&n), Ok(Disposition::Pass));
        assert_eq!(b.on_recv(&n), Ok(Disposition::Pass));
        let c = Message::Commit {
            session: S,
            rate_bps: 1,
            parallel: 2,
        };
        assert_eq!(b.on_send(&c), Ok(Disposition::Pass));
        assert_eq!(a.on_recv(&c), Ok(Disposition::Pass));
        (a, b)
    }

    fn both(a: &mut Rules, b: &mut Rules, from_a: bool, m: &Message) -> Disposition {
        let (tx, rx) = if from_a { (a, b) } else { (b, a) };
        let d = tx.on_send(m).unwrap();
        assert_eq!(rx.on_recv(m).unwrap(), d);
        d
    }

    #[test]
    fn full_piece_flow() {
        let (mut a, mut b) = committed_pair();
        let req = Message::PieceRequest {
            session: S,
            piece: 7,
            range: ByteRange::new(10, 30),
        };
        both(&mut a, &mut b, true, &req);
        both(&mut a, &mut b, false, &data(7, 10, 15));
        // early end is refused on both sides
        let end = Message::PieceEnd {
            session: S,
            piece: 7,
        };
        assert!(matches!(b.on_send(&end), Err(Violation::EarlyEnd { .. })));
        assert!(matches!(a.on_recv(&end), Err(Violation::EarlyEnd { .. })));
        both(&mut a, &mut b, false, &data(7, 25, 5));
        both(&mut a, &mut b, false, &end);
        // the piece is gone now
        assert!(matches!(
            a.on_recv(&data(7, 30, 1)),
            Err(Violation::UnknownPiece { .. })
        ));
    }

    #[test]
    fn data_out_of_order_or_past_end_is_a_violation() {
        let (mut a, mut b) = committed_pair();
        let req = Message::PieceRequest {
            session: S,
            piece: 1,
            range: ByteRange::new(0, 10),
        };
        both(&mut a, &mut b, true, &req);
        assert!(matches!(
            a.on_recv(&data(1, 1, 2)),
            Err(Violation::DataOutOfOrder { .. })
        ));
        let (mut a, mut b) = committed_pair();
        both(&mut a, &mut b, true, &req);
        assert!(matches!(
            a.on_recv(&data(1, 0, 11)),
            Err(Violation::DataOutOfOrder { .. })
        ));
    }

    #[test]
    fn data_for_unknown_session_or_before_commit_is_a_violation() {
        let mut a = Rules::default();
        assert!(matches!(
            a.on_recv(&data(1, 0, 1)),
            Err(Violation::UnknownSession { .. })
        ));
        let n = negotiate(ByteRange::new(0, 100));
        a.on_send(&n).unwrap();
        assert!(matches!(
            a.on_recv(&data(1, 0, 1)),
            Err(Violation::WrongState { .. })
        ));
        assert_eq!(
            a.on_recv(&Message::Hello(crate::Hello::new("x", 0))),
            Err(Violation::HelloAfterHandshake)
        );
    }

    #[test]
    fn late_messages_after_cancel_are_dropped() {
        let (mut a, mut b) = committed_pair();
        let req = Message::PieceRequest {
            session: S,
            piece: 1,
            range: ByteRange::new(0, 50),
        };
        both(&mut a, &mut b, true, &req);
        // b sends data while a's Cancel is in flight
        let d = data(1, 0, 10);
        b.on_send(&d).unwrap();
        a.on_send(&Message::Cancel { session: S }).unwrap();
        assert_eq!(a.on_recv(&d), Ok(Disposition::Drop));
        assert_eq!(
            b.on_recv(&Message::Cancel { session: S }),
            Ok(Disposition::Pass)
        );
        // the key cannot be reused on this connection by the requester
        assert_eq!(
            a.on_send(&negotiate(ByteRange::new(0, 100))),
            Err(Violation::KeyReused(S))
        );
        // the server forgot it: a racing fetch task's data is not sent
        assert_eq!(b.on_send(&data(1, 10, 1)), Ok(Disposition::Drop));
    }

    #[test]
    fn piece_request_crossing_refuse_is_dropped() {
        let (mut a, mut b) = committed_pair();
        let req = Message::PieceRequest {
            session: S,
            piece: 1,
            range: ByteRange::new(0, 50),
        };
        a.on_send(&req).unwrap();
        let refuse = Message::Refuse {
            session: S,
            reason: RefuseReason::Capacity,
        };
        b.on_send(&refuse).unwrap();
        assert_eq!(b.on_recv(&req), Ok(Disposition::Drop));
        assert_eq!(a.on_recv(&refuse), Ok(Disposition::Pass));
        // Cancel after the refuse: nothing to send
        assert_eq!(
            a.on_send(&Message::Cancel { session: S }),
            Ok(Disposition::Drop)
        );
    }

    #[test]
    fn cancelled_piece_data_dropped_until_terminal() {
        let (mut a, mut b) = committed_pair();
        let req = Message::PieceRequest {
            session: S,
            piece: 4,
            range: ByteRange::new(0, 20),
        };
        both(&mut a, &mut b, true, &req);
        let d = data(4, 0, 5);
        b.on_send(&d).unwrap();
        let pc = Message::PieceCancel {
            session: S,
            piece: 4,
        };
        a.on_send(&pc).unwrap();
        assert_eq!(a.on_recv(&d), Ok(Disposition::Drop));
        assert_eq!(b.on_recv(&pc), Ok(Disposition::Pass));
        let e = Message::PieceError {
            session: S,
            piece: 4,
            kind: crate::PieceErrorKind::Cancelled,
            detail: String::new(),
        };
        b.on_send(&e).unwrap();
        assert_eq!(a.on_recv(&e), Ok(Disposition::Drop));
        // now the id may be reused
        both(&mut a, &mut b, true, &req);
    }

    #[test]
    fn piece_outside_negotiated_range_and_duplicates() {
        let (mut a, mut b) = committed_pair();
        let bad = Message::PieceRequest {
            session: S,
            piece: 1,
            range: ByteRange::new(90, 101),
        };
        assert!(matches!(b.on_recv(&bad), Err(Violation::RangeOutside(..))));
        let ok = Message::PieceRequest {
            session: S,
            piece: 1,
            range: ByteRange::new(90, 100),
        };
        both(&mut a, &mut b, true, &ok);
        assert_eq!(b.on_recv(&ok), Err(Violation::DuplicatePiece(S, 1)));
        assert_eq!(
            b.on_recv(&negotiate(ByteRange::new(0, 1))),
            Err(Violation::DuplicateSession(S))
        );
    }

    #[test]
    fn piece_limit() {
        let (mut a, _b) = committed_pair();
        for i in 0..MAX_PIECES_PER_SESSION as u64 {
            a.on_send(&Message::PieceRequest {
                session: S,
                piece: i,
                range: ByteRange::new(0, 1),
            })
            .unwrap();
        }
        assert!(matches!(
            a.on_send(&Message::PieceRequest {
                session: S,
                piece: 100_000,
                range: ByteRange::new(0, 1),
            }),
            Err(Violation::Limit(_))
        ));
        assert_eq!(a.open_sessions(), (1, 0));
    }
}
