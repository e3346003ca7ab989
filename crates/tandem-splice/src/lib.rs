//! The splice engine: a sans-IO middlebox core that hands a client's TCP
//! flow over from the origin to the router.
//!
//! Router A queues the packets of port-80 flows (in the FORWARD hook, where
//! both directions carry the client's LAN address and the origin's address)
//! and feeds them to an [`Engine`]. The engine learns each flow from its
//! SYN/SYN-ACK, follows the first request and response heads, and reports
//! them ([`Event::ResponseHead`]). The driver decides: [`Engine::pass_through`]
//! (the engine forgets the flow) or [`Engine::accelerate`] with a cut point.
//! From the cut on, the engine owns the client's side of the connection: it
//! stops the origin (zero window), drops the origin's bytes past the cut,
//! absorbs every client packet, and injects the rest of the body itself from
//! pieces the driver pushes ([`Engine::push_piece`]), continuing the origin's
//! sequence numbers and timestamps, within the client's MSS and window,
//! retransmitting on loss, with FIN on the last byte. A retransmission
//! timeout that turns out spurious (the client's ACKs were only late, e.g.
//! stuck in a loaded router's queue) is detected and undone (Eifel with
//! timestamps, F-RTO without); [`EngineStats`] counts retransmissions,
//! timeouts and spurious timeouts.
//!
//! # Calling contract
//!
//! The engine does no I/O and reads no clock. Time is the `now` argument:
//! pass monotonically non-decreasing instants (tests use a virtual clock).
//!
//! Inputs:
//! - [`Engine::handle_packet`]`(now, direction, packet)` for every queued
//!   packet (a complete IPv4 or IPv6 packet). It returns a [`Verdict`]:
//!   - [`Verdict::Accept`]: reinject unchanged;
//!   - [`Verdict::AcceptModified`]`{ len }`: the engine edited the buffer in
//!     place; reinject its first `len` bytes (checksums are already right);
//!   - [`Verdict::Drop`]: drop it (absorbed by the engine, or past the cut).
//!
//!   Packets the engine cannot parse (not IPv4/IPv6, fragments, not TCP,
//!   truncated) and packets of flows it does not track are accepted
//!   unchanged. A flow is tracked only if its client SYN was seen.
//! - Decisions after [`Event::ResponseHead`]: [`Engine::pass_through`] or
//!   [`Engine::accelerate`]`(now, flow, requested_cut)`, which returns the
//!   actual cut `max(requested, body bytes the client already acknowledged)`.
//!   The driver must supply every body byte from the cut to the end.
//! - Pieces: [`Engine::push_piece`]`(now, flow, offset, data)`, any order,
//!   overlaps allowed (bytes already held are kept). A piece must end within
//!   the buffer window: at most [`Engine::buffer_room`] bytes past the
//!   contiguous end; otherwise it is rejected whole with
//!   [`SpliceError::PieceBeyondWindow`] and the driver retries later.
//! - [`Engine::fail`]`(now, flow)`: the rest of the body cannot be
//!   delivered. The engine resets the client (and the origin). It never
//!   emits a byte it was not given for that offset. The client's RSTs go
//!   out in timed rounds (at once, then 200, 600 and 1400 ms later with the
//!   default `min_rto`) that try every place the client's `rcv_nxt` can be
//!   (its newest ACK, the highest sequence number sent, the one below it,
//!   segment boundaries between), so that an RFC 5961 receiver is
//!   reset even when its last ACKs were lost; client packets after the
//!   failure (challenge ACKs) are answered with an RST at their ACK. At
//!   most 72 RSTs go to the client per failed flow, never data.
//! - Timers: [`Engine::poll_timeout`] gives the next deadline;
//!   call [`Engine::handle_timeout`]`(now)` when it passes.
//!
//! Outputs, to drain after every input:
//! - [`Engine::poll_transmit`]`(now, buf)` until `None`: each call writes one
//!   complete IP packet into `buf` (cleared first) with valid checksums and
//!   returns a [`Transmit`] saying which flow it belongs to and whether it
//!   goes to the client or the origin. Packets to the origin carry the
//!   client's address and must traverse the NAT like the client's own.
//! - [`Engine::poll_event`] until `None`. With
//!   [`EngineConfig::progress_step`] set, [`Event::Progress`] reports each
//!   accelerated flow's client-acknowledged offset as it advances: a driver
//!   that fetches pieces within a window past the client's progress must
//!   follow these events (the engine's buffer frees room at the same
//!   moments), not poll [`Engine::flow_info`] when its next piece arrives —
//!   with the window full, no piece arrives.
//!
//! # Keep-alive
//!
//! Only the first request/response of a connection is considered. After a
//! pass-through decision the engine forgets the flow, so later requests on
//! the connection pass through. An accelerated response ends with a FIN: the
//! client opens a new connection for its next request (a request that
//! arrives anyway gets a reset once the body is complete).
//!
//! # Stopping the origin
//!
//! At the cut the origin gets an ACK for everything it sent with a zero
//! window (not an RST): the conntrack entry (and its connmark, which the
//! queue rules match) stays alive while the engine injects, the origin stops
//! sending, and its persist probes are answered with the same zero-window
//! ACK (rate-limited). The origin gets an RST only when the client's side is
//! done (both FINs acknowledged), on failure, or on idle expiry. See
//! `docs/splice.md` for the reasoning.

mod buffer;
mod ends;
mod engine;
mod flow;
mod sender;
mod types;

pub use engine::{Engine, EngineStats, FlowInfo};
pub use types::{
    Destination, Direction, EngineConfig, Event, FailReason, FlowId, SpliceError, Transmit, Verdict,
};
