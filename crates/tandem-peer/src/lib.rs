//! The authenticated peer protocol between neighbouring tandem routers.
//!
//! Routers talk over TCP. Each router has a static X25519 [`KeyPair`] and a
//! [`PeerSet`] of the public keys it accepts (WireGuard style). A connection
//! starts with a Noise `IK` handshake (`Noise_IK_25519_ChaChaPoly_BLAKE2s`):
//! the initiator must know the responder's key, the responder refuses any
//! initiator key it does not list. After that every [`Message`] is encoded
//! with postcard, sealed with ChaCha20-Poly1305 and sent in one
//! length-delimited frame of at most 64 KiB. Piece data travels in chunks of
//! at most [`MAX_CHUNK`] bytes. docs/protocol.md is the full specification.
//!
//! Layers:
//! - [`frame`]: the length-delimited framing ([`FrameDecoder`]).
//! - [`message`]: typed messages, strict decoding and limits.
//! - [`Connection`]: the sans-IO core (handshake, AEAD, state rules, timers).
//!   Calling contract: feed bytes with `handle_input(now, ..)`, queue
//!   messages with `send(now, ..)`, write `pending_output()` and report it
//!   with `advance_output(n)`, take messages from `poll_event()`, and call
//!   `handle_timeout(now)` at `poll_timeout()`. `now` never goes backwards.
//!   An error from `handle_input`/`handle_timeout` closes the connection.
//! - [`PeerConnection`]: the tokio adapter over a `TcpStream`
//!   (`connect`/`accept`, `send`, cancel-safe `recv`).
//!
//! Every byte from the network is untrusted: malformed input never panics;
//! it closes that one connection with an error.

pub mod frame;
mod io;
mod keys;
pub mod message;
mod rules;

mod connection;

pub use connection::{
    Config, Connection, ConnectionError, Event, NOISE_PATTERN, PROLOGUE, PeerInfo, SendError, Sent,
};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME_LEN};
pub use io::{PeerConnection, PeerError};
pub use keys::{KEY_LEN, KeyError, KeyPair, PeerSet, PublicKey};
pub use message::{
    ByteRange, Hello, MAX_CHUNK, MAX_MESSAGE_LEN, Message, MessageError, Negotiate,
    PROTOCOL_VERSION, PieceErrorKind, PieceId, RefuseReason, SessionKey, Validator, features,
};
pub use rules::{MAX_PIECES_PER_SESSION, MAX_SESSIONS_PER_CONNECTION, Violation};
