//! Zero-copy packet views for tandem: IPv4, IPv6 and TCP.
//!
//! The splice engine sits in a router's forwarding path and reads, edits and
//! emits raw IP packets. This crate gives it smoltcp-style views over byte
//! buffers:
//!
//! - [`Ipv4Packet`], [`Ipv6Packet`] and [`TcpPacket`] wrap any
//!   `T: AsRef<[u8]>` (getters) or `T: AsMut<[u8]>` (setters). Field offsets
//!   are constants; `new_checked` validates every length a later getter
//!   relies on, so getters on a checked view never panic. `new_unchecked`
//!   is for buffers the caller built itself.
//! - [`parse_ip_tcp`] locates the TCP segment inside an IPv4 or IPv6 packet
//!   (walking IPv6 extension headers) and returns an [`IpTcpMeta`].
//! - [`TcpOptions`] iterates TCP options with length checks;
//!   [`TcpPacket::timestamps_offset`] and friends let a caller edit options
//!   in place.
//! - [`checksum`] computes Internet checksums in full or updates them
//!   incrementally (RFC 1624) after an in-place edit.
//! - [`SeqNumber`] is a wrapping 32-bit TCP sequence number whose
//!   difference is a signed delta ([`SeqNumber::delta`]); it never panics.
//! - [`TcpSegment`] writes a complete IPv4/IPv6 + TCP packet with correct
//!   checksums into a caller buffer.
//!
//! Everything here is plain computation over bytes: no I/O, no clock, no
//! allocation except into the caller's `Vec` in [`TcpSegment::emit`].
//! Input is untrusted: malformed packets produce a [`WireError`], never a
//! panic.

pub mod checksum;
mod emit;
mod ip;
mod seq;
mod tcp;

pub use emit::{TcpSegment, TcpSegmentOptions};
pub use ip::{IpTcpMeta, Ipv4Packet, Ipv6Packet, parse_ip_tcp};
pub use seq::SeqNumber;
pub use tcp::{SackBlock, TcpFlags, TcpOption, TcpOptions, TcpPacket};

/// Why a buffer is not a packet this crate can work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than a header or a length field says.
    #[error("packet truncated")]
    Truncated,
    /// The IP version nibble is neither 4 nor 6 (or not the one expected).
    #[error("unknown IP version {0}")]
    BadVersion(u8),
    /// A header-length field is smaller than the minimum header.
    #[error("malformed header length")]
    BadHeaderLen,
    /// The packet is an IP fragment; TCP cannot be parsed from it.
    #[error("IP fragment")]
    Fragment,
    /// The packet does not carry TCP.
    #[error("not TCP (protocol {0})")]
    NotTcp(u8),
    /// A TCP option has an impossible length.
    #[error("malformed TCP option")]
    BadOption,
}
