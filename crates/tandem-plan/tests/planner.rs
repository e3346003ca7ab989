//! Behaviour of the planner through its public API.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use proptest::prelude::*;
use tandem_plan::{
    Assignment, PlanError, PlanEvent, Planner, PlannerConfig, Policy, RangeSet, Rate, SourceId,
    SourceSpec,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn mbit(x: f64) -> Rate {
    Rate::from_mbit(x)
}

fn events(p: &mut Planner) -> Vec<PlanEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn drain(p: &mut Planner, s: SourceId, now: Duration) -> Vec<Assignment> {
    std::iter::from_fn(|| p.next_assignment(s, now)).collect()
}

/// Deliver a whole piece and advance the cursor over the contiguous prefix.
fn deliver(p: &mut Planner, have: &mut RangeSet, a: &Assignment, now: Duration) {
    p.on_piece_data(a.piece, a.range.end - a.range.start, now)
        .unwrap();
    have.insert(a.range.clone());
    let c = have.contiguous_end(p.body().start);
    p.on_delivered(c, now);
}

#[test]
fn neighbour_side_planner_plans_its_range_without_a_cut() {
    // Multi-hop: a neighbour asked for 1 MiB..5 MiB plans with its own sources.
    let mut p = Planner::new(MIB..5 * MIB, PlannerConfig::default()).unwrap();
    let local = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let c = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(24)), ms(0))
        .unwrap();
    assert_eq!(p.requested_cut(ms(0)), None);
    assert_eq!(p.cut(), Some(MIB));
    let mut have = RangeSet::new();
    let mut now = ms(0);
    let mut seen = RangeSet::new();
    while !p.is_complete() {
        now += ms(10);
        let mut batch = drain(&mut p, local, now);
        batch.extend(drain(&mut p, c, now));
        assert!(!batch.is_empty(), "stuck at {}", p.cursor());
        for a in &batch {
            assert!(a.range.start >= MIB && a.range.end <= 5 * MIB, "{a:?}");
            assert!(!a.duplicate);
            assert_eq!(seen.covered_in(&a.range), 0, "overlap {a:?}");
            seen.insert(a.range.clone());
            deliver(&mut p, &mut have, a, now);
        }
    }
    assert_eq!(events(&mut p).last(), Some(&PlanEvent::Complete));
    assert_eq!(p.cursor(), 5 * MIB);
}

#[test]
fn piece_size_follows_rate_and_limits() {
    let cfg = PlannerConfig::default();
    let mut p = Planner::new(0..64 * MIB, cfg.clone()).unwrap();
    let fast = p
        .add_source(SourceSpec::local(mbit(40.0), ms(20)), ms(0))
        .unwrap();
    let slow = p
        .add_source(SourceSpec::peer(mbit(4.0), mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let a = p.next_assignment(fast, ms(0)).unwrap();
    let b = p.next_assignment(slow, ms(0)).unwrap();
    // ~250 ms at the rate: 1.25 MB at 40 Mbit/s, 125 kB at 4 Mbit/s.
    let (la, lb) = (a.range.end - a.range.start, b.range.end - b.range.start);
    assert!(la > 1_000_000 && la <= cfg.max_piece, "{la}");
    assert!((cfg.min_piece..200_000).contains(&lb), "{lb}");
    assert_eq!(b.range.start, a.range.end, "delivery order");
    // Pipeline depth 2, then nothing.
    assert!(p.next_assignment(fast, ms(0)).is_some());
    assert!(p.next_assignment(fast, ms(0)).is_none());
}

#[test]
fn link_cost_caps_a_peer() {
    let mut p = Planner::new(0..64 * MIB, PlannerConfig::default()).unwrap();
    let b = p
        .add_source(SourceSpec::peer(mbit(100.0), mbit(8.0), ms(20)), ms(0))
        .unwrap();
    assert_eq!(p.source_rate(b), Some(mbit(8.0)));
    let a = p.next_assignment(b, ms(0)).unwrap();
    // 250 ms at 8 Mbit/s = 250 kB.
    assert!(a.range.end - a.range.start <= 260_000);
}

#[test]
fn cut_rule_and_local_fetcher_waits_for_the_cut() {
    let mut p = Planner::new(0..32 * MIB, PlannerConfig::default()).unwrap();
    let orig = SourceSpec::original_flow(mbit(20.0), ms(20));
    p.add_source(orig, ms(0)).unwrap();
    let local = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    // No peer: nothing to accelerate with.
    assert_eq!(p.requested_cut(ms(0)), None);
    let b = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(30)), ms(0))
        .unwrap();
    p.on_delivered(100_000, ms(40));
    // cursor + 2.5 MB/s x (30 ms + 20 ms margin) = 100 000 + 125 000.
    let cut = p.requested_cut(ms(40)).unwrap();
    assert_eq!(cut, 225_000);
    assert_eq!(p.requested_cut(ms(50)), Some(cut), "latched");
    assert!(
        p.next_assignment(local, ms(40)).is_none(),
        "local before the cut"
    );
    let first = p.next_assignment(b, ms(40)).unwrap();
    assert_eq!(first.range.start, cut);
    // The engine could only cut later, inside the first piece.
    let actual = cut + 10_000;
    p.set_cut(actual, ms(41)).unwrap();
    assert_eq!(p.set_cut(actual, ms(41)), Err(PlanError::NoCutPending));
    let l = p.next_assignment(local, ms(41)).unwrap();
    assert!(l.range.start >= first.range.end);
}

#[test]
fn an_earlier_actual_cut_leaves_a_gap_that_is_fetched_first() {
    let mut p = Planner::new(0..32 * MIB, PlannerConfig::default()).unwrap();
    p.add_source(SourceSpec::original_flow(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let local = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let b = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(30)), ms(0))
        .unwrap();
    let cut = p.requested_cut(ms(0)).unwrap();
    let _ = p.next_assignment(b, ms(0)).unwrap();
    p.set_cut(cut - 20_000, ms(1)).unwrap();
    let l = p.next_assignment(local, ms(1)).unwrap();
    assert_eq!(l.range, cut - 20_000..cut);
}

#[test]
fn a_later_cut_cancels_pieces_it_covers() {
    let cfg = PlannerConfig {
        min_piece: 16 * KIB,
        ..PlannerConfig::default()
    };
    let mut p = Planner::new(0..32 * MIB, cfg).unwrap();
    p.add_source(SourceSpec::original_flow(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let b = p
        .add_source(SourceSpec::peer(mbit(1.0), mbit(54.0), ms(30)), ms(0))
        .unwrap();
    let cut = p.requested_cut(ms(0)).unwrap();
    let a = p.next_assignment(b, ms(0)).unwrap();
    p.set_cut(a.range.end + 1, ms(1)).unwrap();
    let ev = events(&mut p);
    assert!(
        ev.contains(&PlanEvent::Cancel {
            piece: a.piece,
            source: b,
            range: a.range.clone()
        }),
        "{ev:?} cut {cut}"
    );
}

#[test]
fn stalled_source_loses_its_pieces_and_comes_back_after_backoff() {
    let cfg = PlannerConfig::default();
    let mut p = Planner::new(0..16 * MIB, cfg.clone()).unwrap();
    let a = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let b = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let pb = p.next_assignment(b, ms(0)).unwrap();
    let pa = p.next_assignment(a, ms(0)).unwrap();
    // a delivers, b is silent.
    p.on_piece_data(pa.piece, 1000, ms(30)).unwrap();
    let deadline = p.poll_timeout().unwrap();
    assert_eq!(
        deadline,
        ms(20) + cfg.stall_timeout,
        "b: first byte expected at 20 ms"
    );
    p.handle_timeout(deadline);
    let ev = events(&mut p);
    assert!(
        ev.contains(&PlanEvent::SourceStalled { source: b }),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| matches!(e, PlanEvent::Cancel { piece, .. } if *piece == pb.piece))
    );
    assert_eq!(
        p.on_piece_data(pb.piece, 1, deadline),
        Err(PlanError::UnknownPiece(pb.piece))
    );
    // b's bytes go to a (which keeps delivering), first in delivery order.
    p.on_piece_data(pa.piece, 1000, deadline).unwrap();
    let next = p.next_assignment(a, deadline).unwrap();
    assert_eq!(next.range.start, pb.range.start);
    assert!(p.next_assignment(b, deadline).is_none(), "in backoff");
    let back = deadline + cfg.stall_backoff;
    assert!(p.poll_timeout().unwrap() <= back);
    assert!(p.next_assignment(b, back).is_some(), "after backoff");
}

#[test]
fn failed_piece_goes_back_and_repeated_failures_stall() {
    let mut p = Planner::new(0..16 * MIB, PlannerConfig::default()).unwrap();
    let a = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let b = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let first = p.next_assignment(b, ms(0)).unwrap();
    p.on_piece_data(first.piece, 500, ms(25)).unwrap();
    p.on_piece_failed(first.piece, ms(26)).unwrap();
    let retry = p.next_assignment(a, ms(26)).unwrap();
    assert_eq!(retry.range.start, first.range.start + 500);
    for i in 0..2 {
        let x = p.next_assignment(b, ms(30 + i)).unwrap();
        p.on_piece_failed(x.piece, ms(31 + i)).unwrap();
    }
    assert!(events(&mut p).contains(&PlanEvent::SourceStalled { source: b }));
    assert!(p.next_assignment(b, ms(40)).is_none());
    assert_eq!(p.stats().pieces_failed, 3);
}

#[test]
fn endgame_duplicates_the_slow_tail_and_cancels_the_loser() {
    let cfg = PlannerConfig::default();
    let mut p = Planner::new(0..4 * MIB, cfg).unwrap();
    let fast = p
        .add_source(SourceSpec::local(mbit(40.0), ms(20)), ms(0))
        .unwrap();
    let slow = p
        .add_source(SourceSpec::peer(mbit(4.0), mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let mut have = RangeSet::new();
    let s1 = p.next_assignment(slow, ms(0)).unwrap();
    let mut now = ms(0);
    // The fast source fetches everything else.
    loop {
        now += ms(50);
        let got = drain(&mut p, fast, now);
        if got.is_empty() {
            break;
        }
        for a in &got {
            if a.duplicate {
                // The duplicate of the slow source's piece: deliver it.
                deliver(&mut p, &mut have, a, now);
                let ev = events(&mut p);
                assert!(
                    ev.iter().any(|e| matches!(e, PlanEvent::Cancel { piece, source, .. } if *piece == s1.piece && *source == slow)),
                    "{ev:?}"
                );
                assert!(p.is_complete() || p.stats().duplicates_assigned == 1);
                continue;
            }
            deliver(&mut p, &mut have, a, now);
        }
        // The slow source trickles a little.
        let _ = p.on_piece_data(s1.piece, 1000, now);
    }
    assert!(p.stats().duplicates_assigned >= 1, "{:?}", p.stats());
    assert!(p.is_complete(), "cursor {}", p.cursor());
}

#[test]
fn a_peer_that_cannot_beat_the_others_is_not_delegated_to() {
    // 200 kB left, a local source at 20 Mbit/s and a peer 10 s away.
    let mut p = Planner::new(0..200_000, PlannerConfig::default()).unwrap();
    let local = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let far = p
        .add_source(
            SourceSpec::peer(mbit(20.0), mbit(54.0), Duration::from_secs(10)),
            ms(0),
        )
        .unwrap();
    assert!(p.next_assignment(far, ms(0)).is_none());
    assert_eq!(p.stats().declined, 1);
    assert!(p.next_assignment(local, ms(0)).is_some());
}

#[test]
fn proportional_splits_rounds_by_advertised_rate() {
    let cfg = PlannerConfig {
        policy: Policy::Proportional,
        window: 8 * MIB,
        ..PlannerConfig::default()
    };
    let mut p = Planner::new(0..32 * MIB, cfg).unwrap();
    let a = p
        .add_source(SourceSpec::local(mbit(30.0), ms(20)), ms(0))
        .unwrap();
    let b = p
        .add_source(SourceSpec::peer(mbit(10.0), mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let pa = p.next_assignment(a, ms(0)).unwrap();
    let pb = p.next_assignment(b, ms(0)).unwrap();
    // Rounds of 4 MiB: 3 MiB to the local fetcher first, 1 MiB to b.
    assert_eq!(pa.range, 0..3 * MIB);
    assert_eq!(pb.range, 3 * MIB..4 * MIB);
    assert_eq!(p.next_assignment(a, ms(0)).unwrap().range, 4 * MIB..7 * MIB);
}

#[test]
fn errors_for_misuse_and_misbehaving_sources() {
    assert!(matches!(
        Planner::new(5..5, PlannerConfig::default()),
        Err(PlanError::InvalidBody { .. })
    ));
    let mut p = Planner::new(0..MIB, PlannerConfig::default()).unwrap();
    let a = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let x = p.next_assignment(a, ms(0)).unwrap();
    let len = x.range.end - x.range.start;
    assert_eq!(
        p.on_piece_data(x.piece, len + 1, ms(1)),
        Err(PlanError::Overrun {
            piece: x.piece,
            len,
            reported: len + 1
        })
    );
    assert_eq!(p.stats().bytes_received, 0, "state unchanged by an error");
    assert_eq!(
        p.add_source(SourceSpec::original_flow(mbit(1.0), ms(1)), ms(1)),
        Err(PlanError::LateOriginalFlow)
    );
    assert_eq!(p.set_cut(10, ms(1)), Err(PlanError::NoCutPending));
    assert_eq!(
        p.update_source_rate(SourceId(9), mbit(1.0)),
        Err(PlanError::UnknownSource(SourceId(9)))
    );
    assert!(p.next_assignment(SourceId(9), ms(1)).is_none());
    assert_eq!(p.on_piece_done(tandem_plan::PieceId(999), ms(1)), Ok(()));

    let mut q = Planner::new(0..MIB, PlannerConfig::default()).unwrap();
    q.add_source(SourceSpec::original_flow(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    assert!(matches!(
        q.set_cut(2 * MIB, ms(0)),
        Err(PlanError::CutOutOfRange { .. })
    ));
    let cfg = PlannerConfig {
        max_sources: 1,
        ..PlannerConfig::default()
    };
    let mut r = Planner::new(0..MIB, cfg).unwrap();
    r.add_source(SourceSpec::local(mbit(1.0), ms(1)), ms(0))
        .unwrap();
    assert_eq!(
        r.add_source(SourceSpec::local(mbit(1.0), ms(1)), ms(0)),
        Err(PlanError::TooManySources)
    );
}

#[derive(Debug, Clone)]
enum Op {
    Data { source: u8, bytes: u32 },
    Finish { source: u8 },
    Fail { source: u8 },
    Gone { source: u8 },
    Tick { ms: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 1u32..400_000).prop_map(|(source, bytes)| Op::Data { source, bytes }),
        3 => (0u8..4).prop_map(|source| Op::Finish { source }),
        1 => (0u8..4).prop_map(|source| Op::Fail { source }),
        1 => (1u8..4).prop_map(|source| Op::Gone { source }),
        2 => (1u16..3000).prop_map(|ms| Op::Tick { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever happens, assignments stay inside the body, after the cut,
    /// below cursor + window, and fresh ones never overlap bytes that are
    /// received or held by a live piece.
    #[test]
    fn assignments_respect_the_invariants(
        ops in proptest::collection::vec(op(), 1..120),
        policy in prop_oneof![Just(Policy::Dynamic), Just(Policy::Proportional)],
        cut_delta in 0u64..300_000,
    ) {
        let cfg = PlannerConfig { policy, window: 2 * MIB, ..PlannerConfig::default() };
        let body = 1000..(12 * MIB + 1000);
        let mut p = Planner::new(body.clone(), cfg.clone()).unwrap();
        p.add_source(SourceSpec::original_flow(mbit(20.0), ms(20)), ms(0)).unwrap();
        let mut ids = vec![p.add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0)).unwrap()];
        for r in [5.0, 20.0, 50.0] {
            ids.push(p.add_source(SourceSpec::peer(mbit(r), mbit(54.0), ms(25)), ms(0)).unwrap());
        }
        let mut now = ms(0);
        let cut = p.requested_cut(now).unwrap();
        // Live pieces as the test sees them: (piece, source index, range, received).
        let mut live: Vec<(tandem_plan::PieceId, usize, std::ops::Range<u64>, u64)> = Vec::new();
        let mut have = RangeSet::new();
        let mut cut_set = false;
        for (step, o) in ops.into_iter().enumerate() {
            if step == 3 {
                let actual = (cut + cut_delta).min(body.end);
                p.set_cut(actual, now).unwrap();
                have.insert(body.start..actual);
                cut_set = true;
                while let Some(ev) = p.poll_event() {
                    if let PlanEvent::Cancel { piece, .. } = ev { live.retain(|l| l.0 != piece); }
                }
            }
            match o {
                Op::Data { source, bytes } => {
                    if let Some(l) = live.iter_mut().find(|l| l.1 == source as usize) {
                        let n = (bytes as u64).min(l.2.end - l.2.start - l.3);
                        if n > 0 {
                            p.on_piece_data(l.0, n, now).unwrap();
                            have.insert(l.2.start + l.3..l.2.start + l.3 + n);
                            l.3 += n;
                        }
                    }
                }
                Op::Finish { source } => {
                    if let Some(i) = live.iter().position(|l| l.1 == source as usize) {
                        let l = live[i].clone();
                        let n = l.2.end - l.2.start - l.3;
                        if n > 0 { p.on_piece_data(l.0, n, now).unwrap(); }
                        have.insert(l.2.clone());
                    }
                }
                Op::Fail { source } => {
                    if let Some(i) = live.iter().position(|l| l.1 == source as usize) {
                        p.on_piece_failed(live[i].0, now).unwrap();
                        live.remove(i);
                    }
                }
                Op::Gone { source } => {
                    p.source_gone(ids[source as usize], now).unwrap();
                    live.retain(|l| l.1 != source as usize);
                }
                Op::Tick { ms: d } => {
                    now += ms(d as u64);
                    if p.poll_timeout().is_some_and(|t| t <= now) { p.handle_timeout(now); }
                }
            }
            if cut_set {
                p.on_delivered(have.contiguous_end(body.start), now);
            }
            // Pieces the planner finished or cancelled.
            while let Some(ev) = p.poll_event() {
                if let PlanEvent::Cancel { piece, .. } = ev { live.retain(|l| l.0 != piece); }
            }
            live.retain(|l| l.3 < l.2.end - l.2.start && !have.contains_range(&(l.2.start + l.3..l.2.end)));
            for (i, &sid) in ids.iter().enumerate() {
                while let Some(a) = p.next_assignment(sid, now) {
                    prop_assert!(a.range.start < a.range.end);
                    prop_assert!(a.range.start >= cut, "{:?} before the planned cut {}", a, cut);
                    prop_assert!(a.range.end <= body.end);
                    prop_assert!(a.range.end <= p.cursor() + cfg.window, "{a:?} cursor {}", p.cursor());
                    if !a.duplicate {
                        prop_assert_eq!(have.covered_in(&a.range), 0, "overlaps received: {:?}", a);
                        for l in &live {
                            let un = l.2.start + l.3..l.2.end;
                            prop_assert!(un.end <= a.range.start || a.range.end <= un.start, "overlaps live {:?}: {:?}", l, a);
                        }
                    }
                    live.push((a.piece, i, a.range.clone(), 0));
                }
            }
            prop_assert!(p.buffered() <= cfg.window);
        }
    }
}

#[test]
fn repeated_stalls_back_off_exponentially_with_probation() {
    let cfg = PlannerConfig::default();
    let mut p = Planner::new(0..64 * MIB, cfg.clone()).unwrap();
    let dead = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let mut now = ms(0);
    let mut backoffs = Vec::new();
    for round in 0..6 {
        let got = drain(&mut p, dead, now);
        let expect = if round == 0 { cfg.pipeline_depth } else { 1 };
        assert_eq!(
            got.len(),
            expect,
            "probation after a stall: one piece at a time"
        );
        if round > 0 {
            assert_eq!(got[0].range.end - got[0].range.start, cfg.min_piece);
        }
        // First byte expected at now + rtt; nothing comes.
        let stall_at = p.poll_timeout().unwrap();
        assert_eq!(stall_at, now + ms(20) + cfg.stall_timeout);
        p.handle_timeout(stall_at);
        assert!(events(&mut p).contains(&PlanEvent::SourceStalled { source: dead }));
        assert!(p.next_assignment(dead, stall_at).is_none(), "in backoff");
        let back = p.poll_timeout().unwrap();
        backoffs.push(back - stall_at);
        now = back;
    }
    assert_eq!(backoffs[0], cfg.stall_backoff, "{backoffs:?}");
    assert_eq!(backoffs[1], cfg.stall_backoff * 2, "{backoffs:?}");
    assert!(backoffs.windows(2).all(|w| w[1] >= w[0]), "{backoffs:?}");
    assert_eq!(
        *backoffs.last().unwrap(),
        cfg.max_stall_backoff,
        "{backoffs:?}"
    );
    // Data clears the probation.
    let a = p.next_assignment(dead, now).unwrap();
    p.on_piece_data(a.piece, 1, now + ms(30)).unwrap();
    assert!(p.next_assignment(dead, now + ms(30)).is_some());
}

#[test]
fn a_peer_of_unknown_rate_is_probed() {
    let cfg = PlannerConfig::default();
    let mut p = Planner::new(0..32 * MIB, cfg.clone()).unwrap();
    let b = p
        .add_source(SourceSpec::peer(Rate::ZERO, mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let a = p.next_assignment(b, ms(0)).unwrap();
    assert_eq!(a.range.end - a.range.start, cfg.min_piece);
}

#[test]
fn losing_every_source_is_reported_once() {
    let mut p = Planner::new(0..32 * MIB, PlannerConfig::default()).unwrap();
    p.add_source(SourceSpec::original_flow(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let local = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let b = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let cut = p.requested_cut(ms(0)).unwrap();
    p.set_cut(cut, ms(0)).unwrap();
    let _ = drain(&mut p, b, ms(0));
    p.source_gone(b, ms(1)).unwrap();
    assert!(!events(&mut p).contains(&PlanEvent::SourcesExhausted));
    // The local fetcher takes over b's bytes, first in order.
    assert_eq!(p.next_assignment(local, ms(1)).unwrap().range.start, cut);
    p.source_gone(local, ms(2)).unwrap();
    assert_eq!(events(&mut p), vec![PlanEvent::SourcesExhausted]);
    p.source_gone(local, ms(3)).unwrap();
    assert!(events(&mut p).is_empty());
}

#[test]
fn a_cut_that_overtakes_part_of_a_piece_requests_the_tail_afresh() {
    let mut p = Planner::new(0..32 * MIB, PlannerConfig::default()).unwrap();
    p.add_source(SourceSpec::original_flow(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let b = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(24)), ms(0))
        .unwrap();
    p.requested_cut(ms(0)).unwrap();
    let first = p.next_assignment(b, ms(0)).unwrap();
    let second = p.next_assignment(b, ms(0)).unwrap();
    // 2.5 MB/s x 24 ms = 60 kB: overtaking 100 kB of the second piece is
    // worth a new request; overtaking 10 kB would not be.
    let actual = second.range.start + 100_000;
    p.set_cut(actual, ms(10)).unwrap();
    let ev = events(&mut p);
    for a in [&first, &second] {
        assert!(
            ev.iter()
                .any(|e| matches!(e, PlanEvent::Cancel { piece, .. } if *piece == a.piece)),
            "{ev:?}"
        );
    }
    let again = p.next_assignment(b, ms(10)).unwrap();
    assert_eq!(again.range.start, actual);

    let mut q = Planner::new(0..32 * MIB, PlannerConfig::default()).unwrap();
    q.add_source(SourceSpec::original_flow(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let b = q
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(24)), ms(0))
        .unwrap();
    q.requested_cut(ms(0)).unwrap();
    let first = q.next_assignment(b, ms(0)).unwrap();
    q.set_cut(first.range.start + 10_000, ms(10)).unwrap();
    assert!(
        events(&mut q).is_empty(),
        "a small overlap is fetched again, not re-requested"
    );
}

#[test]
fn policy_setting_spellings() {
    assert_eq!("dynamic".parse::<Policy>(), Ok(Policy::Dynamic));
    assert_eq!("proportional".parse::<Policy>(), Ok(Policy::Proportional));
    assert_eq!(Policy::default(), Policy::Dynamic);
    assert_eq!(Policy::Proportional.to_string(), "proportional");
    assert!("fast".parse::<Policy>().is_err());
}

#[test]
fn extreme_inputs_do_not_panic() {
    let cfg = PlannerConfig {
        window: 0,
        target_piece_time: Duration::ZERO,
        min_piece: 0,
        max_piece: 0,
        pipeline_depth: 0,
        rate_time_constant: Duration::ZERO,
        rate_sample_interval: Duration::ZERO,
        ..PlannerConfig::default()
    };
    let mut p = Planner::new(0..u64::MAX, cfg).unwrap();
    p.add_source(
        SourceSpec::original_flow(Rate::from_bytes_per_sec(f64::MAX), Duration::MAX),
        ms(0),
    )
    .unwrap();
    let b = p
        .add_source(
            SourceSpec::peer(Rate::from_bytes_per_sec(1e300), Rate::ZERO, Duration::MAX),
            ms(0),
        )
        .unwrap();
    let now = Duration::MAX - ms(1);
    p.on_delivered(u64::MAX, now);
    let _ = p.requested_cut(now);
    let _ = p.next_assignment(b, now);
    let _ = p.poll_timeout();
    p.handle_timeout(Duration::MAX);
    if let Some(a) = p.next_assignment(b, Duration::MAX) {
        assert!(p.on_piece_data(a.piece, u64::MAX, Duration::MAX).is_err());
    }
    let _ = p.source_gone(b, Duration::MAX);
    while p.poll_event().is_some() {}
}

#[test]
fn a_silent_holder_is_duplicated_and_stalled_without_waiting_for_the_timer() {
    let cfg = PlannerConfig::default();
    let mut p = Planner::new(0..64 * MIB, cfg.clone()).unwrap();
    let a = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    let dead = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(20)), ms(0))
        .unwrap();
    let d1 = p.next_assignment(dead, ms(0)).unwrap();
    // `dead` delivers 1 kB, then nothing; `a` delivers everything it gets
    // (duplicates included) 50 ms after asking.
    p.on_piece_data(d1.piece, 1000, ms(30)).unwrap();
    let mut have = RangeSet::new();
    have.insert(d1.range.start..d1.range.start + 1000);
    let mut now = ms(0);
    let mut stalled_at = None;
    let mut dups = 0;
    while now < ms(3000) && stalled_at.is_none() {
        let batch = drain(&mut p, a, now);
        let _ = drain(&mut p, dead, now);
        now += ms(50);
        for x in &batch {
            dups += usize::from(x.duplicate);
            deliver(&mut p, &mut have, x, now);
        }
        if events(&mut p).contains(&PlanEvent::SourceStalled { source: dead }) {
            stalled_at = Some(now);
        }
    }
    let at = stalled_at.expect("the dead source is stalled");
    assert!(dups >= 1);
    // Before the stall timer (2 s after its last byte) would have fired.
    assert!(at < ms(30) + cfg.stall_timeout, "{at:?}");
    assert!(
        p.cursor() > d1.range.end,
        "delivery went past the dead piece"
    );
    assert!(
        p.next_assignment(dead, at).is_none(),
        "no fresh work for the dead source"
    );
}

#[test]
fn exhaustion_is_reported_again_after_a_new_source_goes() {
    let mut p = Planner::new(0..MIB, PlannerConfig::default()).unwrap();
    let a = p
        .add_source(SourceSpec::local(mbit(20.0), ms(20)), ms(0))
        .unwrap();
    p.source_gone(a, ms(1)).unwrap();
    assert_eq!(events(&mut p), vec![PlanEvent::SourcesExhausted]);
    let b = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(20)), ms(2))
        .unwrap();
    assert_eq!(p.next_assignment(b, ms(2)).unwrap().range.start, 0);
    p.source_gone(b, ms(3)).unwrap();
    assert_eq!(events(&mut p), vec![PlanEvent::SourcesExhausted]);
}

#[test]
fn a_relay_with_more_depth_gets_more_smaller_pieces() {
    // B relays to a sub-delegate: it commits 40 Mbit/s over two uplinks and
    // works on four pieces at once; C is a plain 20 Mbit/s neighbour.
    let mut p = Planner::new(0..64 * MIB, PlannerConfig::default()).unwrap();
    let b = p
        .add_source(
            SourceSpec {
                depth: Some(4),
                ..SourceSpec::peer(mbit(40.0), mbit(54.0), ms(40))
            },
            ms(0),
        )
        .unwrap();
    let c = p
        .add_source(SourceSpec::peer(mbit(20.0), mbit(54.0), ms(40)), ms(0))
        .unwrap();
    let at_b = drain(&mut p, b, ms(0));
    let at_c = drain(&mut p, c, ms(0));
    assert_eq!(at_b.len(), 4, "B works on four pieces");
    assert_eq!(at_c.len(), 2, "C on the default pipeline depth");
    // Each of B's pieces is sized for half of B's rate, like C's.
    let len = |a: &Assignment| a.range.end - a.range.start;
    for a in &at_b {
        let ratio = len(a) as f64 / len(&at_c[0]) as f64;
        assert!(
            (0.8..=1.25).contains(&ratio),
            "{} vs {}",
            len(a),
            len(&at_c[0])
        );
    }
    // A depth beyond the cap is capped.
    let mut p = Planner::new(0..64 * MIB, PlannerConfig::default()).unwrap();
    let big = p
        .add_source(
            SourceSpec {
                depth: Some(1000),
                ..SourceSpec::peer(mbit(40.0), mbit(54.0), ms(40))
            },
            ms(0),
        )
        .unwrap();
    assert_eq!(
        drain(&mut p, big, ms(0)).len(),
        tandem_plan::MAX_SOURCE_DEPTH
    );
}
