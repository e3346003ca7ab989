//! Segment-level traces through the engine: every emitted or edited
//! packet is parsed back by etherparse with its checksums verified.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::Duration;

use tandem_splice::{
    Destination, Direction, EngineConfig, Event, FailReason, SpliceError, Verdict,
};
use tandem_wire::TcpFlags;
use util::{CLIENT_ISN, MSS, ORIGIN_ISN, Pair, Tcp};

/// Opens a flow, accelerates at `cut` (client has acked nothing of the
/// body yet) and returns the pair.
fn accelerated(ipv6: bool, ts: bool, sack: bool, body_len: u64, first_body: u64, cut: u64) -> Pair {
    let mut p = Pair::new(ipv6, ts, sack);
    let flow = p.open(body_len, first_body);
    let got = p.engine.accelerate(p.now, flow, cut).unwrap();
    assert_eq!(got, cut);
    p
}

#[test]
fn handshake_and_heads_produce_one_event() {
    let mut p = Pair::new(false, true, true);
    let flow = p.open(10_000, 100);
    assert_eq!(p.engine.flow_info(flow).unwrap().state, "head-seen");
    // Until the decision, packets pass untouched.
    let (v, seen) = p.origin_data(100, 1000);
    assert_eq!(v, Verdict::Accept);
    assert_eq!(seen.unwrap().payload, Pair::body(100..1000));
    assert!(p.recv_all().is_empty());
}

#[test]
fn untracked_flows_and_garbage_pass_through() {
    let mut p = Pair::new(false, true, true);
    // Mid-stream packet of a flow whose SYN was never seen.
    let (v, _) = p.origin_data(0, 100);
    assert_eq!(v, Verdict::Accept);
    for mut junk in [
        vec![],
        vec![0x45],
        vec![0x45; 19],
        vec![0x60; 39],
        vec![0xff; 80],
        vec![
            0x45, 0, 0, 20, 0, 0, 0x20, 0, 64, 6, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ],
    ] {
        assert_eq!(
            p.engine
                .handle_packet(p.now, Direction::FromClient, &mut junk),
            Verdict::Accept
        );
    }
    assert_eq!(p.engine.flow_count(), 0);
    assert!(p.engine.stats().unparsed >= 5);
}

#[test]
fn pass_through_forgets_the_flow() {
    let mut p = Pair::new(false, true, true);
    let flow = p.open(10_000, 0);
    p.engine.pass_through(flow);
    assert_eq!(p.engine.flow_info(flow), None);
    assert!(matches!(p.events().as_slice(), [Event::FlowClosed { .. }]));
    assert_eq!(
        p.engine.accelerate(p.now, flow, 0),
        Err(SpliceError::UnknownFlow)
    );
    assert_eq!(p.origin_data(0, 1000).0, Verdict::Accept);
}

#[test]
fn accelerate_refuses_what_it_cannot_do() {
    let mut p = Pair::new(false, false, false);
    let flow = p.open(1000, 0);
    assert_eq!(
        p.engine.accelerate(p.now, flow, 1001),
        Err(SpliceError::CutBeyondBody {
            cut: 1001,
            body_len: 1000
        })
    );
    assert_eq!(
        p.engine.push_piece(p.now, flow, 0, b"x"),
        Err(SpliceError::NotAccelerated)
    );
    assert_eq!(p.engine.buffer_room(flow), 0);
    p.engine.accelerate(p.now, flow, 10).unwrap();
    assert_eq!(
        p.engine.accelerate(p.now, flow, 10),
        Err(SpliceError::NotAwaitingDecision)
    );
    assert_eq!(
        p.engine.push_piece(p.now, flow, 990, &[0; 11]),
        Err(SpliceError::PieceBeyondBody {
            end: 1001,
            body_len: 1000
        })
    );

    // Pipelined second request: not eligible.
    let mut p = Pair::new(false, false, false);
    let flow = p.open(1000, 0);
    let next = p.client_next();
    let _ = p.send_client(Tcp {
        seq: next,
        ack: Some(p.body_seq(0)),
        window: 100,
        payload: b"GET /2 HTTP/1.1\r\n\r\n".to_vec(),
        ..Tcp::default()
    });
    assert_eq!(
        p.engine.accelerate(p.now, flow, 0),
        Err(SpliceError::Pipelined)
    );

    // No Content-Length.
    let mut p = Pair::new(false, false, false);
    let _ = p.send_client(Tcp {
        seq: CLIENT_ISN,
        flags: TcpFlags::SYN,
        window: 65535,
        syn_opts: true,
        ..Tcp::default()
    });
    let _ = p.send_origin(Tcp {
        seq: ORIGIN_ISN,
        ack: Some(CLIENT_ISN.wrapping_add(1)),
        flags: TcpFlags::SYN,
        window: 65535,
        syn_opts: true,
        ..Tcp::default()
    });
    let _ = p.send_client(Tcp {
        seq: CLIENT_ISN.wrapping_add(1),
        ack: Some(ORIGIN_ISN.wrapping_add(1)),
        window: 100,
        payload: Pair::request().to_vec(),
        ..Tcp::default()
    });
    let next = p.client_next();
    let _ = p.send_origin(Tcp {
        seq: ORIGIN_ISN.wrapping_add(1),
        ack: Some(next),
        window: 100,
        payload: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc".to_vec(),
        ..Tcp::default()
    });
    let ev = p.events();
    let [
        Event::ResponseHead {
            flow,
            body_len: None,
            ..
        },
    ] = ev.as_slice()
    else {
        panic!("{ev:?}")
    };
    assert_eq!(
        p.engine.accelerate(p.now, *flow, 0),
        Err(SpliceError::NoContentLength)
    );
}

#[test]
fn cut_stops_the_origin_with_a_valid_zero_window_ack() {
    let mut p = accelerated(false, true, true, 100_000, 1000, 5000);
    // The origin streams up to 6000 before the client acks the cut.
    assert_eq!(p.origin_data(1000, 3000).0, Verdict::Accept);
    assert_eq!(
        p.origin_data(3000, 6000).1.map(|s| s.payload.len()),
        Some(2000)
    ); // trimmed at the cut
    // Client acks below the cut: forwarded to the origin.
    assert_eq!(p.client_ack(3000, 1000).0, Verdict::Accept);
    assert!(p.recv_all().is_empty());
    p.advance(5);
    // Client acks the cut: absorbed; origin gets ACK(everything it sent), window 0.
    assert_eq!(p.client_ack(5000, 1000).0, Verdict::Drop);
    assert!(matches!(
        p.events().as_slice(),
        [Event::CutDone { cut: 5000, .. }]
    ));
    let out = p.recv_all();
    assert_eq!(out.len(), 1, "{out:?}");
    let (to, s) = &out[0];
    assert_eq!(*to, Destination::ToOrigin);
    assert!(s.ackf && !s.rst && !s.syn && !s.fin && s.payload.is_empty());
    assert_eq!(s.window, 0);
    assert_eq!(s.seq, p.client_next());
    assert_eq!(s.ack, p.body_seq(6000), "acks all the origin sent");
    let (cts, _) = p.client_ts().unwrap();
    let (ots, _) = p.origin_ts().unwrap();
    assert_eq!(
        s.ts,
        Some((cts, ots - 5)),
        "client's clock, echoing the origin's newest TSval"
    );
    // Origin segments past the cut are dropped; its probes get the same ACK.
    assert_eq!(p.origin_data(6000, 7000).0, Verdict::Drop);
    p.advance(300);
    let probe = p.build(
        false,
        &Tcp {
            seq: p.body_seq(6000).wrapping_sub(1),
            ack: Some(p.client_next()),
            window: 502,
            ts: p.origin_ts(),
            ..Tcp::default()
        },
    );
    let mut probe = probe;
    assert_eq!(p.feed(Direction::FromOrigin, &mut probe).0, Verdict::Drop);
    let out = p.recv_all();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].1.window, out[0].1.ack), (0, p.body_seq(7000)));
}

#[test]
fn retransmission_straddling_the_cut_is_trimmed() {
    for ipv6 in [false, true] {
        let mut p = accelerated(ipv6, true, true, 50_000, 0, 3000);
        // Straddles the cut, with FIN (as a Connection: close origin might).
        let ts = p.origin_ts();
        let (v, s) = p.send_origin(Tcp {
            seq: p.body_seq(2500),
            ack: Some(p.client_next()),
            flags: TcpFlags::FIN,
            window: 502,
            payload: Pair::body(2500..3700),
            ts,
            ..Tcp::default()
        });
        let s = s.unwrap();
        assert!(matches!(v, Verdict::AcceptModified { .. }));
        assert_eq!(s.payload, Pair::body(2500..3000));
        assert_eq!(s.seq, p.body_seq(2500));
        assert!(!s.fin, "the FIN past the cut is removed");
        // Entirely before the cut: untouched. Entirely past: dropped.
        assert_eq!(p.origin_data(1000, 2000).0, Verdict::Accept);
        assert_eq!(p.origin_data(3000, 4000).0, Verdict::Drop);
        // Ending exactly at the cut: untouched.
        assert_eq!(p.origin_data(2000, 3000).0, Verdict::Accept);
    }
}

#[test]
fn sack_blocks_past_the_origins_data_are_hidden_from_it() {
    let mut p = accelerated(false, true, true, 50_000, 0, 3000);
    assert_eq!(p.origin_data(0, 1000).0, Verdict::Accept);
    assert_eq!(p.origin_data(2000, 3000).0, Verdict::Accept); // 1000..2000 lost
    p.engine
        .push_piece(p.now, p.flow.unwrap(), 3000, &Pair::body(3000..5000))
        .unwrap();
    let inj = p.recv_all();
    assert!(!inj.is_empty());
    // Client: ack 1000, SACK 2000..3000 (origin's) and 3000..4448 (ours).
    let ts = p.client_ts();
    let (v, s) = p.send_client(Tcp {
        seq: p.client_next(),
        ack: Some(p.body_seq(1000)),
        window: 1000,
        ts,
        sack: vec![(p.body_seq(2000), p.body_seq(4448))],
        ..Tcp::default()
    });
    // The merged block runs past what the origin sent: removed entirely.
    assert!(matches!(v, Verdict::AcceptModified { .. }));
    assert!(s.unwrap().sack.is_empty());
    let ts = p.client_ts();
    let (v, s) = p.send_client(Tcp {
        seq: p.client_next(),
        ack: Some(p.body_seq(1000)),
        window: 1000,
        ts,
        sack: vec![
            (p.body_seq(3000), p.body_seq(4448)),
            (p.body_seq(2000), p.body_seq(2500)),
        ],
        ..Tcp::default()
    });
    assert!(matches!(v, Verdict::AcceptModified { .. }));
    assert_eq!(s.unwrap().sack, vec![(p.body_seq(2000), p.body_seq(2500))]);
}

#[test]
fn injected_segments_continue_seq_ack_and_timestamps() {
    for ipv6 in [false, true] {
        let mut p = accelerated(ipv6, true, true, 100_000, 2000, 2000);
        let flow = p.flow.unwrap();
        assert_eq!(p.client_ack(2000, 1000).0, Verdict::Drop); // cut done
        let _ = p.recv_all();
        let last_origin_ts = p.origin_ts().unwrap().0 - 3; // the head segment
        p.advance(10);
        p.engine
            .push_piece(p.now, flow, 2000, &Pair::body(2000..12_000))
            .unwrap();
        let out = p.recv_all();
        let mss = usize::from(MSS) - 12;
        // initial cwnd 10 segments
        assert_eq!(out.len(), 7, "10 KB in 1448-byte segments");
        let mut at = 2000u64;
        for (to, s) in &out {
            assert_eq!(*to, Destination::ToClient);
            assert_eq!(s.seq, p.body_seq(at));
            assert_eq!(s.ack, p.client_next());
            assert_eq!(s.window, 502, "the origin's raw window");
            assert!(s.payload.len() <= mss);
            assert_eq!(s.payload, Pair::body(at..at + s.payload.len() as u64));
            let (tsval, tsecr) = s.ts.unwrap();
            assert!(
                tsval.wrapping_sub(last_origin_ts) as i32 >= 10,
                "TSval continues the origin's clock"
            );
            assert_eq!(
                tsecr,
                p.client_ts().unwrap().0 - 10,
                "echoes the client's newest TSval"
            );
            at += s.payload.len() as u64;
        }
        assert_eq!(at, 12_000);
    }
}

#[test]
fn no_timestamps_when_not_negotiated() {
    let mut p = accelerated(false, false, false, 10_000, 0, 0);
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    p.engine
        .push_piece(p.now, p.flow.unwrap(), 0, &Pair::body(0..3000))
        .unwrap();
    for (_, s) in p.recv_all() {
        assert_eq!(s.ts, None);
        assert!(s.payload.len() <= usize::from(MSS));
    }
}

#[test]
fn sack_drives_hole_retransmission() {
    let mut p = accelerated(false, true, true, 1_000_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..14_480))
        .unwrap();
    let out = p.recv_all();
    assert_eq!(out.len(), 10);
    // Segment 0 lost; the client SACKs 1448..5792 with duplicate ACKs.
    p.advance(5);
    let ts = p.client_ts();
    let seq = p.client_next();
    let (v, _) = p.send_client(Tcp {
        seq,
        ack: Some(p.body_seq(0)),
        window: 1000,
        ts,
        sack: vec![(p.body_seq(1448), p.body_seq(5792))],
        ..Tcp::default()
    });
    assert_eq!(v, Verdict::Drop);
    let out = p.recv_all();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].1.seq, p.body_seq(0));
    assert_eq!(out[0].1.payload, Pair::body(0..1448));
}

#[test]
fn three_dup_acks_without_sack_trigger_fast_retransmit() {
    let mut p = accelerated(false, true, false, 1_000_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    assert_eq!(p.recv_all().len(), 1, "the origin's zero-window ACK");
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..14_480))
        .unwrap();
    assert_eq!(p.recv_all().len(), 10);
    // One ACK that advances, then three duplicates.
    for i in 0..4 {
        p.advance(1);
        assert_eq!(p.client_ack(1448, 1000).0, Verdict::Drop);
        let out = p.recv_all();
        if i < 3 {
            assert!(out.is_empty(), "dup ack {i}: {out:?}");
        } else {
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].1.seq, p.body_seq(1448));
        }
    }
}

#[test]
fn rto_backs_off_then_fails_with_resets() {
    let cfg = EngineConfig {
        max_retransmits: 3,
        ..EngineConfig::default()
    };
    let mut p = Pair::with_config(false, true, true, cfg);
    let flow = p.open(100_000, 0);
    p.engine.accelerate(p.now, flow, 0).unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    let _ = p.events();
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..1000))
        .unwrap();
    assert_eq!(p.recv_all().len(), 1);
    let mut gaps = vec![];
    let mut last = p.now;
    for _ in 0..3 {
        let t = p.engine.poll_timeout().unwrap();
        p.now = t;
        p.engine.handle_timeout(t);
        let out = p.recv_all();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.seq, p.body_seq(0));
        assert_eq!(out[0].1.payload, Pair::body(0..1000));
        gaps.push(t - last);
        last = t;
    }
    assert!(gaps[1] >= gaps[0] * 2 && gaps[2] >= gaps[1] * 2, "{gaps:?}");
    let t = p.engine.poll_timeout().unwrap();
    p.now = t;
    p.engine.handle_timeout(t);
    let ev = p.events();
    assert!(
        ev.contains(&Event::Failed {
            flow,
            reason: FailReason::RetransmitLimit
        }),
        "{ev:?}"
    );
    let out = p.recv_all();
    let rst_client = out
        .iter()
        .find(|(to, _)| *to == Destination::ToClient)
        .unwrap();
    assert!(rst_client.1.rst && rst_client.1.payload.is_empty());
    assert_eq!(rst_client.1.seq, p.body_seq(0), "at the client's rcv_nxt");
    let rst_origin = out
        .iter()
        .find(|(to, _)| *to == Destination::ToOrigin)
        .unwrap();
    assert!(rst_origin.1.rst);
    assert_eq!(rst_origin.1.seq, p.client_next());
}

#[test]
fn fin_on_the_last_byte_then_clean_close() {
    let mut p = accelerated(false, true, true, 3000, 0, 1000);
    let flow = p.flow.unwrap();
    assert_eq!(p.origin_data(0, 1000).0, Verdict::Accept);
    assert_eq!(p.client_ack(1000, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    p.engine
        .push_piece(p.now, flow, 1000, &Pair::body(1000..3000))
        .unwrap();
    let out = p.recv_all();
    assert_eq!(out.len(), 2);
    assert!(!out[0].1.fin && out[1].1.fin, "FIN rides on the last byte");
    assert_eq!(
        out[1].1.seq + out[1].1.payload.len() as u32,
        p.body_seq(3000)
    );
    let _ = p.events();
    assert_eq!(p.client_ack(3001, 1000).0, Verdict::Drop);
    assert!(p.events().contains(&Event::Finished { flow }));
    // Client closes: its FIN is acknowledged; the origin gets its RST.
    let ts = p.client_ts();
    let (v, _) = p.send_client(Tcp {
        seq: p.client_next(),
        ack: Some(p.body_seq(3001)),
        flags: TcpFlags::FIN,
        window: 1000,
        ts,
        ..Tcp::default()
    });
    assert_eq!(v, Verdict::Drop);
    let out = p.recv_all();
    let ack = out
        .iter()
        .find(|(to, _)| *to == Destination::ToClient)
        .unwrap();
    assert_eq!(
        (ack.1.seq, ack.1.ack),
        (p.body_seq(3001), p.client_next().wrapping_add(1))
    );
    let rst = out
        .iter()
        .find(|(to, _)| *to == Destination::ToOrigin)
        .unwrap();
    assert!(rst.1.rst);
    assert_eq!(
        rst.1.seq,
        p.client_next(),
        "the origin never saw the client's FIN"
    );
    assert_eq!(rst.1.ack, p.body_seq(1000));
    // The RST to the origin is repeated twice (it may be lost on the WAN),
    // then the flow lingers out and is forgotten.
    let mut origin_rsts = 1;
    let mut closed = false;
    for _ in 0..20 {
        let Some(t) = p.engine.poll_timeout() else {
            break;
        };
        p.now = p.now.max(t);
        p.engine.handle_timeout(p.now);
        for (to, s) in p.recv_all() {
            assert_eq!(to, Destination::ToOrigin);
            assert!(s.rst && s.seq == p.client_next());
            origin_rsts += 1;
        }
        closed |= p.events().contains(&Event::FlowClosed { flow });
        if closed {
            break;
        }
    }
    assert_eq!(origin_rsts, 3);
    assert!(closed);
    assert_eq!(p.engine.flow_count(), 0);
}

#[test]
fn fail_resets_and_never_sends_bytes_not_given() {
    let mut p = accelerated(true, true, true, 100_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    // A gap at 0..1000: nothing may be sent.
    p.engine
        .push_piece(p.now, flow, 1000, &Pair::body(1000..5000))
        .unwrap();
    assert!(p.recv_all().is_empty());
    // Room is bounded by the window and by what is left of the body.
    assert_eq!(p.engine.buffer_room(flow), 100_000);
    p.engine.fail(p.now, flow);
    assert!(p.events().contains(&Event::Failed {
        flow,
        reason: FailReason::Caller
    }));
    let out = p.recv_all();
    assert!(out.iter().all(|(_, s)| s.rst && s.payload.is_empty()));
    assert_eq!(out.len(), 2);
    assert_eq!(
        p.engine.push_piece(p.now, flow, 0, &Pair::body(0..1000)),
        Err(SpliceError::NotAccelerated)
    );
    assert!(p.recv_all().is_empty());
    // Client packets after the reset are absorbed and answered with RSTs.
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let out = p.recv_all();
    assert!(out.len() == 1 && out[0].1.rst);
}

#[test]
fn client_acks_for_unsent_data_and_bad_checksums_are_absorbed() {
    let mut p = accelerated(false, true, true, 100_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..2896))
        .unwrap();
    assert_eq!(p.recv_all().len(), 2);
    // ACK far past what was sent: dropped, ignored.
    assert_eq!(p.client_ack(90_000, 1000).0, Verdict::Drop);
    assert_eq!(p.engine.flow_info(flow).unwrap().delivered, Some(0));
    // A corrupted ACK: dropped without effect.
    let mut pkt = p.build(
        true,
        &Tcp {
            seq: p.client_next(),
            ack: Some(p.body_seq(2896)),
            window: 1000,
            ts: p.client_ts(),
            ..Tcp::default()
        },
    );
    let n = pkt.len();
    pkt[n - 1] ^= 0x55;
    assert_eq!(p.feed(Direction::FromClient, &mut pkt).0, Verdict::Drop);
    assert_eq!(p.engine.flow_info(flow).unwrap().delivered, Some(0));
    assert_eq!(p.client_ack(2896, 1000).0, Verdict::Drop);
    assert_eq!(p.engine.flow_info(flow).unwrap().delivered, Some(2896));
    // Truncated packet of the flow: not parseable, passed on untouched.
    let mut short = pkt[..30].to_vec();
    assert_eq!(
        p.engine
            .handle_packet(p.now, Direction::FromClient, &mut short),
        Verdict::Accept
    );
}

#[test]
fn zero_window_is_probed() {
    let mut p = accelerated(false, true, true, 100_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 0).0, Verdict::Drop);
    let _ = p.recv_all();
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..5000))
        .unwrap();
    assert!(p.recv_all().is_empty(), "zero window: nothing sent");
    let t1 = p.engine.poll_timeout().unwrap();
    p.now = t1;
    p.engine.handle_timeout(t1);
    let out = p.recv_all();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].1.seq, out[0].1.payload.len()), (p.body_seq(0), 1));
    // The client takes the byte and opens its window.
    assert_eq!(p.client_ack(1, 100).0, Verdict::Drop);
    let out = p.recv_all();
    assert!(!out.is_empty());
    assert_eq!(out[0].1.seq, p.body_seq(1));
}

#[test]
fn piece_window_is_bounded() {
    let cfg = EngineConfig {
        buffer_window: 10_000,
        ..EngineConfig::default()
    };
    let mut p = Pair::with_config(false, false, true, cfg);
    let flow = p.open(100_000, 0);
    p.engine.accelerate(p.now, flow, 0).unwrap();
    assert_eq!(p.engine.buffer_room(flow), 10_000);
    assert_eq!(
        p.engine.push_piece(p.now, flow, 5000, &[0; 5001]),
        Err(SpliceError::PieceBeyondWindow { limit: 10_000 })
    );
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..4000))
        .unwrap();
    assert_eq!(p.engine.buffer_room(flow), 6000);
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    assert_eq!(p.client_ack(4000, 1000).0, Verdict::Drop);
    assert_eq!(p.engine.buffer_room(flow), 10_000);
}

#[test]
fn idle_flows_expire_and_the_table_is_bounded() {
    let cfg = EngineConfig {
        max_flows: 2,
        idle_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    };
    let mut p = Pair::with_config(false, false, false, cfg);
    for port in [1000u16, 1001, 1002] {
        p.client.set_port(port);
        let _ = p.send_client(Tcp {
            seq: 1,
            flags: TcpFlags::SYN,
            window: 100,
            syn_opts: true,
            ..Tcp::default()
        });
    }
    assert_eq!(p.engine.flow_count(), 2);
    assert_eq!(p.engine.stats().table_full, 1);
    p.advance(20_000);
    p.engine.handle_timeout(p.now);
    assert_eq!(p.engine.flow_count(), 0);
    assert!(p.engine.poll_timeout().is_none());
}

#[test]
fn client_reset_fails_the_flow_and_resets_the_origin() {
    let mut p = accelerated(false, true, true, 100_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    let _ = p.events();
    let (v, _) = p.send_client(Tcp {
        seq: p.client_next(),
        flags: TcpFlags::RST,
        ..Tcp::default()
    });
    assert_eq!(v, Verdict::Drop);
    assert!(p.events().contains(&Event::Failed {
        flow,
        reason: FailReason::ClientReset
    }));
    let out = p.recv_all();
    assert!(
        out.iter()
            .any(|(to, s)| *to == Destination::ToOrigin && s.rst)
    );
}

#[test]
fn concurrent_flows_are_isolated_and_served_in_turn() {
    let mut p = Pair::new(false, true, true);
    let a_addr = p.client;
    let a = p.open(100_000, 0);
    p.engine.accelerate(p.now, a, 0).unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.events();
    let mut b_addr = p.client;
    b_addr.set_port(40001);
    p.client = b_addr;
    let b = p.open(100_000, 0);
    assert_ne!(a, b);
    p.engine.accelerate(p.now, b, 0).unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.events();
    let mut buf = Vec::new();
    while p.engine.poll_transmit(p.now, &mut buf).is_some() {}
    p.engine
        .push_piece(p.now, a, 0, &Pair::body(0..10_000))
        .unwrap();
    p.engine
        .push_piece(p.now, b, 0, &Pair::body(0..10_000))
        .unwrap();
    let mut order = Vec::new();
    while let Some(t) = p.engine.poll_transmit(p.now, &mut buf) {
        let s = util::parse(&buf);
        let want = if t.flow == a { a_addr } else { b_addr };
        assert_eq!(s.dst, want);
        order.push(t.flow);
    }
    assert_eq!(order.len(), 14);
    // Served in turn, not one flow's burst after the other's.
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    // Failing one leaves the other alone.
    p.engine.fail(p.now, a);
    assert!(p.engine.flow_info(b).unwrap().state == "injecting");
}

/// A flow whose body is fully delivered and acknowledged (FIN included).
fn finished_flow(cfg: EngineConfig) -> Pair {
    let mut p = Pair::with_config(false, true, true, cfg);
    let flow = p.open(3000, 0);
    p.engine.accelerate(p.now, flow, 0).unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..3000))
        .unwrap();
    let _ = p.recv_all();
    assert_eq!(p.client_ack(3001, 1000).0, Verdict::Drop);
    assert!(p.events().contains(&Event::Finished { flow }));
    p
}

#[test]
fn a_client_that_never_closes_idles_out_and_the_origin_is_reset() {
    let cfg = EngineConfig {
        idle_timeout: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let mut p = finished_flow(cfg);
    let flow = p.flow.unwrap();
    assert_eq!(p.engine.flow_info(flow).unwrap().state, "finished");
    let mut origin_rst = false;
    let mut closed = false;
    for _ in 0..50 {
        let Some(t) = p.engine.poll_timeout() else {
            break;
        };
        p.now = p.now.max(t);
        p.engine.handle_timeout(p.now);
        for (to, s) in p.recv_all() {
            assert_eq!(
                to,
                Destination::ToOrigin,
                "the client gets nothing: it has its body"
            );
            origin_rst |= s.rst;
        }
        closed |= p.events().contains(&Event::FlowClosed { flow });
        if closed {
            break;
        }
    }
    assert!(origin_rst && closed);
}

#[test]
fn a_new_request_after_the_body_gets_a_reset() {
    let mut p = finished_flow(EngineConfig::default());
    let ts = p.client_ts();
    let seq = p.client_next();
    let (v, _) = p.send_client(Tcp {
        seq,
        ack: Some(p.body_seq(3001)),
        window: 1000,
        ts,
        payload: b"GET /next HTTP/1.1\r\nHost: o\r\n\r\n".to_vec(),
        ..Tcp::default()
    });
    assert_eq!(v, Verdict::Drop);
    let out = p.recv_all();
    assert!(
        out.iter()
            .any(|(to, s)| *to == Destination::ToClient && s.rst),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|(to, s)| *to == Destination::ToOrigin && s.rst),
        "{out:?}"
    );
}

#[test]
fn an_origin_reset_before_the_cut_is_done_fails_the_flow() {
    let mut p = accelerated(false, true, true, 50_000, 0, 10_000);
    let flow = p.flow.unwrap();
    let (v, _) = p.send_origin(Tcp {
        seq: p.body_seq(2000),
        flags: TcpFlags::RST,
        ..Tcp::default()
    });
    assert_eq!(v, Verdict::Drop);
    assert!(p.events().contains(&Event::Failed {
        flow,
        reason: FailReason::OriginReset
    }));
    let out = p.recv_all();
    assert!(
        out.iter()
            .any(|(to, s)| *to == Destination::ToClient && s.rst)
    );
    assert!(
        out.iter().all(|(to, _)| *to == Destination::ToClient),
        "no RST back to an origin that reset"
    );
}

#[test]
fn an_origin_reset_after_the_cut_is_absorbed() {
    let mut p = accelerated(false, true, true, 50_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    let (v, _) = p.send_origin(Tcp {
        seq: p.body_seq(0),
        flags: TcpFlags::RST,
        ..Tcp::default()
    });
    assert_eq!(v, Verdict::Drop);
    assert_eq!(p.engine.flow_info(flow).unwrap().state, "injecting");
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..3000))
        .unwrap();
    assert!(
        p.recv_all()
            .iter()
            .all(|(to, _)| *to == Destination::ToClient)
    );
}

/// A flight of 10 segments, the retransmission timeout, and the injected
/// TSvals of the original flight and of the retransmission.
fn timed_out_flight() -> (util::Pair, u32, u32) {
    let mut p = accelerated(false, true, true, 1_000_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..50_000))
        .unwrap();
    let out = p.recv_all();
    assert_eq!(out.len(), 10);
    let tv_orig = out[0].1.ts.unwrap().0;
    // No ACK: the timer (initial RTO 1 s) fires and resends segment 0.
    let t = p.engine.poll_timeout().unwrap();
    p.now = t;
    p.engine.handle_timeout(t);
    let out = p.recv_all();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].1.seq, p.body_seq(0));
    let tv_rtx = out[0].1.ts.unwrap().0;
    assert!(
        tv_rtx.wrapping_sub(tv_orig) as i32 >= 1000,
        "TSval moved on"
    );
    (p, tv_orig, tv_rtx)
}

/// A client ACK of body offset `o` echoing `tsecr`.
fn ack_echoing(p: &mut util::Pair, o: u64, tsecr: u32) {
    let seq = p.client_next();
    let ack = p.body_seq(o);
    let tsval = 1000 + p.ms();
    let (v, _) = p.send_client(Tcp {
        seq,
        ack: Some(ack),
        window: 1000,
        ts: Some((tsval, tsecr)),
        ..Tcp::default()
    });
    assert_eq!(v, Verdict::Drop);
}

#[test]
fn a_late_ack_echoing_the_original_tsval_undoes_the_timeout() {
    let (mut p, tv_orig, _) = timed_out_flight();
    let flow = p.flow.unwrap();
    // The ACKs of the original flight were only late (Eifel detection).
    p.advance(100);
    ack_echoing(&mut p, 2896, tv_orig);
    let out = p.recv_all();
    // No go-back-N: new data from where the flight ended, at most
    // min(acked, IW) past it.
    let seqs: Vec<u32> = out.iter().map(|(_, s)| s.seq).collect();
    assert_eq!(seqs, vec![p.body_seq(14_480), p.body_seq(15_928)]);
    let stats = p.engine.stats();
    assert_eq!((stats.timeouts, stats.spurious_timeouts), (1, 1));
    assert_eq!(stats.retransmitted, 1);
    let info = p.engine.flow_info(flow).unwrap();
    assert_eq!((info.timeouts, info.spurious_timeouts), (1, 1));
    // The RTT estimator took the 1.1 s the ACK needed.
    assert!(info.rto.unwrap() > Duration::from_millis(1100), "{info:?}");
}

#[test]
fn an_ack_echoing_the_retransmission_keeps_the_go_back_n() {
    let (mut p, _, tv_rtx) = timed_out_flight();
    p.advance(5);
    ack_echoing(&mut p, 1448, tv_rtx);
    let out = p.recv_all();
    assert!(!out.is_empty());
    assert_eq!(out[0].1.seq, p.body_seq(1448), "go-back-N resends from una");
    assert_eq!(p.engine.stats().spurious_timeouts, 0);
}

// ----- resetting the client after a failure ---------------------------------

/// What a receiver that follows RFC 5961 section 3 (Linux does) makes of
/// an RST, for its `rcv_nxt` and the right edge of its receive window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RstOutcome {
    /// Exactly `rcv_nxt`: the connection is reset.
    Reset,
    /// Elsewhere in the window: a challenge ACK (carrying `rcv_nxt`).
    Challenge,
    /// Outside the window: dropped in silence.
    Ignored,
}

fn rfc5961(rcv_nxt: u32, right_edge: u32, seq: u32) -> RstOutcome {
    if seq == rcv_nxt {
        RstOutcome::Reset
    } else if (seq.wrapping_sub(rcv_nxt) as i32) > 0 && (right_edge.wrapping_sub(seq) as i32) > 0 {
        RstOutcome::Challenge
    } else {
        RstOutcome::Ignored
    }
}

/// Ten injected segments of 1448 bytes (body 0..14480); the engine saw the
/// client acknowledge only the first two.
fn flight_with_stale_ack() -> Pair {
    let mut p = accelerated(false, true, true, 1_000_000, 0, 0);
    let flow = p.flow.unwrap();
    assert_eq!(p.client_ack(0, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    p.engine
        .push_piece(p.now, flow, 0, &Pair::body(0..14_480))
        .unwrap();
    let out = p.recv_all();
    assert_eq!(out.len(), 10);
    assert_eq!(
        out.last().map(|(_, s)| s.seq + s.payload.len() as u32),
        Some(p.body_seq(14_480))
    );
    p.advance(5);
    assert_eq!(p.client_ack(2896, 1000).0, Verdict::Drop);
    let _ = p.recv_all();
    let _ = p.events();
    p
}

/// The RSTs of every round after `fail` (the first at once, the rest on the
/// timer), with challenge ACKs all lost: the client says nothing.
fn rst_rounds_after_fail(p: &mut Pair) -> Vec<Vec<u32>> {
    let flow = p.flow.unwrap();
    p.engine.fail(p.now, flow);
    let mut rounds = Vec::new();
    let take = |p: &mut Pair| {
        let mut round = Vec::new();
        for (to, s) in p.recv_all() {
            if to == Destination::ToClient {
                assert!(s.rst && s.ackf && s.payload.is_empty() && !s.fin, "{s:?}");
                round.push(s.seq);
            } else {
                assert!(s.rst, "only RSTs to the origin: {s:?}");
            }
        }
        round
    };
    rounds.push(take(p));
    while let Some(t) = p.engine.poll_timeout() {
        if t > p.now + Duration::from_secs(5) {
            break; // the linger, not an RST repeat
        }
        p.now = t;
        p.engine.handle_timeout(t);
        let round = take(p);
        if !round.is_empty() {
            rounds.push(round);
        }
    }
    rounds
}

#[test]
fn a_failure_tries_every_place_the_clients_rcv_nxt_can_be() {
    // The client holds some prefix of the ten segments, but every ACK past
    // 2896 was lost: its rcv_nxt is one of the segment ends from 2896 to
    // 14480, and an RST elsewhere does not reset it (RFC 5961).
    let mut p = flight_with_stale_ack();
    let rounds = rst_rounds_after_fail(&mut p);
    assert_eq!(rounds.len(), 4, "one round at the failure, three repeats");
    for r in &rounds {
        assert!(!r.is_empty() && r.len() <= 16, "{r:?}");
        // Best guess first, then the highest byte sent, then the one below.
        assert_eq!(r[0], p.body_seq(2896));
        assert_eq!(r[1], p.body_seq(14_480));
        assert_eq!(r[2], p.body_seq(14_479));
    }
    let all: Vec<u32> = rounds.concat();
    for k in 2..=10u64 {
        let rcv_nxt = p.body_seq(k * 1448);
        assert!(
            all.contains(&rcv_nxt),
            "no RST at rcv_nxt = body {}: {all:?}",
            k * 1448
        );
    }
    // The boundaries between come from both ends alternately, all in the
    // first round.
    assert_eq!(
        rounds[0][3..],
        [4344, 13_032, 5792, 11_584, 7240, 10_136, 8688].map(|o| p.body_seq(o))
    );
}

#[test]
fn a_failure_resets_a_client_that_holds_everything_in_the_first_round() {
    // The sim's regression (client ACK and its challenge ACK both lost):
    // the client holds every injected byte, so the round's second RST is
    // exact, whatever the engine last heard.
    let mut p = flight_with_stale_ack();
    let rcv_nxt = p.body_seq(14_480);
    let right_edge = rcv_nxt.wrapping_add(64_000);
    let rounds = rst_rounds_after_fail(&mut p);
    let outcomes: Vec<RstOutcome> = rounds[0]
        .iter()
        .map(|s| rfc5961(rcv_nxt, right_edge, *s))
        .collect();
    assert_eq!(outcomes[0], RstOutcome::Ignored, "the stale guess");
    assert_eq!(outcomes[1], RstOutcome::Reset);
}

#[test]
fn a_client_missing_a_segment_is_reset_or_challenged_in_every_round() {
    // Segment 6 (8688..10136) was lost: the client's rcv_nxt is 8688, the
    // right edge of its window is the end of what was sent.
    let mut p = flight_with_stale_ack();
    let rcv_nxt = p.body_seq(8688);
    let right_edge = p.body_seq(14_480);
    let rounds = rst_rounds_after_fail(&mut p);
    for r in &rounds {
        let outcomes: Vec<RstOutcome> =
            r.iter().map(|s| rfc5961(rcv_nxt, right_edge, *s)).collect();
        assert!(
            outcomes.contains(&RstOutcome::Reset) || outcomes.contains(&RstOutcome::Challenge),
            "{outcomes:?}"
        );
    }
    assert_eq!(
        rfc5961(rcv_nxt, right_edge, rounds[0][2]),
        RstOutcome::Challenge,
        "the byte below the highest is inside the window"
    );
    assert!(rounds[0].contains(&rcv_nxt), "exact in the first round");
}

#[test]
fn a_challenge_ack_is_answered_at_once_at_its_number() {
    let mut p = flight_with_stale_ack();
    let flow = p.flow.unwrap();
    p.engine.fail(p.now, flow);
    let _ = p.recv_all();
    // The client's challenge ACK tells its rcv_nxt exactly.
    p.advance(3);
    assert_eq!(p.client_ack(11_584, 1000).0, Verdict::Drop);
    let out = p.recv_all();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, Destination::ToClient);
    assert!(out[0].1.rst && out[0].1.payload.is_empty());
    assert_eq!(out[0].1.seq, p.body_seq(11_584));
    // The next timed round starts from it too.
    let t = p.engine.poll_timeout().unwrap();
    p.now = t;
    p.engine.handle_timeout(t);
    let out: Vec<u32> = p
        .recv_all()
        .into_iter()
        .filter(|(to, _)| *to == Destination::ToClient)
        .map(|(_, s)| s.seq)
        .collect();
    assert_eq!(out.first(), Some(&p.body_seq(11_584)));
    assert_eq!(out.get(1), Some(&p.body_seq(14_480)));
    // Nothing below the client's ACK any more.
    assert_eq!(
        out.len(),
        4,
        "exact, highest, below it, one boundary: {out:?}"
    );
}

#[test]
fn rsts_to_the_client_after_a_failure_are_bounded() {
    // Documented bound: 4 rounds of at most 16, plus 8 answers.
    let mut p = flight_with_stale_ack();
    let flow = p.flow.unwrap();
    p.engine.fail(p.now, flow);
    let mut to_client = 0;
    let mut to_origin = 0;
    for i in 0..2000u64 {
        if i % 10 == 0 {
            if let Some(t) = p.engine.poll_timeout() {
                p.now = p.now.max(t);
                p.engine.handle_timeout(p.now);
            }
        }
        // The client keeps acknowledging (as a confused or hostile one would).
        let _ = p.client_ack(2896 + (i % 8) * 1448, 1000);
        for (to, s) in p.recv_all() {
            assert!(s.rst && s.payload.is_empty(), "{s:?}");
            match to {
                Destination::ToClient => to_client += 1,
                Destination::ToOrigin => to_origin += 1,
            }
        }
        p.advance(7);
    }
    assert!(to_client <= 4 * 16 + 8, "{to_client} RSTs to the client");
    assert!(to_client >= 4 * 3, "{to_client}");
    assert_eq!(to_origin, 3, "the origin's RST and its two repeats");
}

#[test]
fn origin_segments_the_client_may_hold_are_candidates_too() {
    // Before the decision the origin's segments pass whole, past the cut
    // too: the client's rcv_nxt can be the end of any of them (the session-4
    // hunt found one at such a boundary, not an injected one).
    let mut p = Pair::new(false, true, true);
    let flow = p.open(100_000, 0);
    for (a, b) in [(0, 1448), (1448, 2896), (2896, 4344)] {
        assert_eq!(p.origin_data(a, b).0, Verdict::Accept);
    }
    assert_eq!(p.engine.accelerate(p.now, flow, 1000).unwrap(), 1000);
    let _ = p.recv_all();
    let rounds = rst_rounds_after_fail(&mut p);
    let all: Vec<u32> = rounds.concat();
    // The client acknowledged nothing of the body; it may hold the head
    // only, or any prefix of the three segments.
    for o in [0, 1448, 2896, 4344] {
        assert!(all.contains(&p.body_seq(o)), "body {o}: {all:?}");
    }
    assert_eq!(rounds[0][1], p.body_seq(4344), "the highest byte sent");
}
