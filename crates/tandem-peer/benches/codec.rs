//! Throughput of the peer protocol: message encoding, sealing + framing +
//! opening of full 16 KiB piece chunks (sans-IO, one core), and the tokio
//! adapter over loopback TCP.
//!
//! Run: `cargo bench -p tandem-peer --bench codec`. Criterion prints
//! throughput in bytes/s of piece payload.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem_peer::{
    ByteRange, Config, Connection, Event, Hello, KeyPair, MAX_CHUNK, Message, Negotiate,
    PeerConnection, PeerSet, SessionKey, Validator,
};

const S: SessionKey = SessionKey([1; 16]);
const PIECE: u64 = 1 << 20;

fn pair() -> (Connection, Connection) {
    let now = Instant::now();
    let (ka, kb) = (
        KeyPair::from_private([1; 32]).unwrap(),
        KeyPair::from_private([2; 32]).unwrap(),
    );
    let mut peers = PeerSet::new();
    peers.insert(ka.public(), "a");
    let mut a = Connection::new_initiator(
        now,
        &ka,
        &kb.public(),
        Hello::new("a", 0),
        Config::default(),
    )
    .unwrap();
    let mut b = Connection::new_responder(
        now,
        &kb,
        Arc::new(peers),
        Hello::new("b", 0),
        Config::default(),
    )
    .unwrap();
    let m = a.pending_output().to_vec();
    a.advance_output(m.len());
    b.handle_input(now, &m).unwrap();
    let m = b.pending_output().to_vec();
    b.advance_output(m.len());
    a.handle_input(now, &m).unwrap();
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    (a, b)
}

fn negotiate() -> Message {
    Message::Negotiate(Box::new(Negotiate {
        session: S,
        origin: "203.0.113.1:80".parse().unwrap(),
        host: "h".into(),
        target: "/f".into(),
        headers: vec![],
        validator: Validator::ETag("\"v\"".into()),
        body_length: u64::MAX / 2,
        range: ByteRange::new(0, u64::MAX / 2),
        hop_budget: 0,
    }))
}

fn chunk_msg(piece: u64, offset: u64, payload: &Bytes) -> Message {
    Message::PieceData {
        session: S,
        piece,
        offset,
        bytes: payload.clone(),
    }
}

fn codec(c: &mut Criterion) {
    let payload = Bytes::from(vec![0x5au8; MAX_CHUNK]);
    let mut g = c.benchmark_group("peer");
    g.throughput(Throughput::Bytes(MAX_CHUNK as u64));
    let m = chunk_msg(1, 0, &payload);
    g.bench_function("encode+decode 16 KiB PieceData", |bch| {
        bch.iter(|| Message::decode(&m.encode().unwrap()).unwrap())
    });

    // sealed: a 1 MiB piece in 64 chunks through a real Noise session
    g.throughput(Throughput::Bytes(PIECE));
    g.bench_function("seal+frame+open 1 MiB piece (64 x 16 KiB)", |bch| {
        let (mut a, mut b) = pair();
        let now = Instant::now();
        a.send(now, &negotiate()).unwrap();
        let w = a.pending_output().to_vec();
        a.advance_output(w.len());
        b.handle_input(now, &w).unwrap();
        b.poll_event().unwrap();
        b.send(
            now,
            &Message::Commit {
                session: S,
                rate_bps: 1,
                parallel: 2,
            },
        )
        .unwrap();
        let w = b.pending_output().to_vec();
        b.advance_output(w.len());
        a.handle_input(now, &w).unwrap();
        a.poll_event().unwrap();
        let mut piece = 0u64;
        bch.iter(|| {
            piece += 1;
            let start = piece * PIECE;
            a.send(
                now,
                &Message::PieceRequest {
                    session: S,
                    piece,
                    range: ByteRange::new(start, start + PIECE),
                },
            )
            .unwrap();
            let w = a.pending_output().to_vec();
            a.advance_output(w.len());
            b.handle_input(now, &w).unwrap();
            b.poll_event().unwrap();
            let mut off = start;
            while off < start + PIECE {
                b.send(now, &chunk_msg(piece, off, &payload)).unwrap();
                off += MAX_CHUNK as u64;
            }
            b.send(now, &Message::PieceEnd { session: S, piece })
                .unwrap();
            let n = b.pending_output().len();
            a.handle_input(now, b.pending_output()).unwrap();
            b.advance_output(n);
            let mut got = 0;
            while let Some(Event::Message(m)) = a.poll_event() {
                if let Message::PieceData { bytes, .. } = m {
                    got += bytes.len();
                }
            }
            assert_eq!(got as u64, PIECE);
        })
    });

    // tokio adapter over loopback TCP: 8 MiB per iteration
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total: u64 = 8 << 20;
    g.throughput(Throughput::Bytes(total));
    g.sample_size(10);
    g.bench_function("PeerConnection loopback 8 MiB", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                let (ka, kb) = (
                    KeyPair::from_private([1; 32]).unwrap(),
                    KeyPair::from_private([2; 32]).unwrap(),
                );
                let mut peers = PeerSet::new();
                peers.insert(ka.public(), "a");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let payload = payload.clone();
                let server = tokio::spawn(async move {
                    let (s, _) = listener.accept().await.unwrap();
                    let mut conn = PeerConnection::accept(
                        s,
                        &kb,
                        Arc::new(peers),
                        Hello::new("b", 0),
                        Config::default(),
                    )
                    .await
                    .unwrap();
                    conn.recv().await.unwrap();
                    conn.send(&Message::Commit {
                        session: S,
                        rate_bps: 1,
                        parallel: 2,
                    })
                    .await
                    .unwrap();
                    conn.recv().await.unwrap();
                    let mut off = 0;
                    while off < total {
                        conn.send(&chunk_msg(0, off, &payload)).await.unwrap();
                        off += MAX_CHUNK as u64;
                    }
                    conn.send(&Message::PieceEnd {
                        session: S,
                        piece: 0,
                    })
                    .await
                    .unwrap();
                    let _ = conn.recv().await;
                });
                let mut conn = PeerConnection::connect(
                    addr,
                    &ka,
                    &KeyPair::from_private([2; 32]).unwrap().public(),
                    Hello::new("a", 0),
                    Config::default(),
                )
                .await
                .unwrap();
                conn.send(&negotiate()).await.unwrap();
                conn.recv().await.unwrap();
                conn.send(&Message::PieceRequest {
                    session: S,
                    piece: 0,
                    range: ByteRange::new(0, total),
                })
                .await
                .unwrap();
                loop {
                    if let Message::PieceEnd { .. } = conn.recv().await.unwrap() {
                        break;
                    }
                }
                drop(conn);
                let _ = server.await;
            })
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
