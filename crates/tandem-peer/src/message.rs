//! Typed peer messages and their encoding.
//!
//! Every message is one [`Message`] value encoded with `postcard` (a compact,
//! non-self-describing serde format: enum variants are varint indices, integers
//! are varints, strings and byte strings are length-prefixed). One message is
//! sealed into one Noise transport message, carried in one frame.
//!
//! Decoding is strict: trailing bytes are an error, and every length and range
//! is checked by [`Message::validate`] before a message is handed out, so code
//! above this layer can rely on the limits below.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::frame::MAX_FRAME_LEN;

/// The protocol version this build speaks. Peers with a different version
/// refuse each other after the handshake (see docs/protocol.md, versioning).
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest plaintext of one message: a frame minus the 16-byte AEAD tag.
pub const MAX_MESSAGE_LEN: usize = MAX_FRAME_LEN - 16;
/// Largest `bytes` in one [`Message::PieceData`].
pub const MAX_CHUNK: usize = 16 * 1024;
/// Largest node name in [`Hello`].
pub const MAX_NODE_NAME: usize = 64;
/// Largest `Host` value in [`Negotiate`].
pub const MAX_HOST: usize = 255;
/// Largest request target in [`Negotiate`].
pub const MAX_TARGET: usize = 8 * 1024;
/// Most request headers carried in [`Negotiate`].
pub const MAX_HEADERS: usize = 32;
/// Largest header name.
pub const MAX_HEADER_NAME: usize = 64;
/// Largest header value.
pub const MAX_HEADER_VALUE: usize = 4 * 1024;
/// Largest validator (ETag or Last-Modified value).
pub const MAX_VALIDATOR: usize = 512;
/// Largest free-text detail in a [`Message::PieceError`].
pub const MAX_DETAIL: usize = 256;

/// A random 16-byte key naming one accelerated download across all routers
/// that take part in it (the "session key" of the original design notes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey(pub [u8; 16]);

impl SessionKey {
    /// A fresh key from the thread-local cryptographic random generator.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({self})")
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Identifies one piece within a session. Chosen by the requester; an id must
/// not be reused while that piece is outstanding (fresh ids are simplest).
pub type PieceId = u64;

/// A half-open byte range `start..end` of the response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte offset.
    pub start: u64,
    /// One past the last byte offset.
    pub end: u64,
}

impl ByteRange {
    /// `start..end`.
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    /// Number of bytes.
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no byte (also true when `end < start`).
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether `other` lies entirely within `self`.
    pub const fn contains_range(&self, other: &ByteRange) -> bool {
        other.start >= self.start && other.end <= self.end
    }
}

/// Feature bits a peer announces in [`Hello::features`]. Unknown bits are
/// ignored; a message type added later is only sent to peers that announced
/// its bit.
pub mod features {
    /// The peer may sub-delegate pieces to its own neighbours.
    pub const SUB_DELEGATION: u64 = 1 << 0;
}

/// First message of each side, carried inside the Noise handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// Human-readable router name, for logs (at most [`MAX_NODE_NAME`] bytes).
    pub node_name: String,
    /// Feature bits (see [`features`]).
    pub features: u64,
}

impl Hello {
    /// A hello for this build's protocol version.
    pub fn new(node_name: impl Into<String>, features: u64) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            node_name: node_name.into(),
            features,
        }
    }
}

/// The validator the requester saw on the origin's response; the serving
/// peer sends it as `If-Range` so the origin answers `200` (not `206`) if the
/// resource changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Validator {
    /// A strong entity tag, including its quotes (`"abc"`).
    ETag(String),
    /// A `Last-Modified` HTTP date.
    LastModified(String),
}

impl Validator {
    /// The value to put in an `If-Range` header.
    pub fn if_range_value(&self) -> &str {
        match self {
            Validator::ETag(v) | Validator::LastModified(v) => v,
        }
    }
}

/// A request to serve part of a download (sent by the requester).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiate {
    /// The download's session key.
    pub session: SessionKey,
    /// The origin address the client used (peers must fetch from the same IP).
    pub origin: SocketAddr,
    /// The `Host` header of the client's request.
    pub host: String,
    /// The request target (path and query) of the client's request.
    pub target: String,
    /// Request headers the peer should repeat (only ones the requester judged
    /// safe to forward; the peer refuses `Cookie`/`Authorization` unless
    /// configured otherwise).
    pub headers: Vec<(String, String)>,
    /// The response's validator, sent back as `If-Range`.
    pub validator: Validator,
    /// Full length of the response body.
    pub body_length: u64,
    /// The part of the body the peer is asked to serve pieces from.
    pub range: ByteRange,
    /// How many more hops the peer may sub-delegate (0: fetch itself only).
    pub hop_budget: u8,
}

/// Why a peer refuses (or withdraws from) a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The session key is already committed on this router.
    DuplicateSession,
    /// The origin address is not an acceptable target (SSRF guard).
    Target,
    /// The request carried credentials (Cookie/Authorization).
    Credentials,
    /// No capacity left for neighbours.
    Capacity,
    /// The request is malformed or unsupported by this peer.
    Unsupported,
    /// The router is shutting down.
    ShuttingDown,
    /// Anything else.
    Internal,
}

/// Why a piece failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PieceErrorKind {
    /// The origin's validator no longer matches (If-Range answered 200, or
    /// a different length/validator): the whole session must be aborted.
    ResourceChanged,
    /// The origin failed (connect error, unexpected status, short body).
    Origin,
    /// The peer will not serve this piece (capacity, policy).
    Refused,
    /// The origin or a sub-peer stalled.
    Timeout,
    /// Acknowledges a [`Message::PieceCancel`].
    Cancelled,
    /// A local failure on the peer.
    Internal,
}

/// One protocol message.
///
/// State rules (enforced by [`crate::Connection`]): `Hello` only inside the
/// handshake; `Commit`/`Refuse` answer a `Negotiate`; piece messages need a
/// committed session; `PieceData` of a piece arrives in order and within its
/// range; every `PieceRequest` is answered by exactly one `PieceEnd` or
/// `PieceError`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Version and features (handshake payload only).
    Hello(Hello),
    /// The download rate (bits/s) this router can bring to a session,
    /// including what it could sub-delegate.
    Advertise {
        /// Rate in bits per second.
        rate_bps: u64,
    },
    /// Ask the peer to take part in a session.
    Negotiate(Box<Negotiate>),
    /// The peer accepts a session.
    Commit {
        /// The session.
        session: SessionKey,
        /// Rate (bits/s) the peer commits to.
        rate_bps: u64,
        /// Pieces the peer works on at once: its fetch connections, over
        /// its own uplink and the sub-delegates it relays to (0: unknown,
        /// the requester's default). The requester keeps up to that many
        /// outstanding.
        parallel: u16,
    },
    /// The peer refuses a session (or withdraws from a committed one).
    Refuse {
        /// The session.
        session: SessionKey,
        /// Why.
        reason: RefuseReason,
    },
    /// The requester ends a session; the peer releases the key and cancels
    /// everything below it.
    Cancel {
        /// The session.
        session: SessionKey,
    },
    /// Ask for one piece of the body.
    PieceRequest {
        /// The session.
        session: SessionKey,
        /// Requester-chosen id.
        piece: PieceId,
        /// Body bytes wanted (within the negotiated range).
        range: ByteRange,
    },
    /// A chunk of a piece, in order.
    PieceData {
        /// The session.
        session: SessionKey,
        /// The piece.
        piece: PieceId,
        /// Body offset of `bytes[0]`.
        offset: u64,
        /// 1..=[`MAX_CHUNK`] bytes.
        bytes: Bytes,
    },
    /// The piece is complete (all its bytes were sent).
    PieceEnd {
        /// The session.
        session: SessionKey,
        /// The piece.
        piece: PieceId,
    },
    /// The piece failed; no more data follows for it.
    PieceError {
        /// The session.
        session: SessionKey,
        /// The piece.
        piece: PieceId,
        /// What went wrong.
        kind: PieceErrorKind,
        /// Free text for logs (at most [`MAX_DETAIL`] bytes).
        detail: String,
    },
    /// The requester no longer wants a piece; answered by `PieceError
    /// {Cancelled}` (or `PieceEnd` if it was already complete).
    PieceCancel {
        /// The session.
        session: SessionKey,
        /// The piece.
        piece: PieceId,
    },
    /// Keeps the connection alive; never surfaced to the application.
    Keepalive,
}

/// Errors encoding or decoding a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not a valid postcard encoding of a message.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// Bytes followed a complete message.
    #[error("{0} trailing bytes after message")]
    TrailingBytes(usize),
    /// The encoding exceeds [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes exceeds the maximum of {MAX_MESSAGE_LEN}")]
    TooLarge(usize),
    /// A field violates a limit or invariant.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

impl Message {
    /// Checks every field limit and invariant.
    pub fn validate(&self) -> Result<(), MessageError> {
        fn check(cond: bool, what: &'static str) -> Result<(), MessageError> {
            if cond {
                Ok(())
            } else {
                Err(MessageError::Invalid(what))
            }
        }
        match self {
            Message::Hello(h) => check(h.node_name.len() <= MAX_NODE_NAME, "node name too long"),
            Message::Negotiate(n) => {
                check(n.host.len() <= MAX_HOST, "host too long")?;
                check(!n.target.is_empty(), "empty target")?;
                check(n.target.len() <= MAX_TARGET, "target too long")?;
                check(n.headers.len() <= MAX_HEADERS, "too many headers")?;
                for (name, value) in &n.headers {
                    check(
                        !name.is_empty() && name.len() <= MAX_HEADER_NAME,
                        "bad header name length",
                    )?;
                    check(value.len() <= MAX_HEADER_VALUE, "header value too long")?;
                    check(
                        !name
                            .bytes()
                            .chain(value.bytes())
                            .any(|b| b == b'\r' || b == b'\n'),
                        "line break in header",
                    )?;
                }
                check(
                    !n.host
                        .bytes()
                        .chain(n.target.bytes())
                        .any(|b| b.is_ascii_control()),
                    "control character in host or target",
                )?;
                let v = n.validator.if_range_value();
                check(
                    !v.is_empty() && v.len() <= MAX_VALIDATOR,
                    "bad validator length",
                )?;
                check(
                    !v.bytes().any(|b| b.is_ascii_control()),
                    "control character in validator",
                )?;
                if let SocketAddr::V6(v6) = n.origin {
                    // serde does not carry these, and origins are public
                    // addresses where they mean nothing.
                    check(
                        v6.scope_id() == 0 && v6.flowinfo() == 0,
                        "origin with IPv6 scope id or flow label",
                    )?;
                }
                check(!n.range.is_empty(), "empty negotiated range")?;
                check(n.range.end <= n.body_length, "range beyond body length")
            }
            Message::PieceRequest { range, .. } => check(!range.is_empty(), "empty piece range"),
            Message::PieceData { offset, bytes, .. } => {
                check(!bytes.is_empty(), "empty piece data")?;
                check(bytes.len() <= MAX_CHUNK, "piece data chunk too large")?;
                check(
                    offset.checked_add(bytes.len() as u64).is_some(),
                    "piece data offset overflow",
                )
            }
            Message::PieceError { detail, .. } => {
                check(detail.len() <= MAX_DETAIL, "error detail too long")
            }
            Message::Advertise { .. }
            | Message::Commit { .. }
            | Message::Refuse { .. }
            | Message::Cancel { .. }
            | Message::PieceEnd { .. }
            | Message::PieceCancel { .. }
            | Message::Keepalive => Ok(()),
        }
    }

    /// Validates and encodes the message.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        let bytes = postcard::to_stdvec(self).map_err(|e| MessageError::Decode(e.to_string()))?;
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes and validates one message occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        let (msg, rest): (Message, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| MessageError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(MessageError::TrailingBytes(rest.len()));
        }
        msg.validate()?;
        Ok(msg)
    }

    /// The session a message belongs to, if any.
    pub fn session(&self) -> Option<SessionKey> {
        match self {
            Message::Negotiate(n) => Some(n.session),
            Message::Commit { session, .. }
            | Message::Refuse { session, .. }
            | Message::Cancel { session }
            | Message::PieceRequest { session, .. }
            | Message::PieceData { session, .. }
            | Message::PieceEnd { session, .. }
            | Message::PieceError { session, .. }
            | Message::PieceCancel { session, .. } => Some(*session),
            Message::Hello(_) | Message::Advertise { .. } | Message::Keepalive => None,
        }
    }

    /// A short name of the message type, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Advertise { .. } => "Advertise",
            Message::Negotiate(_) => "Negotiate",
            Message::Commit { .. } => "Commit",
            Message::Refuse { .. } => "Refuse",
            Message::Cancel { .. } => "Cancel",
            Message::PieceRequest { .. } => "PieceRequest",
            Message::PieceData { .. } => "PieceData",
            Message::PieceEnd { .. } => "PieceEnd",
            Message::PieceError { .. } => "PieceError",
            Message::PieceCancel { .. } => "PieceCancel",
            Message::Keepalive => "Keepalive",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn negotiate() -> Message {
        Message::Negotiate(Box::new(Negotiate {
            session: SessionKey([3; 16]),
            origin: "203.0.113.7:80".parse().unwrap(),
            host: "example.com".into(),
            target: "/big.iso".into(),
            headers: vec![("User-Agent".into(), "curl/8".into())],
            validator: Validator::ETag("\"v1\"".into()),
            body_length: 1000,
            range: ByteRange::new(100, 1000),
            hop_budget: 1,
        }))
    }

    #[test]
    fn negotiate_round_trips() {
        let m = negotiate();
        assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut b = Message::Keepalive.encode().unwrap();
        b.push(0);
        assert_eq!(Message::decode(&b), Err(MessageError::TrailingBytes(1)));
    }

    #[test]
    fn limits_enforced_on_both_sides() {
        let big = Message::PieceData {
            session: SessionKey([0; 16]),
            piece: 1,
            offset: 0,
            bytes: Bytes::from(vec![0u8; MAX_CHUNK + 1]),
        };
        assert!(matches!(big.encode(), Err(MessageError::Invalid(_))));
        // Encode it bypassing validation: the decoder must refuse it too.
        let raw = postcard::to_stdvec(&big).unwrap();
        assert!(matches!(
            Message::decode(&raw),
            Err(MessageError::Invalid(_))
        ));

        let mut n = negotiate();
        if let Message::Negotiate(ref mut n) = n {
            n.range = ByteRange::new(0, 1001);
        }
        assert!(matches!(n.encode(), Err(MessageError::Invalid(_))));
    }

    #[test]
    fn header_injection_rejected() {
        let mut n = negotiate();
        if let Message::Negotiate(ref mut n) = n {
            n.headers.push(("X".into(), "a\r\nHost: evil".into()));
        }
        assert!(matches!(n.encode(), Err(MessageError::Invalid(_))));
    }

    #[test]
    fn full_chunk_fits_in_a_frame() {
        let m = Message::PieceData {
            session: SessionKey([0xff; 16]),
            piece: u64::MAX,
            offset: u64::MAX - MAX_CHUNK as u64,
            bytes: Bytes::from(vec![0xaa; MAX_CHUNK]),
        };
        assert!(m.encode().unwrap().len() < MAX_MESSAGE_LEN);
    }
}
