//! Arbitrary packets and API calls in arbitrary order against the splice
//! engine. Each run first opens a real flow (handshake, request, response
//! head) so that the fuzzer reaches the accelerated states, then interprets
//! the input as a list of operations. Invariants checked: no panic; every
//! verdict length is within the buffer; every emitted packet parses as
//! IP + TCP with valid checksums; injected payload bytes are the body bytes
//! for their offset (the engine never emits a byte it was not given).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tandem_splice::{Destination, Direction, Engine, EngineConfig, Event, FlowId, Verdict};
use tandem_wire::{SackBlock, SeqNumber, TcpFlags, TcpPacket, TcpSegment, TcpSegmentOptions, parse_ip_tcp};

const CISN: u32 = 0xffff_fff0;
const OISN: u32 = 0x1234_5678;
const REQ: &[u8] = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
const BODY_LEN: u64 = 200_000;

fn body_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9) >> 7) as u8
}

struct World {
    engine: Engine,
    now: Instant,
    client: SocketAddr,
    origin: SocketAddr,
    head_len: u32,
    flow: Option<FlowId>,
    out: Vec<u8>,
}

impl World {
    fn seg(&self, from_client: bool, seq: u32, ack: u32, flags: TcpFlags, win: u16, ts: Option<(u32, u32)>, sack: [Option<SackBlock>; 4], payload: &[u8], syn: bool) -> Vec<u8> {
        let (src, dst) = if from_client { (self.client, self.origin) } else { (self.origin, self.client) };
        let s = TcpSegment {
            src,
            dst,
            seq: SeqNumber(seq),
            ack: SeqNumber(ack),
            flags,
            window: win,
            options: TcpSegmentOptions {
                mss: syn.then_some(1460),
                window_scale: syn.then_some(7),
                sack_permitted: syn,
                timestamps: ts,
                sack,
            },
            payload,
            ttl: 64,
            tos: 0,
            ident: 0,
        };
        let mut b = Vec::new();
        s.emit(&mut b);
        b
    }

    fn feed(&mut self, dir: Direction, pkt: &mut [u8]) {
        let len = pkt.len();
        match self.engine.handle_packet(self.now, dir, pkt) {
            Verdict::AcceptModified { len: n } => {
                assert!(n <= len);
                let m = parse_ip_tcp(&pkt[..n]).expect("modified packet parses");
                let t = TcpPacket::new_checked(&pkt[m.tcp_offset..m.ip_len]).expect("tcp");
                assert!(t.verify_checksum(m.src, m.dst), "modified packet checksum");
            }
            Verdict::Accept | Verdict::Drop => {}
        }
    }

    fn drain(&mut self) {
        let mut n = 0;
        while let Some(t) = self.engine.poll_transmit(self.now, &mut self.out) {
            n += 1;
            assert!(n < 10_000, "poll_transmit never ends");
            assert_eq!(t.len, self.out.len());
            let m = parse_ip_tcp(&self.out).expect("emitted packet parses");
            let tcp = TcpPacket::new_checked(&self.out[m.tcp_offset..m.ip_len]).expect("tcp");
            assert!(tcp.verify_checksum(m.src, m.dst), "emitted checksum");
            if t.to == Destination::ToClient && !tcp.payload().is_empty() {
                let base = SeqNumber(OISN).add(1 + self.head_len);
                let off = tcp.seq().delta(base);
                assert!(off >= 0, "injected before the body");
                for (i, b) in tcp.payload().iter().enumerate() {
                    assert_eq!(*b, body_byte(off as u64 + i as u64), "wrong injected byte");
                }
            }
        }
        while let Some(ev) = self.engine.poll_event() {
            if let Event::ResponseHead { flow, .. } = ev {
                self.flow = Some(flow);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ipv6 = data.first().is_some_and(|b| b & 1 == 1);
    let (c, o): (IpAddr, IpAddr) = if ipv6 {
        (IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)), IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)))
    } else {
        (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)))
    };
    let cfg = EngineConfig { max_flows: 8, buffer_window: 64 * 1024, max_retransmits: 3, ..EngineConfig::default() };
    let mut w = World {
        engine: Engine::new(cfg),
        now: Instant::now(),
        client: SocketAddr::new(c, 40000),
        origin: SocketAddr::new(o, 80),
        head_len: 0,
        flow: None,
        out: Vec::new(),
    };
    // Open a flow.
    let ts = Some((100, 0));
    let none = [None; 4];
    let mut p = w.seg(true, CISN, 0, TcpFlags::SYN, 65535, ts, none, &[], true);
    w.feed(Direction::FromClient, &mut p);
    let mut p = w.seg(false, OISN, CISN.wrapping_add(1), TcpFlags::SYN.with(TcpFlags::ACK), 65535, Some((7, 100)), none, &[], true);
    w.feed(Direction::FromOrigin, &mut p);
    let mut p = w.seg(true, CISN.wrapping_add(1), OISN.wrapping_add(1), TcpFlags::ACK, 512, Some((101, 7)), none, REQ, false);
    w.feed(Direction::FromClient, &mut p);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY_LEN}\r\n\r\n");
    w.head_len = head.len() as u32;
    let mut payload = head.into_bytes();
    payload.extend((0..500).map(body_byte));
    let cnext = CISN.wrapping_add(1).wrapping_add(REQ.len() as u32);
    let mut p = w.seg(false, OISN.wrapping_add(1), cnext, TcpFlags::ACK, 512, Some((8, 101)), none, &payload, false);
    w.feed(Direction::FromOrigin, &mut p);
    w.drain();
    let hl = w.head_len;
    let body_seq = move |o: u64| OISN.wrapping_add(1).wrapping_add(hl).wrapping_add(o as u32);

    // Interpret the rest as operations.
    let mut i = 1;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = data.get(i..i + n)?;
        i += n;
        Some(s)
    };
    let mut tsv = 200u32;
    while let Some(op) = take(1) {
        let op = op[0];
        let Some(flow) = w.flow else { break };
        match op % 10 {
            0 => {
                let Some(a) = take(3) else { break };
                let cut = u64::from(u16::from_le_bytes([a[0], a[1]])) * u64::from(a[2] % 4);
                let _ = w.engine.accelerate(w.now, flow, cut.min(BODY_LEN + 1));
            }
            1 => {
                let Some(a) = take(4) else { break };
                let off = u64::from(u32::from_le_bytes([a[0], a[1], a[2], a[3]])) % (BODY_LEN + 10);
                let len = u64::from(a[0]) * 37;
                let end = (off + len).min(BODY_LEN + 3);
                let piece: Vec<u8> = (off..end).map(body_byte).collect();
                let _ = w.engine.push_piece(w.now, flow, off, &piece);
            }
            2 => {
                // Client ACK (with SACK, window) for a body offset.
                let Some(a) = take(6) else { break };
                let off = u64::from(u32::from_le_bytes([a[0], a[1], a[2], 0])) % (BODY_LEN + 2);
                let sl = u64::from(a[3]) * 100;
                let sack = [Some(SackBlock { left: SeqNumber(body_seq(off + sl)), right: SeqNumber(body_seq(off + sl + 1448)) }), None, None, None];
                let flags = match a[5] % 16 { 0 => TcpFlags::ACK.with(TcpFlags::FIN), 1 => TcpFlags::RST, _ => TcpFlags::ACK };
                tsv += 1;
                let mut p = w.seg(true, cnext, body_seq(off), flags, u16::from(a[4]) * 8, Some((tsv, 9)), if a[3] > 0 { sack } else { none }, &[], false);
                w.feed(Direction::FromClient, &mut p);
            }
            3 => {
                // Origin data for a body range (maybe straddling the cut).
                let Some(a) = take(4) else { break };
                let off = u64::from(u32::from_le_bytes([a[0], a[1], a[2], 0])) % BODY_LEN;
                let end = (off + u64::from(a[3]) * 6).min(BODY_LEN);
                let payload: Vec<u8> = (off..end).map(body_byte).collect();
                let flags = if a[3] == 255 { TcpFlags::ACK.with(TcpFlags::RST) } else { TcpFlags::ACK };
                let mut p = w.seg(false, body_seq(off), cnext, flags, 512, Some((tsv, 100)), none, &payload, false);
                w.feed(Direction::FromOrigin, &mut p);
            }
            4 => {
                let Some(a) = take(2) else { break };
                w.now += Duration::from_millis(u64::from(u16::from_le_bytes([a[0], a[1]])));
                if w.engine.poll_timeout().is_some_and(|t| t <= w.now) {
                    w.engine.handle_timeout(w.now);
                }
            }
            5 => {
                if let Some(t) = w.engine.poll_timeout() {
                    w.now = w.now.max(t);
                    w.engine.handle_timeout(w.now);
                }
            }
            6 => w.engine.fail(w.now, flow),
            7 => w.engine.pass_through(flow),
            8 => {
                // A raw packet: arbitrary bytes, or a valid one with edits.
                let Some(a) = take(2) else { break };
                let n = usize::from(a[0]) % 120;
                let Some(raw) = take(n) else { break };
                let mut pkt = if a[1] % 2 == 0 {
                    raw.to_vec()
                } else {
                    let mut p = w.seg(a[1] % 4 == 1, cnext, body_seq(0), TcpFlags::ACK, 100, Some((1, 1)), none, &[1, 2, 3], false);
                    for (k, b) in raw.iter().enumerate() {
                        let at = (usize::from(*b) * 7 + k) % p.len();
                        p[at] ^= b.rotate_left(3) | 1;
                    }
                    p
                };
                let dir = if a[1] & 4 == 0 { Direction::FromClient } else { Direction::FromOrigin };
                w.feed(dir, &mut pkt);
            }
            _ => {}
        }
        w.drain();
        let _ = w.engine.buffer_room(flow);
    }
});
