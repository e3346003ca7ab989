//! The sans-IO peer connection: Noise IK handshake, AEAD framing, message
//! state rules and keepalive/idle timers. No sockets, no clock.
//!
//! ```text
//!  initiator                                   responder
//!  new_initiator ── frame: IK msg 1 ──────────► new_responder
//!  (payload: Hello)                            checks initiator key ∈ PeerSet
//!                 ◄── frame: IK msg 2 ──────── (payload: Hello)
//!  Established                                 Established
//!       ◄──────── frames: sealed Messages ────────►
//! ```
//!
//! Calling contract (quinn style): feed received bytes with
//! [`Connection::handle_input`], queue messages with [`Connection::send`],
//! write [`Connection::pending_output`] to the socket and report how much was
//! written with [`Connection::advance_output`], take received messages with
//! [`Connection::poll_event`], and call [`Connection::handle_timeout`] when
//! the instant from [`Connection::poll_timeout`] is reached. `now` must never
//! go backwards. Any error returned by `handle_input` or `handle_timeout` is
//! fatal: the connection is closed and must be dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use snow::params::NoiseParams;
use snow::{HandshakeState, TransportState};

use crate::frame::{FrameDecoder, FrameError, MAX_FRAME_LEN, encode_frame};
use crate::keys::{KeyPair, PeerSet, PublicKey};
use crate::message::{Hello, Message, MessageError, PROTOCOL_VERSION};
use crate::rules::{Disposition, Rules, Violation};

/// The Noise protocol used between routers.
pub const NOISE_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Prologue mixed into the handshake hash: both sides must agree on it, so a
/// different framing generation can never complete a handshake with this one.
pub const PROLOGUE: &[u8] = b"tandem-peer framing 1";

pub(crate) fn noise_params() -> Result<NoiseParams, snow::Error> {
    NOISE_PATTERN.parse()
}

/// Timer settings of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Send a `Keepalive` when nothing was sent for this long.
    pub keepalive_interval: Duration,
    /// Close the connection when nothing was received for this long.
    pub idle_timeout: Duration,
    /// Close the connection if the handshake is not done within this time.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(35),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Who the remote router is, once the handshake completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The remote's authenticated static key.
    pub key: PublicKey,
    /// The remote's hello.
    pub hello: Hello,
}

/// Something the connection produced for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected(PeerInfo),
    /// A message that passed every check.
    Message(Message),
}

/// Why a connection was closed (fatal errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The byte stream is not a sequence of valid frames.
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// The Noise handshake failed (wrong keys, garbage, tampering).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The initiator's static key is not in the responder's peer list.
    #[error("peer key {0} is not configured")]
    UnknownPeer(PublicKey),
    /// The remote speaks another protocol version.
    #[error("incompatible protocol version {remote} (local {local})")]
    IncompatibleVersion {
        /// Ours.
        local: u16,
        /// Theirs.
        remote: u16,
    },
    /// A transport frame failed authentication.
    #[error("frame failed authentication")]
    Decrypt,
    /// A frame decrypted to something that is not a valid message.
    #[error("invalid message: {0}")]
    Message(#[from] MessageError),
    /// A valid message arrived where the state rules forbid it.
    #[error("protocol violation: {0}")]
    Violation(#[from] Violation),
    /// Data arrived while the connection was not ready for it (e.g. more
    /// bytes from the initiator before the handshake completed).
    #[error("unexpected frame during handshake")]
    UnexpectedFrame,
    /// The cipher failed (nonce exhaustion).
    #[error("crypto failure: {0}")]
    Crypto(String),
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Nothing was received for the idle timeout.
    #[error("idle timeout")]
    IdleTimeout,
    /// The connection was already closed by an earlier error.
    #[error("connection closed")]
    Closed,
}

/// Errors of [`Connection::send`]. They do not close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The handshake has not completed yet.
    #[error("handshake not complete")]
    NotEstablished,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The message is invalid or too large.
    #[error("invalid message: {0}")]
    Message(#[from] MessageError),
    /// The message breaks the state rules (a bug in the caller, or a race
    /// with a session the remote closed).
    #[error("not allowed: {0}")]
    Violation(#[from] Violation),
    /// The cipher failed (nonce exhaustion).
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// Whether [`Connection::send`] put the message on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued for transmission.
    Queued,
    /// Nothing to send (e.g. `Cancel` of a session the peer already refused).
    Skipped,
}

enum State {
    /// Initiator: msg 1 sent, waiting for msg 2.
    InitiatorWait(Box<HandshakeState>),
    /// Responder: waiting for msg 1.
    ResponderWait(Box<HandshakeState>, Arc<PeerSet>),
    Established(Box<TransportState>),
    Closed,
}

/// A sans-IO peer connection (one per TCP connection).
pub struct Connection {
    state: State,
    decoder: FrameDecoder,
    out: BytesMut,
    events: VecDeque<Event>,
    rules: Rules,
    config: Config,
    local_hello: Hello,
    peer: Option<PeerInfo>,
    handshake_deadline: Instant,
    last_rx: Instant,
    last_tx: Instant,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("established", &self.is_established())
            .field("pending_output", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts a connection as the initiator towards a router whose static key
    /// is `remote`; the first handshake frame is queued immediately.
    pub fn new_initiator(
        now: Instant,
        local: &KeyPair,
        remote: &PublicKey,
        hello: Hello,
        config: Config,
    ) -> Result<Self, ConnectionError> {
        let hs = noise_params()
            .and_then(|p| snow::Builder::new(p).local_private_key(local.private_bytes()))
            .and_then(|b| b.remote_public_key(remote.as_bytes()))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
        let mut conn = Self::new(now, State::InitiatorWait(Box::new(hs)), hello, config);
        let payload = Message::Hello(conn.local_hello.clone()).encode()?;
        conn.write_handshake(&payload)?;
        Ok(conn)
    }

    /// Starts a connection as the responder; only initiators whose static key
    /// is in `peers` are accepted.
    pub fn new_responder(
        now: Instant,
        local: &KeyPair,
        peers: Arc<PeerSet>,
        hello: Hello,
        config: Config,
    ) -> Result<Self, ConnectionError> {
        let hs = noise_params()
            .and_then(|p| snow::Builder::new(p).local_private_key(local.private_bytes()))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
        Ok(Self::new(
            now,
            State::ResponderWait(Box::new(hs), peers),
            hello,
            config,
        ))
    }

    fn new(now: Instant, state: State, hello: Hello, config: Config) -> Self {
        Self {
            state,
            decoder: FrameDecoder::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            rules: Rules::default(),
            config,
            local_hello: hello,
            peer: None,
            handshake_deadline: now + config.handshake_timeout,
            last_rx: now,
            last_tx: now,
            scratch: vec![0u8; MAX_FRAME_LEN],
        }
    }

    /// Whether the handshake completed and the connection is not closed.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// Whether the connection was closed by an error.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The authenticated remote, once established.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// Sessions open on this connection: (requested by us, requested by the
    /// remote).
    pub fn open_sessions(&self) -> (usize, usize) {
        self.rules.open_sessions()
    }

    /// Feeds bytes received from the socket. Complete frames are processed
    /// at once; resulting messages are queued for [`Self::poll_event`].
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), ConnectionError> {
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        self.decoder.extend(data);
        let result = self.process_frames(now);
        if result.is_err() {
            self.close();
        }
        result
    }

    fn process_frames(&mut self, now: Instant) -> Result<(), ConnectionError> {
        while let Some(frame) = self.decoder.next_frame()? {
            self.last_rx = now;
            self.process_frame(now, &frame)?;
        }
        Ok(())
    }

    fn process_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), ConnectionError> {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::InitiatorWait(mut hs) => {
                let n = hs
                    .read_message(frame, &mut self.scratch)
                    .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
                let hello = decode_hello(&self.scratch[..n])?;
                let key = remote_static(&hs)?;
                let transport = hs
                    .into_transport_mode()
                    .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
                self.state = State::Established(Box::new(transport));
                self.established(now, key, hello)
            }
            State::ResponderWait(mut hs, peers) => {
                let n = hs
                    .read_message(frame, &mut self.scratch)
                    .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
                let key = remote_static(&hs)?;
                if !peers.contains(&key) {
                    // Send nothing: an unknown key learns no more than a
                    // closed connection.
                    return Err(ConnectionError::UnknownPeer(key));
                }
                let hello = decode_hello(&self.scratch[..n])?;
                self.state = State::ResponderWait(hs, peers);
                let payload = Message::Hello(self.local_hello.clone()).encode()?;
                self.write_handshake(&payload)?;
                let State::ResponderWait(hs, _) = std::mem::replace(&mut self.state, State::Closed)
                else {
                    return Err(ConnectionError::Closed);
                };
                let transport = hs
                    .into_transport_mode()
                    .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
                self.state = State::Established(Box::new(transport));
                // Our hello went out even on a version mismatch, so the
                // initiator learns why it is refused.
                self.established(now, key, hello)
            }
            State::Established(mut ts) => {
                let n = ts
                    .read_message(frame, &mut self.scratch)
                    .map_err(|_| ConnectionError::Decrypt)?;
                self.state = State::Established(ts);
                let msg = Message::decode(&self.scratch[..n])?;
                if self.rules.on_recv(&msg)? == Disposition::Pass
                    && !matches!(msg, Message::Keepalive)
                {
                    self.events.push_back(Event::Message(msg));
                }
                Ok(())
            }
            State::Closed => Err(ConnectionError::Closed),
        }
    }

    fn established(
        &mut self,
        now: Instant,
        key: PublicKey,
        hello: Hello,
    ) -> Result<(), ConnectionError> {
        if hello.version != PROTOCOL_VERSION {
            return Err(ConnectionError::IncompatibleVersion {
                local: PROTOCOL_VERSION,
                remote: hello.version,
            });
        }
        let info = PeerInfo { key, hello };
        self.peer = Some(info.clone());
        self.last_tx = now;
        self.events.push_back(Event::Connected(info));
        Ok(())
    }

    fn write_handshake(&mut self, payload: &[u8]) -> Result<(), ConnectionError> {
        let hs = match &mut self.state {
            State::InitiatorWait(hs) | State::ResponderWait(hs, _) => hs,
            _ => return Err(ConnectionError::Closed),
        };
        let n = hs
            .write_message(payload, &mut self.scratch)
            .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
        encode_frame(&self.scratch[..n], &mut self.out);
        Ok(())
    }

    /// The next received message (or the `Connected` event).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Validates `msg` against the limits and state rules, seals it and
    /// queues it for transmission.
    pub fn send(&mut self, now: Instant, msg: &Message) -> Result<Sent, SendError> {
        let ts = match &mut self.state {
            State::Established(ts) => ts,
            State::Closed => return Err(SendError::Closed),
            _ => return Err(SendError::NotEstablished),
        };
        if matches!(msg, Message::Hello(_)) {
            return Err(SendError::Violation(Violation::HelloAfterHandshake));
        }
        let plain = msg.encode()?;
        if self.rules.on_send(msg)? == Disposition::Drop {
            return Ok(Sent::Skipped);
        }
        let n = ts
            .write_message(&plain, &mut self.scratch)
            .map_err(|e| SendError::Encrypt(e.to_string()))?;
        encode_frame(&self.scratch[..n], &mut self.out);
        self.last_tx = now;
        Ok(Sent::Queued)
    }

    /// Seals and queues `msg` without checking the state rules (the field
    /// limits still apply). Only for tests of the remote side's rules.
    #[doc(hidden)]
    pub fn send_unchecked(&mut self, now: Instant, msg: &Message) -> Result<(), SendError> {
        let State::Established(ts) = &mut self.state else {
            return Err(SendError::NotEstablished);
        };
        let plain = msg.encode()?;
        let n = ts
            .write_message(&plain, &mut self.scratch)
            .map_err(|e| SendError::Encrypt(e.to_string()))?;
        encode_frame(&self.scratch[..n], &mut self.out);
        self.last_tx = now;
        Ok(())
    }

    /// Bytes waiting to be written to the socket.
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    /// Marks `n` bytes of [`Self::pending_output`] as written.
    pub fn advance_output(&mut self, n: usize) {
        let n = n.min(self.out.len());
        let _ = self.out.split_to(n);
    }

    /// The next instant at which [`Self::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Established(_) => Some(std::cmp::min(
                self.last_rx + self.config.idle_timeout,
                self.last_tx + self.config.keepalive_interval,
            )),
            _ => Some(self.handshake_deadline),
        }
    }

    /// When the next keepalive is due (established connections only). For
    /// an application that cannot take messages for a while: it may send
    /// keepalives on this schedule without reading (see
    /// `PeerConnection::keep_alive`).
    pub fn next_keepalive(&self) -> Option<Instant> {
        match self.state {
            State::Established(_) => Some(self.last_tx + self.config.keepalive_interval),
            _ => None,
        }
    }

    /// Runs the timers: queues a keepalive when due, and fails the
    /// connection on handshake or idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnectionError> {
        let result = match self.state {
            State::Closed => Err(ConnectionError::Closed),
            State::Established(_) => {
                if now >= self.last_rx + self.config.idle_timeout {
                    Err(ConnectionError::IdleTimeout)
                } else if now >= self.last_tx + self.config.keepalive_interval {
                    match self.send(now, &Message::Keepalive) {
                        Ok(_) => Ok(()),
                        Err(e) => Err(ConnectionError::Crypto(e.to_string())),
                    }
                } else {
                    Ok(())
                }
            }
            _ if now >= self.handshake_deadline => Err(ConnectionError::HandshakeTimeout),
            _ => Ok(()),
        };
        if result.is_err() {
            self.close();
        }
        result
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.events.clear();
    }
}

fn remote_static(hs: &HandshakeState) -> Result<PublicKey, ConnectionError> {
    let bytes = hs
        .get_remote_static()
        .ok_or_else(|| ConnectionError::Handshake("no remote static key".into()))?;
    PublicKey::from_slice(bytes).map_err(|e| ConnectionError::Handshake(e.to_string()))
}

fn decode_hello(payload: &[u8]) -> Result<Hello, ConnectionError> {
    match Message::decode(payload)? {
        Message::Hello(h) => Ok(h),
        _ => Err(ConnectionError::UnexpectedFrame),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::{ByteRange, Negotiate, SessionKey, Validator};

    struct Pair {
        a: Connection,
        b: Connection,
        now: Instant,
    }

    fn keys() -> (KeyPair, KeyPair) {
        (
            KeyPair::from_private([1; 32]).unwrap(),
            KeyPair::from_private([2; 32]).unwrap(),
        )
    }

    fn pair() -> Pair {
        let now = Instant::now();
        let (ka, kb) = keys();
        let mut peers = PeerSet::new();
        peers.insert(ka.public(), "a");
        let a = Connection::new_initiator(
            now,
            &ka,
            &kb.public(),
            Hello::new("a", 0),
            Config::default(),
        )
        .unwrap();
        let b = Connection::new_responder(
            now,
            &kb,
            Arc::new(peers),
            Hello::new("b", 0),
            Config::default(),
        )
        .unwrap();
        let mut p = Pair { a, b, now };
        p.deliver();
        assert!(matches!(p.a.poll_event(), Some(Event::Connected(i)) if i.hello.node_name == "b"));
        assert!(
            matches!(p.b.poll_event(), Some(Event::Connected(i)) if i.key == keys().0.public())
        );
        p
    }

    impl Pair {
        /// Moves all pending bytes both ways until quiet.
        fn deliver(&mut self) {
            loop {
                let ab = self.a.pending_output().to_vec();
                self.a.advance_output(ab.len());
                let ba = self.b.pending_output().to_vec();
                self.b.advance_output(ba.len());
                if ab.is_empty() && ba.is_empty() {
                    break;
                }
                if !ab.is_empty() {
                    self.b.handle_input(self.now, &ab).unwrap();
                }
                if !ba.is_empty() {
                    self.a.handle_input(self.now, &ba).unwrap();
                }
            }
        }
    }

    #[test]
    fn noise_pattern_parses() {
        noise_params().unwrap();
    }

    #[test]
    fn handshake_and_messages() {
        let mut p = pair();
        let n = Message::Negotiate(Box::new(Negotiate {
            session: SessionKey([9; 16]),
            origin: "203.0.113.1:80".parse().unwrap(),
            host: "h".into(),
            target: "/f".into(),
            headers: vec![],
            validator: Validator::ETag("\"e\"".into()),
            body_length: 10,
            range: ByteRange::new(0, 10),
            hop_budget: 0,
        }));
        p.a.send(p.now, &n).unwrap();
        p.deliver();
        assert_eq!(p.b.poll_event(), Some(Event::Message(n)));
        assert_eq!(p.b.open_sessions(), (0, 1));
        assert_eq!(p.a.open_sessions(), (1, 0));
    }

    #[test]
    fn unknown_initiator_refused_without_reply() {
        let now = Instant::now();
        let (ka, kb) = keys();
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
            Arc::new(PeerSet::new()),
            Hello::new("b", 0),
            Config::default(),
        )
        .unwrap();
        let bytes = a.pending_output().to_vec();
        a.advance_output(bytes.len());
        assert_eq!(
            b.handle_input(now, &bytes),
            Err(ConnectionError::UnknownPeer(ka.public()))
        );
        assert!(b.pending_output().is_empty());
        assert!(b.is_closed());
    }

    #[test]
    fn wrong_responder_key_fails_handshake() {
        let now = Instant::now();
        let (ka, kb) = keys();
        let other = KeyPair::from_private([3; 32]).unwrap();
        let mut peers = PeerSet::new();
        peers.insert(ka.public(), "a");
        let a = Connection::new_initiator(
            now,
            &ka,
            &other.public(),
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
        let res = b.handle_input(now, a.pending_output());
        assert!(matches!(res, Err(ConnectionError::Handshake(_))));
    }

    #[test]
    fn version_mismatch_reported_on_both_sides() {
        let now = Instant::now();
        let (ka, kb) = keys();
        let mut peers = PeerSet::new();
        peers.insert(ka.public(), "a");
        let mut hello = Hello::new("a", 0);
        hello.version = PROTOCOL_VERSION + 1;
        let a =
            Connection::new_initiator(now, &ka, &kb.public(), hello, Config::default()).unwrap();
        let mut b = Connection::new_responder(
            now,
            &kb,
            Arc::new(peers),
            Hello::new("b", 0),
            Config::default(),
        )
        .unwrap();
        let m1 = a.pending_output().to_vec();
        let err = b.handle_input(now, &m1).unwrap_err();
        assert!(matches!(err, ConnectionError::IncompatibleVersion { .. }));
        // b's hello still went out, so a can be told why.
        assert!(!b.pending_output().is_empty());

        // The other direction: the responder speaks a newer version.
        let mut peers = PeerSet::new();
        peers.insert(ka.public(), "a");
        let mut hello = Hello::new("b", 0);
        hello.version = PROTOCOL_VERSION + 1;
        let mut a = Connection::new_initiator(
            now,
            &ka,
            &kb.public(),
            Hello::new("a", 0),
            Config::default(),
        )
        .unwrap();
        let mut b =
            Connection::new_responder(now, &kb, Arc::new(peers), hello, Config::default()).unwrap();
        let m1 = a.pending_output().to_vec();
        b.handle_input(now, &m1).unwrap();
        assert_eq!(
            a.handle_input(now, b.pending_output()),
            Err(ConnectionError::IncompatibleVersion {
                local: PROTOCOL_VERSION,
                remote: PROTOCOL_VERSION + 1
            })
        );
    }

    #[test]
    fn tampered_frame_closes_connection() {
        let mut p = pair();
        p.a.send(p.now, &Message::Advertise { rate_bps: 5 })
            .unwrap();
        let mut bytes = p.a.pending_output().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            p.b.handle_input(p.now, &bytes),
            Err(ConnectionError::Decrypt)
        );
        assert!(p.b.is_closed());
        assert_eq!(p.b.send(p.now, &Message::Keepalive), Err(SendError::Closed));
    }

    #[test]
    fn replayed_frame_fails_authentication() {
        let mut p = pair();
        p.a.send(p.now, &Message::Advertise { rate_bps: 5 })
            .unwrap();
        let bytes = p.a.pending_output().to_vec();
        p.b.handle_input(p.now, &bytes).unwrap();
        assert_eq!(
            p.b.handle_input(p.now, &bytes),
            Err(ConnectionError::Decrypt)
        );
    }

    #[test]
    fn keepalive_and_idle_timers() {
        let mut p = pair();
        let cfg = Config::default();
        let t = p.a.poll_timeout().unwrap();
        assert_eq!(t, p.now + cfg.keepalive_interval);
        p.now = t;
        p.a.handle_timeout(p.now).unwrap();
        assert!(!p.a.pending_output().is_empty());
        p.deliver();
        // keepalives are not surfaced
        assert_eq!(p.b.poll_event(), None);
        // b heard from a at t; a's idle deadline is still from the handshake
        p.now += cfg.idle_timeout;
        assert_eq!(p.a.handle_timeout(p.now), Err(ConnectionError::IdleTimeout));
    }

    #[test]
    fn handshake_timeout() {
        let now = Instant::now();
        let (ka, kb) = keys();
        let mut a = Connection::new_initiator(
            now,
            &ka,
            &kb.public(),
            Hello::new("a", 0),
            Config::default(),
        )
        .unwrap();
        let t = a.poll_timeout().unwrap();
        a.handle_timeout(t - Duration::from_millis(1)).unwrap();
        assert_eq!(a.handle_timeout(t), Err(ConnectionError::HandshakeTimeout));
    }

    #[test]
    fn data_before_handshake_is_rejected() {
        let now = Instant::now();
        let (_, kb) = keys();
        let mut b = Connection::new_responder(
            now,
            &kb,
            Arc::new(PeerSet::new()),
            Hello::new("b", 0),
            Config::default(),
        )
        .unwrap();
        let mut frame = BytesMut::new();
        encode_frame(&[0u8; 100], &mut frame);
        assert!(matches!(
            b.handle_input(now, &frame),
            Err(ConnectionError::Handshake(_))
        ));
        assert_eq!(b.send(now, &Message::Keepalive), Err(SendError::Closed));
    }
}
