//! Segment-level test helpers in the smoltcp `send!`/`recv!` spirit: a
//! client and an origin that we script by hand, the engine between them.
//! Every packet the engine emits or edits is parsed back with etherparse
//! (an independent parser) and its checksums verified.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TcpOptionElement, TransportSlice};
use tandem_splice::{Destination, Direction, Engine, EngineConfig, Event, FlowId, Verdict};
use tandem_wire::{SackBlock, SeqNumber, TcpFlags, TcpSegment, TcpSegmentOptions};

pub const CLIENT_ISN: u32 = 0xffff_ff00; // wraps during the request
pub const ORIGIN_ISN: u32 = 0x7fff_fff0;
pub const MSS: u16 = 1460;

/// A segment as the independent parser saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub ackf: bool,
    pub payload: Vec<u8>,
    pub ts: Option<(u32, u32)>,
    pub sack: Vec<(u32, u32)>,
}

/// Parses with etherparse and asserts both checksums.
#[track_caller]
pub fn parse(buf: &[u8]) -> Seen {
    let p = SlicedPacket::from_ip(buf).expect("etherparse parses it");
    let (src_ip, dst_ip) = match p.net.as_ref().expect("net layer") {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            assert_eq!(
                h.to_header().calc_header_checksum(),
                h.header_checksum(),
                "IPv4 checksum"
            );
            assert_eq!(usize::from(h.total_len()), buf.len(), "IPv4 total length");
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            assert_eq!(
                usize::from(h.payload_length()) + 40,
                buf.len(),
                "IPv6 payload length"
            );
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
            )
        }
        NetSlice::Arp(_) => panic!("arp"),
    };
    let Some(TransportSlice::Tcp(t)) = p.transport.as_ref() else {
        panic!("not tcp")
    };
    let want = match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => t.calc_checksum_ipv4(s.octets(), d.octets()).unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => t.calc_checksum_ipv6(s.octets(), d.octets()).unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(want, t.checksum(), "TCP checksum");
    let mut ts = None;
    let mut sack = Vec::new();
    for o in t.options_iterator() {
        match o.expect("options parse") {
            TcpOptionElement::Timestamp(v, e) => ts = Some((v, e)),
            TcpOptionElement::SelectiveAcknowledgement(first, rest) => {
                sack.push(first);
                sack.extend(rest.iter().flatten());
            }
            _ => {}
        }
    }
    Seen {
        src: SocketAddr::new(src_ip, t.source_port()),
        dst: SocketAddr::new(dst_ip, t.destination_port()),
        seq: t.sequence_number(),
        ack: t.acknowledgment_number(),
        window: t.window_size(),
        syn: t.syn(),
        fin: t.fin(),
        rst: t.rst(),
        ackf: t.ack(),
        payload: t.payload().to_vec(),
        ts,
        sack,
    }
}

/// Hand-built segment parameters.
#[derive(Debug, Clone, Default)]
pub struct Tcp {
    pub seq: u32,
    pub ack: Option<u32>,
    pub flags: TcpFlags,
    pub window: u16,
    pub payload: Vec<u8>,
    pub ts: Option<(u32, u32)>,
    pub sack: Vec<(u32, u32)>,
    pub syn_opts: bool,
}

pub struct Pair {
    pub engine: Engine,
    pub client: SocketAddr,
    pub origin: SocketAddr,
    pub base: Instant,
    pub now: Instant,
    pub ts: bool,
    pub sack: bool,
    pub wscale: Option<u8>,
    pub flow: Option<FlowId>,
    /// Length of the response head.
    pub head_len: u32,
    pub body_len: u64,
    pub buf: Vec<u8>,
}

pub fn body_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

impl Pair {
    pub fn new(ipv6: bool, ts: bool, sack: bool) -> Pair {
        Pair::with_config(ipv6, ts, sack, EngineConfig::default())
    }

    pub fn with_config(ipv6: bool, ts: bool, sack: bool, cfg: EngineConfig) -> Pair {
        let (c, o): (IpAddr, IpAddr) = if ipv6 {
            (
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 80)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 80)),
            )
        };
        let base = Instant::now();
        Pair {
            engine: Engine::new(cfg),
            client: SocketAddr::new(c, 40000),
            origin: SocketAddr::new(o, 80),
            base,
            now: base,
            ts,
            sack,
            wscale: Some(7),
            flow: None,
            head_len: 0,
            body_len: 0,
            buf: Vec::new(),
        }
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
    }

    pub fn ms(&self) -> u32 {
        (self.now - self.base).as_millis() as u32
    }

    /// Builds a packet from `src` to `dst`.
    pub fn build(&self, from_client: bool, t: &Tcp) -> Vec<u8> {
        let (src, dst) = if from_client {
            (self.client, self.origin)
        } else {
            (self.origin, self.client)
        };
        let mut sack = [None; 4];
        for (slot, (l, r)) in sack.iter_mut().zip(t.sack.iter()) {
            *slot = Some(SackBlock {
                left: SeqNumber(*l),
                right: SeqNumber(*r),
            });
        }
        let seg = TcpSegment {
            src,
            dst,
            seq: SeqNumber(t.seq),
            ack: SeqNumber(t.ack.unwrap_or(0)),
            flags: if t.ack.is_some() {
                t.flags.with(TcpFlags::ACK)
            } else {
                t.flags
            },
            window: t.window,
            options: TcpSegmentOptions {
                mss: t.syn_opts.then_some(MSS),
                window_scale: if t.syn_opts { self.wscale } else { None },
                sack_permitted: t.syn_opts && self.sack,
                timestamps: t.ts,
                sack,
            },
            payload: &t.payload,
            ttl: 64,
            tos: 0,
            ident: 1,
        };
        let mut buf = Vec::new();
        seg.emit(&mut buf);
        buf
    }

    /// Feeds a client segment; returns the verdict and the (possibly
    /// edited) packet as it would continue.
    #[track_caller]
    pub fn send_client(&mut self, t: Tcp) -> (Verdict, Option<Seen>) {
        let mut pkt = self.build(true, &t);
        self.feed(Direction::FromClient, &mut pkt)
    }

    #[track_caller]
    pub fn send_origin(&mut self, t: Tcp) -> (Verdict, Option<Seen>) {
        let mut pkt = self.build(false, &t);
        self.feed(Direction::FromOrigin, &mut pkt)
    }

    #[track_caller]
    pub fn feed(&mut self, dir: Direction, pkt: &mut [u8]) -> (Verdict, Option<Seen>) {
        let v = self.engine.handle_packet(self.now, dir, pkt);
        let out = match v {
            Verdict::Accept => Some(parse(pkt)),
            Verdict::AcceptModified { len } => Some(parse(&pkt[..len])),
            Verdict::Drop => None,
        };
        (v, out)
    }

    /// Feeds arbitrary bytes; only checks the verdict's length is sane.
    pub fn feed_raw(&mut self, dir: Direction, pkt: &mut [u8]) -> Verdict {
        let v = self.engine.handle_packet(self.now, dir, pkt);
        if let Verdict::AcceptModified { len } = v {
            assert!(len <= pkt.len());
            parse(&pkt[..len]);
        }
        v
    }

    /// Everything the engine wants to send now.
    #[track_caller]
    pub fn recv_all(&mut self) -> Vec<(Destination, Seen)> {
        let mut out = Vec::new();
        while let Some(t) = self.engine.poll_transmit(self.now, &mut self.buf) {
            assert_eq!(t.len, self.buf.len());
            let s = parse(&self.buf);
            match t.to {
                Destination::ToClient => assert_eq!((s.src, s.dst), (self.origin, self.client)),
                Destination::ToOrigin => assert_eq!((s.src, s.dst), (self.client, self.origin)),
            }
            out.push((t.to, s));
        }
        out
    }

    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.engine.poll_event()).collect()
    }

    pub fn client_ts(&self) -> Option<(u32, u32)> {
        self.ts.then(|| (1000 + self.ms(), 5_000_000 + self.ms()))
    }

    pub fn origin_ts(&self) -> Option<(u32, u32)> {
        self.ts.then(|| (5_000_000 + self.ms(), 1000 + self.ms()))
    }

    pub fn request() -> &'static [u8] {
        b"GET /f HTTP/1.1\r\nHost: o\r\n\r\n"
    }

    pub fn head(body_len: u64) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\nAccept-Ranges: bytes\r\nETag: \"a\"\r\n\r\n"
        )
    }

    /// Origin sequence number of body offset `o`.
    pub fn body_seq(&self, o: u64) -> u32 {
        ORIGIN_ISN
            .wrapping_add(1)
            .wrapping_add(self.head_len)
            .wrapping_add(o as u32)
    }

    pub fn client_next(&self) -> u32 {
        CLIENT_ISN
            .wrapping_add(1)
            .wrapping_add(Self::request().len() as u32)
    }

    pub fn body(range: std::ops::Range<u64>) -> Vec<u8> {
        range.map(body_byte).collect()
    }

    /// Handshake, request, response head with `first_body` body bytes in
    /// the same segment; returns the flow id from the ResponseHead event.
    #[track_caller]
    pub fn open(&mut self, body_len: u64, first_body: u64) -> FlowId {
        self.body_len = body_len;
        let ts = self.client_ts();
        assert_eq!(
            self.send_client(Tcp {
                seq: CLIENT_ISN,
                flags: TcpFlags::SYN,
                window: 65535,
                ts,
                syn_opts: true,
                ..Tcp::default()
            })
            .0,
            Verdict::Accept
        );
        self.advance(1);
        let ts = self.origin_ts();
        assert_eq!(
            self.send_origin(Tcp {
                seq: ORIGIN_ISN,
                ack: Some(CLIENT_ISN.wrapping_add(1)),
                flags: TcpFlags::SYN,
                window: 65535,
                ts,
                syn_opts: true,
                ..Tcp::default()
            })
            .0,
            Verdict::Accept
        );
        self.advance(1);
        let ts = self.client_ts();
        let v = self.send_client(Tcp {
            seq: CLIENT_ISN.wrapping_add(1),
            ack: Some(ORIGIN_ISN.wrapping_add(1)),
            window: 1024,
            payload: Self::request().to_vec(),
            ts,
            ..Tcp::default()
        });
        assert_eq!(v.0, Verdict::Accept);
        self.advance(1);
        let head = Self::head(body_len);
        self.head_len = head.len() as u32;
        let mut payload = head.into_bytes();
        payload.extend(Self::body(0..first_body));
        let ts = self.origin_ts();
        let next = self.client_next();
        let v = self.send_origin(Tcp {
            seq: ORIGIN_ISN.wrapping_add(1),
            ack: Some(next),
            window: 502,
            payload,
            ts,
            ..Tcp::default()
        });
        assert_eq!(v.0, Verdict::Accept);
        let ev = self.events();
        let flow = match ev.as_slice() {
            [
                Event::ResponseHead {
                    flow,
                    body_len: bl,
                    pipelined: false,
                    origin_rtt,
                    ..
                },
            ] => {
                assert_eq!(*bl, Some(body_len));
                // The SYN-ACK came 1 ms after the SYN.
                assert_eq!(*origin_rtt, Some(Duration::from_millis(1)));
                *flow
            }
            other => panic!("expected one ResponseHead, got {other:?}"),
        };
        self.flow = Some(flow);
        flow
    }

    /// A client ACK for body offset `o` (window in units of the scale).
    #[track_caller]
    pub fn client_ack(&mut self, o: u64, window: u16) -> (Verdict, Option<Seen>) {
        let ts = self.client_ts();
        let seq = self.client_next();
        let ack = self.body_seq(o);
        self.send_client(Tcp {
            seq,
            ack: Some(ack),
            window,
            ts,
            ..Tcp::default()
        })
    }

    /// An origin data segment of body `[from, to)`.
    #[track_caller]
    pub fn origin_data(&mut self, from: u64, to: u64) -> (Verdict, Option<Seen>) {
        let ts = self.origin_ts();
        let seq = self.body_seq(from);
        let ack = self.client_next();
        self.send_origin(Tcp {
            seq,
            ack: Some(ack),
            window: 502,
            payload: Self::body(from..to),
            ts,
            ..Tcp::default()
        })
    }
}
