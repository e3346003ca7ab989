//! The engine's public vocabulary: identifiers, verdicts, events, errors
//! and configuration.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_http::{RequestHead, ResponseHead};

/// Identifies one tracked TCP flow (client ip:port, origin ip:port) for the
/// engine's lifetime. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// Which way a queued packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (LAN) towards the origin.
    FromClient,
    /// From the origin towards the client.
    FromOrigin,
}

/// Where an injected packet must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Towards the client (the packet looks like it comes from the origin).
    ToClient,
    /// Towards the origin (the packet looks like it comes from the client).
    ToOrigin,
}

/// What to do with a queued packet.
#[must_use = "every queued packet needs a verdict"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the packet continue unchanged.
    Accept,
    /// The engine edited the packet in place; let the first `len` bytes
    /// of the buffer continue (`len` is at most the original length; IP
    /// length fields and checksums are already consistent with it).
    AcceptModified {
        /// New length of the packet.
        len: usize,
    },
    /// Drop the packet (absorbed by the engine or beyond the cut).
    Drop,
}

/// A packet the engine wrote into the caller's buffer by
/// [`crate::Engine::poll_transmit`]: a complete IPv4/IPv6 packet with valid
/// checksums, `len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Flow it belongs to.
    pub flow: FlowId,
    /// Where to send it.
    pub to: Destination,
    /// Length of the packet in the buffer.
    pub len: usize,
}

/// Why an accelerated flow failed (the client's connection was reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The caller said the rest of the body cannot be delivered.
    Caller,
    /// The client stopped acknowledging: retransmission limit reached.
    RetransmitLimit,
    /// The client reset its connection.
    ClientReset,
    /// The origin reset the connection before the client had every byte
    /// before the cut.
    OriginReset,
    /// No packet of the flow for the configured idle timeout before the
    /// body was complete.
    IdleTimeout,
}

/// What the engine reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The request and response heads of a flow's first exchange were seen.
    /// The flow's packets keep passing unchanged until the driver calls
    /// [`crate::Engine::pass_through`] or [`crate::Engine::accelerate`].
    ResponseHead {
        /// The flow.
        flow: FlowId,
        /// Client address and port.
        client: SocketAddr,
        /// Origin address and port.
        origin: SocketAddr,
        /// The request head.
        request: Box<RequestHead>,
        /// The response head.
        response: Box<ResponseHead>,
        /// Body length from `Content-Length`, if valid.
        body_len: Option<u64>,
        /// Body bytes the client had acknowledged when the head completed.
        client_acked: u64,
        /// The client sent bytes after the request head (pipelining, a
        /// request body): the flow cannot be accelerated.
        pipelined: bool,
        /// Round trip from this router to the origin: from the client's
        /// (last) SYN passing to the origin's SYN-ACK. `None` if the
        /// handshake was not seen.
        origin_rtt: Option<Duration>,
    },
    /// The client acknowledged every byte before the cut; the origin was
    /// stopped (zero window) and only injected bytes reach the client now.
    CutDone {
        /// The flow.
        flow: FlowId,
        /// The cut (body offset).
        cut: u64,
    },
    /// The client acknowledged the whole body and the FIN.
    Finished {
        /// The flow.
        flow: FlowId,
    },
    /// The flow failed; the client's connection was reset.
    Failed {
        /// The flow.
        flow: FlowId,
        /// Why.
        reason: FailReason,
    },
    /// The client's acknowledged body offset advanced by at least
    /// [`EngineConfig::progress_step`] since the last such event (or reached
    /// the end of the body). Only emitted when `progress_step` is set. A
    /// driver that paces its fetching by the client's progress (a window
    /// past `delivered`) must learn it from here: waiting for the next piece
    /// to ask [`crate::Engine::flow_info`] deadlocks once the window is full.
    Progress {
        /// The flow.
        flow: FlowId,
        /// Body bytes the client has acknowledged (a body offset).
        delivered: u64,
    },
    /// The engine forgot the flow; its id is no longer valid.
    FlowClosed {
        /// The flow.
        flow: FlowId,
    },
}

/// Misuse of the engine's API or a request it cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    /// No such flow (never existed, or closed).
    #[error("unknown flow")]
    UnknownFlow,
    /// The flow is not waiting for a decision (no response head yet, or
    /// already decided).
    #[error("flow is not awaiting a decision")]
    NotAwaitingDecision,
    /// The response has no valid Content-Length.
    #[error("response has no valid Content-Length")]
    NoContentLength,
    /// The client sent more than one request head on the connection.
    #[error("client pipelined data after the request head")]
    Pipelined,
    /// The requested cut lies past the end of the body.
    #[error("cut {cut} beyond body length {body_len}")]
    CutBeyondBody {
        /// Requested cut.
        cut: u64,
        /// Body length.
        body_len: u64,
    },
    /// The flow is not accelerated (or already finished / failed).
    #[error("flow is not accelerated")]
    NotAccelerated,
    /// A piece extends past the end of the body.
    #[error("piece ends at {end}, past the body length {body_len}")]
    PieceBeyondBody {
        /// End offset of the piece.
        end: u64,
        /// Body length.
        body_len: u64,
    },
    /// A piece extends past the buffer window; nothing was stored. Push
    /// at most [`crate::Engine::buffer_room`] bytes past the contiguous end.
    #[error("piece ends past the buffer window limit {limit}")]
    PieceBeyondWindow {
        /// First offset that cannot be stored now.
        limit: u64,
    },
}

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Maximum number of tracked flows; SYNs beyond it are not tracked
    /// (their flows pass through untouched).
    pub max_flows: usize,
    /// A flow without packets for this long is forgotten (accelerated
    /// flows that are not finished fail with [`FailReason::IdleTimeout`]).
    pub idle_timeout: Duration,
    /// Bytes of body the engine buffers per accelerated flow past the
    /// client's acknowledged offset (memory bound of the piece buffer).
    pub buffer_window: u64,
    /// Initial retransmission timeout of the injected stream.
    pub initial_rto: Duration,
    /// Lower bound of the retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout (and persist interval).
    pub max_rto: Duration,
    /// Consecutive retransmission timeouts before the flow fails.
    pub max_retransmits: u32,
    /// Initial congestion window in segments.
    pub initial_cwnd_segments: u32,
    /// How long a finished or failed flow is remembered (to acknowledge a
    /// retransmitted FIN, or to absorb late packets) before it is forgotten.
    pub linger: Duration,
    /// Minimum spacing of the zero-window ACKs sent to a stopped origin.
    pub origin_ack_interval: Duration,
    /// Emit [`Event::Progress`] each time an accelerated flow's
    /// client-acknowledged offset advanced by at least this many bytes
    /// (`None`: never; `Some(0)` is treated as 1).
    pub progress_step: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_flows: 4096,
            idle_timeout: Duration::from_secs(120),
            buffer_window: 4 << 20,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            max_retransmits: 12,
            initial_cwnd_segments: 10,
            linger: Duration::from_secs(10),
            origin_ack_interval: Duration::from_millis(200),
            progress_step: None,
        }
    }
}
