//! Building complete IPv4/IPv6 + TCP packets.

use std::net::{IpAddr, SocketAddr};

use crate::ip::PROTO_TCP;
use crate::tcp::kind;
use crate::{Ipv4Packet, Ipv6Packet, SackBlock, SeqNumber, TcpFlags, TcpPacket};

/// Options to put in an emitted segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSegmentOptions {
    /// MSS option (SYN segments only, by convention).
    pub mss: Option<u16>,
    /// Window scale option.
    pub window_scale: Option<u8>,
    /// SACK-permitted option.
    pub sack_permitted: bool,
    /// Timestamps `(tsval, tsecr)`.
    pub timestamps: Option<(u32, u32)>,
    /// Up to 3 SACK blocks (4 without timestamps); extra blocks are dropped.
    pub sack: [Option<SackBlock>; 4],
}

/// A TCP segment to emit as a complete IP packet. Source and destination
/// must be of the same address family.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<'a> {
    /// Sender address and port.
    pub src: SocketAddr,
    /// Receiver address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: SeqNumber,
    /// Acknowledgment number (sent as 0 when ACK is not in `flags`).
    pub ack: SeqNumber,
    /// Flags.
    pub flags: TcpFlags,
    /// Raw window field.
    pub window: u16,
    /// Options.
    pub options: TcpSegmentOptions,
    /// Payload.
    pub payload: &'a [u8],
    /// TTL / hop limit.
    pub ttl: u8,
    /// TOS / traffic class.
    pub tos: u8,
    /// IPv4 identification or IPv6 flow label.
    pub ident: u32,
}

impl TcpSegment<'_> {
    fn options_len(&self) -> usize {
        let o = &self.options;
        let mut n = 0;
        if o.mss.is_some() {
            n += 4;
        }
        if o.window_scale.is_some() {
            n += 4; // NOP + 3
        }
        if o.sack_permitted {
            n += 4; // NOP NOP + 2 (or with timestamps: 2 + ts)
        }
        if o.timestamps.is_some() {
            n += 12; // NOP NOP + 10
        }
        let blocks = self.sack_blocks();
        if blocks > 0 {
            n += 4 + blocks * 8; // NOP NOP + 2 + 8n
        }
        n
    }

    fn sack_blocks(&self) -> usize {
        let max = if self.options.timestamps.is_some() {
            3
        } else {
            4
        };
        self.options.sack.iter().flatten().take(max).count()
    }

    /// Length of the packet [`emit`](Self::emit) writes.
    pub fn packet_len(&self) -> usize {
        let ip = if self.src.is_ipv4() { 20 } else { 40 };
        ip + 20 + self.options_len() + self.payload.len()
    }

    /// Appends the complete packet (IP header, TCP header, options,
    /// payload, both checksums) to `buf` and returns its length. The caller
    /// keeps the packet within 65535 bytes (one MSS is far below).
    pub fn emit(&self, buf: &mut Vec<u8>) -> usize {
        let start = buf.len();
        let len = self.packet_len();
        buf.resize(start + len, 0);
        let pkt = &mut buf[start..];
        let (ip_len, src, dst) = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = Ipv4Packet::new_unchecked(&mut pkt[..20]);
                ip.set_version_and_header_len(20);
                ip.set_tos(self.tos);
                ip.set_total_len(len as u16);
                ip.set_ident(self.ident as u16);
                ip.set_dont_frag_unfragmented(true);
                ip.set_ttl(self.ttl);
                ip.set_protocol(PROTO_TCP);
                ip.set_src_addr(s);
                ip.set_dst_addr(d);
                ip.fill_checksum();
                (20, IpAddr::V4(s), IpAddr::V4(d))
            }
            (s, d) => {
                let to6 = |a: IpAddr| match a {
                    IpAddr::V4(v) => v.to_ipv6_mapped(),
                    IpAddr::V6(v) => v,
                };
                let mut ip = Ipv6Packet::new_unchecked(&mut pkt[..40]);
                ip.set_version_tc_flow(self.tos, self.ident);
                ip.set_payload_len((len - 40) as u16);
                ip.set_next_header(PROTO_TCP);
                ip.set_hop_limit(self.ttl);
                ip.set_src_addr(to6(s));
                ip.set_dst_addr(to6(d));
                (40, IpAddr::V6(to6(s)), IpAddr::V6(to6(d)))
            }
        };
        let hl = 20 + self.options_len();
        let mut tcp = TcpPacket::new_unchecked(&mut pkt[ip_len..]);
        tcp.set_src_port(self.src.port());
        tcp.set_dst_port(self.dst.port());
        tcp.set_seq(self.seq);
        let ack = if self.flags.contains(TcpFlags::ACK) {
            self.ack
        } else {
            SeqNumber(0)
        };
        tcp.set_ack(ack);
        tcp.set_header_len_and_flags(hl, self.flags);
        tcp.set_window(self.window);
        tcp.set_urgent(0);
        self.write_options(tcp.options_mut());
        tcp.payload_mut().copy_from_slice(self.payload);
        tcp.fill_checksum(src, dst);
        len
    }

    fn write_options(&self, o: &mut [u8]) {
        let mut i = 0;
        let mut put = |bytes: &[u8]| {
            o[i..i + bytes.len()].copy_from_slice(bytes);
            i += bytes.len();
        };
        let opt = &self.options;
        if let Some(m) = opt.mss {
            let m = m.to_be_bytes();
            put(&[kind::MSS, 4, m[0], m[1]]);
        }
        if let Some(ws) = opt.window_scale {
            put(&[kind::NOP, kind::WSCALE, 3, ws]);
        }
        if opt.sack_permitted {
            put(&[kind::NOP, kind::NOP, kind::SACK_PERM, 2]);
        }
        if let Some((v, e)) = opt.timestamps {
            put(&[kind::NOP, kind::NOP, kind::TIMESTAMPS, 10]);
            put(&v.to_be_bytes());
            put(&e.to_be_bytes());
        }
        let n = self.sack_blocks();
        if n > 0 {
            put(&[kind::NOP, kind::NOP, kind::SACK, (2 + 8 * n) as u8]);
            for b in opt.sack.iter().flatten().take(n) {
                put(&b.left.0.to_be_bytes());
                put(&b.right.0.to_be_bytes());
            }
        }
    }
}
