//! IPv4 and IPv6 header views and the locator of the TCP segment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{WireError, checksum};

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

mod v4 {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
    pub const HEADER_LEN: usize = 20;
}

mod v6 {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
    pub const HEADER_LEN: usize = 40;
}

fn be16(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

/// A view of an IPv4 header and its payload.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checks (for buffers the caller built).
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps untrusted bytes: version 4, IHL >= 5, header and total length
    /// within the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < v4::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::BadVersion(self.version()));
        }
        let hl = self.header_len();
        if hl < v4::HEADER_LEN {
            return Err(WireError::BadHeaderLen);
        }
        let tl = usize::from(self.total_len());
        if tl < hl {
            return Err(WireError::BadHeaderLen);
        }
        if tl > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version nibble.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[v4::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[v4::VER_IHL] & 0x0f) * 4
    }
    /// Type of service / DSCP+ECN byte.
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[v4::TOS]
    }
    /// Total length field.
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), v4::LENGTH)
    }
    /// Identification field.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), v4::IDENT)
    }
    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), v4::FLG_OFF) & 0x4000 != 0
    }
    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), v4::FLG_OFF) & 0x2000 != 0
    }
    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), v4::FLG_OFF) & 0x1fff
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[v4::TTL]
    }
    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[v4::PROTOCOL]
    }
    /// Stored header checksum.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), v4::CHECKSUM)
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[v4::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[v4::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::accumulate(
            0,
            &self.buffer.as_ref()[..self.header_len()],
        )) == 0xffff
    }
    /// The payload (bytes between header and total length).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets version 4 and the header length (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[v4::VER_IHL] = 0x40 | ((len / 4) as u8 & 0x0f);
    }
    /// Sets the TOS byte.
    pub fn set_tos(&mut self, v: u8) {
        self.buffer.as_mut()[v4::TOS] = v;
    }
    /// Sets the total length (caller keeps it within the buffer).
    pub fn set_total_len(&mut self, v: u16) {
        self.set16(v4::LENGTH, v);
    }
    /// Sets the identification field.
    pub fn set_ident(&mut self, v: u16) {
        self.set16(v4::IDENT, v);
    }
    /// Sets flags (DF only) and fragment offset 0.
    pub fn set_dont_frag_unfragmented(&mut self, df: bool) {
        self.set16(v4::FLG_OFF, if df { 0x4000 } else { 0 });
    }
    /// Sets the TTL.
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[v4::TTL] = v;
    }
    /// Sets the protocol.
    pub fn set_protocol(&mut self, v: u8) {
        self.buffer.as_mut()[v4::PROTOCOL] = v;
    }
    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[v4::SRC].copy_from_slice(&a.octets());
    }
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[v4::DST].copy_from_slice(&a.octets());
    }
    /// Recomputes the header checksum in full.
    pub fn fill_checksum(&mut self) {
        self.set16(v4::CHECKSUM, 0);
        let hl = self.header_len();
        let c = checksum::of(&self.buffer.as_ref()[..hl]);
        self.set16(v4::CHECKSUM, c);
    }
    /// Changes the total length and updates the header checksum
    /// incrementally (RFC 1624).
    pub fn update_total_len(&mut self, v: u16) {
        let old = self.total_len();
        let c = checksum::update_u16(self.checksum(), old, v);
        self.set16(v4::LENGTH, v);
        self.set16(v4::CHECKSUM, c);
    }
    /// Mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// A view of an IPv6 fixed header and its payload.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }
    /// Wraps untrusted bytes: version 6, payload length within the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < v6::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if p.version() != 6 {
            return Err(WireError::BadVersion(p.version()));
        }
        if v6::HEADER_LEN + usize::from(p.payload_len()) > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }
    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Version nibble.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }
    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }
    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        let b = self.buffer.as_ref();
        (u32::from(b[1] & 0x0f) << 16) | (u32::from(b[2]) << 8) | u32::from(b[3])
    }
    /// Payload length field (everything after the fixed header).
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), v6::LENGTH)
    }
    /// Next header of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[v6::NXT_HDR]
    }
    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[v6::HOP_LIMIT]
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut o = [0u8; 16];
        o.copy_from_slice(&self.buffer.as_ref()[v6::SRC]);
        Ipv6Addr::from(o)
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut o = [0u8; 16];
        o.copy_from_slice(&self.buffer.as_ref()[v6::DST]);
        Ipv6Addr::from(o)
    }
    /// Payload after the fixed header (including extension headers).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[v6::HEADER_LEN..v6::HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, traffic class and flow label.
    pub fn set_version_tc_flow(&mut self, tc: u8, flow: u32) {
        let w: u32 = (6 << 28) | (u32::from(tc) << 20) | (flow & 0x000f_ffff);
        self.buffer.as_mut()[v6::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }
    /// Sets the payload length (caller keeps it within the buffer).
    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[v6::LENGTH].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the next header.
    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[v6::NXT_HDR] = v;
    }
    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[v6::HOP_LIMIT] = v;
    }
    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[v6::SRC].copy_from_slice(&a.octets());
    }
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[v6::DST].copy_from_slice(&a.octets());
    }
}

/// Where the TCP segment sits inside an IP packet, and the IP fields the
/// splice engine needs. Produced by [`parse_ip_tcp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpTcpMeta {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Offset of the TCP header in the buffer.
    pub tcp_offset: usize,
    /// Length of the IP packet (total length; bytes past it are padding).
    pub ip_len: usize,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// IPv4 TOS or IPv6 traffic class.
    pub tos: u8,
    /// IPv6 flow label (0 for IPv4).
    pub flow_label: u32,
}

impl IpTcpMeta {
    /// Length of the TCP segment (header + payload).
    pub fn tcp_len(&self) -> usize {
        self.ip_len - self.tcp_offset
    }
    /// Whether this is an IPv4 packet.
    pub fn is_ipv4(&self) -> bool {
        self.src.is_ipv4()
    }
}

/// Extension headers that may precede TCP in IPv6 and that we skip.
const V6_HOP_BY_HOP: u8 = 0;
const V6_ROUTING: u8 = 43;
const V6_FRAGMENT: u8 = 44;
const V6_DEST_OPTS: u8 = 60;

/// Parses an IPv4 or IPv6 packet carrying an unfragmented TCP segment and
/// returns where the segment is. Checks every length; the TCP header itself
/// is validated by [`crate::TcpPacket::new_checked`] on
/// `&buf[meta.tcp_offset..meta.ip_len]`.
pub fn parse_ip_tcp(buf: &[u8]) -> Result<IpTcpMeta, WireError> {
    let Some(first) = buf.first() else {
        return Err(WireError::Truncated);
    };
    match first >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(buf)?;
            if p.more_frags() || p.frag_offset() != 0 {
                return Err(WireError::Fragment);
            }
            if p.protocol() != PROTO_TCP {
                return Err(WireError::NotTcp(p.protocol()));
            }
            Ok(IpTcpMeta {
                src: IpAddr::V4(p.src_addr()),
                dst: IpAddr::V4(p.dst_addr()),
                tcp_offset: p.header_len(),
                ip_len: usize::from(p.total_len()),
                ttl: p.ttl(),
                tos: p.tos(),
                flow_label: 0,
            })
        }
        6 => {
            let p = Ipv6Packet::new_checked(buf)?;
            let end = v6::HEADER_LEN + usize::from(p.payload_len());
            let mut nh = p.next_header();
            let mut off = v6::HEADER_LEN;
            // Bounded walk: at most a few extension headers.
            for _ in 0..8 {
                match nh {
                    PROTO_TCP => {
                        return Ok(IpTcpMeta {
                            src: IpAddr::V6(p.src_addr()),
                            dst: IpAddr::V6(p.dst_addr()),
                            tcp_offset: off,
                            ip_len: end,
                            ttl: p.hop_limit(),
                            tos: p.traffic_class(),
                            flow_label: p.flow_label(),
                        });
                    }
                    V6_HOP_BY_HOP | V6_ROUTING | V6_DEST_OPTS => {
                        if off + 8 > end {
                            return Err(WireError::Truncated);
                        }
                        nh = buf[off];
                        off += (usize::from(buf[off + 1]) + 1) * 8;
                        if off > end {
                            return Err(WireError::Truncated);
                        }
                    }
                    V6_FRAGMENT => return Err(WireError::Fragment),
                    other => return Err(WireError::NotTcp(other)),
                }
            }
            Err(WireError::NotTcp(nh))
        }
        v => Err(WireError::BadVersion(v)),
    }
}
