//! Packets per second of the splice engine.
//!
//! - `pass_through_segment`: a 1460-byte origin segment of a tracked flow
//!   that is waiting for its decision (parse, flow lookup, tracking, Accept).
//! - `untracked_segment`: a segment of a flow the engine does not track.
//! - `injected_segment`: one injected 1448-byte segment of an accelerated
//!   flow: push the piece, emit the segment (headers, checksums), absorb the
//!   client's ACK for it.
//!
//! Run: `cargo bench -p tandem-splice --bench engine`.

#![allow(clippy::unwrap_used)]

#[path = "../tests/util/mod.rs"]
mod util;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem_splice::{Direction, Verdict};
use tandem_wire::{SeqNumber, TcpPacket, parse_ip_tcp};
use util::{Pair, Tcp};

fn pass_through(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));

    let mut p = Pair::new(false, true, true);
    p.open(1 << 30, 0);
    let ts = p.origin_ts();
    let mut pkt = p.build(
        false,
        &Tcp {
            seq: p.body_seq(0),
            ack: Some(p.client_next()),
            window: 502,
            payload: Pair::body(0..1448),
            ts,
            ..Tcp::default()
        },
    );
    let now = p.now;
    g.bench_function("pass_through_segment", |b| {
        b.iter(|| {
            let v = p
                .engine
                .handle_packet(now, Direction::FromOrigin, black_box(&mut pkt));
            assert_eq!(v, Verdict::Accept);
        })
    });

    let mut q = Pair::new(false, true, true);
    let mut pkt = q.build(
        false,
        &Tcp {
            seq: 1,
            ack: Some(1),
            window: 502,
            payload: vec![7; 1448],
            ..Tcp::default()
        },
    );
    g.bench_function("untracked_segment", |b| {
        b.iter(|| {
            let v = q
                .engine
                .handle_packet(now, Direction::FromOrigin, black_box(&mut pkt));
            assert_eq!(v, Verdict::Accept);
        })
    });
    g.finish();
}

fn injected(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    let mut p = Pair::new(false, true, true);
    let flow = p.open(1 << 40, 0);
    p.engine.accelerate(p.now, flow, 0).unwrap();
    let ts = p.client_ts();
    let mut ack = p.build(
        true,
        &Tcp {
            seq: p.client_next(),
            ack: Some(p.body_seq(0)),
            window: 4096,
            ts,
            ..Tcp::default()
        },
    );
    assert_eq!(
        p.engine
            .handle_packet(p.now, Direction::FromClient, &mut ack),
        Verdict::Drop
    );
    let mut out = Vec::new();
    while p.engine.poll_transmit(p.now, &mut out).is_some() {}
    let meta = parse_ip_tcp(&ack).unwrap();
    let piece: Vec<u8> = Pair::body(0..1448);
    let now = p.now;
    let mut off = 0u64;
    let base_seq = p.body_seq(0);
    g.bench_function("injected_segment", |b| {
        b.iter(|| {
            p.engine.push_piece(now, flow, off, &piece).unwrap();
            let t = p.engine.poll_transmit(now, &mut out).unwrap();
            black_box(t);
            off += 1448;
            {
                let mut tcp = TcpPacket::new_unchecked(&mut ack[meta.tcp_offset..meta.ip_len]);
                tcp.update_ack(SeqNumber(base_seq).add(off as u32));
            }
            let v = p.engine.handle_packet(now, Direction::FromClient, &mut ack);
            assert_eq!(v, Verdict::Drop);
        })
    });
    assert_eq!(p.engine.flow_info(flow).unwrap().delivered, Some(off));

    // The shape of a real transfer: 64 KiB pieces, the client ACKs every
    // second segment (delayed ACK). One element = one injected segment.
    let mut p = Pair::new(false, true, true);
    let flow = p.open(1 << 40, 0);
    p.engine.accelerate(p.now, flow, 0).unwrap();
    let ts = p.client_ts();
    let mut ack = p.build(
        true,
        &Tcp {
            seq: p.client_next(),
            ack: Some(p.body_seq(0)),
            window: 4096,
            ts,
            ..Tcp::default()
        },
    );
    assert_eq!(
        p.engine
            .handle_packet(p.now, Direction::FromClient, &mut ack),
        Verdict::Drop
    );
    while p.engine.poll_transmit(p.now, &mut out).is_some() {}
    let meta = parse_ip_tcp(&ack).unwrap();
    let chunk: Vec<u8> = Pair::body(0..65_536);
    let now = p.now;
    let base_seq = p.body_seq(0);
    let (mut pushed, mut sent, mut segs) = (0u64, 0u64, 0u64);
    g.bench_function("injected_segment_bulk", |b| {
        b.iter(|| {
            if pushed < sent + 65_536 {
                p.engine.push_piece(now, flow, pushed, &chunk).unwrap();
                pushed += 65_536;
            }
            let t = p.engine.poll_transmit(now, &mut out).unwrap();
            black_box(t);
            sent += 1448;
            segs += 1;
            if segs % 2 == 0 {
                {
                    let mut tcp = TcpPacket::new_unchecked(&mut ack[meta.tcp_offset..meta.ip_len]);
                    tcp.update_ack(SeqNumber(base_seq).add(sent as u32));
                }
                let v = p.engine.handle_packet(now, Direction::FromClient, &mut ack);
                assert_eq!(v, Verdict::Drop);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, pass_through, injected);
criterion_main!(benches);
