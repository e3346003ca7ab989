//! Fixed simulation cases: the engine between two smoltcp TCP stacks (see
//! `sim/mod.rs`). Every case checks the client read exactly the body (or,
//! with a withheld piece, a correct prefix and a reset), a clean close, and
//! that the origin was stopped.

mod sim;

use std::time::Duration;

use sim::{SimConfig, assert_complete, assert_reset, run};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

#[track_caller]
fn case(cfg: SimConfig) -> sim::SimReport {
    let r = run(&cfg);
    if cfg.withhold.is_some() {
        assert_reset(&cfg, &r)
    } else {
        assert_complete(&cfg, &r)
    }
    r
}

fn lossy(loss: f64) -> SimConfig {
    SimConfig {
        loss,
        body_len: 512 * KIB,
        ..SimConfig::default()
    }
}

#[test]
fn basic_ipv4() {
    let r = case(SimConfig::default());
    assert_eq!(r.cut, Some(100_000));
}

#[test]
fn basic_ipv6() {
    case(SimConfig {
        ipv6: true,
        ..SimConfig::default()
    });
}

#[test]
fn cut_at_zero() {
    // The engine moves the cut to what the client already acknowledged.
    let r = case(SimConfig {
        cut: 0,
        ..SimConfig::default()
    });
    assert!(r.cut.is_some());
}

#[test]
fn cut_in_the_middle_of_a_segment() {
    // Segments carry 1448 bytes (1460 - timestamps); the head is ~150
    // bytes: offset 5000 + 777 is inside a segment.
    case(SimConfig {
        cut: 5777,
        body_len: 64 * KIB,
        ..SimConfig::default()
    });
}

#[test]
fn cut_at_the_last_byte() {
    let n = 200 * KIB;
    case(SimConfig {
        cut: n - 1,
        body_len: n,
        ..SimConfig::default()
    });
}

#[test]
fn cut_at_the_end_only_fin_is_injected() {
    let n = 100 * KIB;
    case(SimConfig {
        cut: n,
        body_len: n,
        ..SimConfig::default()
    });
}

#[test]
fn body_1kib() {
    case(SimConfig {
        body_len: KIB,
        cut: 10,
        ..SimConfig::default()
    });
}

#[test]
fn body_1mib() {
    case(SimConfig {
        body_len: MIB,
        cut: 64 * KIB,
        ..SimConfig::default()
    });
}

#[test]
fn body_64mib_large_scaled_window() {
    case(SimConfig {
        body_len: 64 * MIB,
        cut: 3 * MIB + 17,
        client_rx: 2 * 1024 * 1024,
        piece: 256 * 1024,
        delay: Duration::from_millis(1),
        ..SimConfig::default()
    });
}

/// Regression (daemon, unshaped and 100 Mbit/s testbeds, HEAD 266071e): the
/// daemon's planner keeps its sources within a window past the client's
/// progress, and the daemon learnt that progress only when the next piece
/// arrived. Once the window was full no piece came, so no progress was
/// learnt: the download stalled for good at cut + window. The engine now
/// reports progress itself (`Event::Progress`); a driver paced by those
/// events alone (a window much smaller than the body) must finish, with
/// lossy links too.
#[test]
fn paced_by_progress_events_alone_finishes() {
    for (seed, loss) in [(1, 0.0), (2, 0.01)] {
        let cfg = SimConfig {
            seed,
            loss,
            body_len: 4 * MIB,
            cut: 200 * KIB,
            client_rx: 1024 * 1024,
            piece: 64 * 1024,
            delay: Duration::from_millis(1),
            pace_window: Some(256 * KIB),
            engine: tandem_splice::EngineConfig {
                progress_step: Some(32 * KIB),
                ..tandem_splice::EngineConfig::default()
            },
            ..SimConfig::default()
        };
        let r = case(cfg.clone());
        let cut = r.cut.unwrap();
        assert!(
            r.progress.windows(2).all(|w| w[0] < w[1]),
            "progress not increasing: {:?}",
            r.progress
        );
        assert_eq!(r.progress.last(), Some(&cfg.body_len), "last progress");
        assert!(r.progress.first().is_some_and(|&p| p > cut));
        // At most one event per step (plus the one at the end).
        let max_events = (cfg.body_len - cut) / (32 * KIB) + 1;
        assert!(
            r.progress.len() as u64 <= max_events,
            "{} events",
            r.progress.len()
        );
    }
}

/// Without `progress_step` the engine emits no progress events (drivers
/// that do not want them pay nothing).
#[test]
fn no_progress_events_by_default() {
    let r = case(SimConfig::default());
    assert!(r.progress.is_empty());
}

#[test]
fn loss_1_percent() {
    for seed in 1..=3 {
        case(SimConfig {
            seed,
            ..lossy(0.01)
        });
    }
}

#[test]
fn loss_5_percent() {
    for seed in 1..=3 {
        case(SimConfig {
            seed,
            ..lossy(0.05)
        });
    }
}

#[test]
fn loss_5_percent_without_sack() {
    for seed in 4..=5 {
        case(SimConfig {
            seed,
            sack: false,
            ..lossy(0.05)
        });
    }
}

#[test]
fn reordering() {
    case(SimConfig {
        reorder: 0.1,
        body_len: 512 * KIB,
        ..SimConfig::default()
    });
}

#[test]
fn duplication() {
    case(SimConfig {
        dup: 0.1,
        body_len: 512 * KIB,
        ..SimConfig::default()
    });
}

#[test]
fn loss_reorder_and_duplication_together() {
    case(SimConfig {
        loss: 0.02,
        reorder: 0.05,
        dup: 0.05,
        body_len: 512 * KIB,
        seed: 9,
        ..SimConfig::default()
    });
}

#[test]
fn small_client_window_4kib() {
    case(SimConfig {
        client_rx: 4096,
        body_len: 256 * KIB,
        ..SimConfig::default()
    });
}

#[test]
fn small_window_with_loss() {
    case(SimConfig {
        client_rx: 4096,
        loss: 0.05,
        body_len: 128 * KIB,
        cut: 30_000,
        ..SimConfig::default()
    });
}

#[test]
fn timestamps_off() {
    case(SimConfig {
        timestamps: false,
        ..SimConfig::default()
    });
}

#[test]
fn timestamps_off_with_loss() {
    case(SimConfig {
        timestamps: false,
        ..lossy(0.03)
    });
}

#[test]
fn sack_off() {
    case(SimConfig {
        sack: false,
        ..SimConfig::default()
    });
}

#[test]
fn mss_536() {
    case(SimConfig {
        client_mss: 536,
        ..SimConfig::default()
    });
}

#[test]
fn mss_536_ipv6_lossy_no_sack() {
    case(SimConfig {
        client_mss: 536,
        ipv6: true,
        sack: false,
        ..lossy(0.03)
    });
}

#[test]
fn ipv6_lossy_reordered_small_window() {
    case(SimConfig {
        ipv6: true,
        client_rx: 4096,
        reorder: 0.05,
        ..lossy(0.02)
    });
}

#[test]
fn small_buffer_window_back_pressure() {
    // The engine holds at most 64 KiB of pieces; the harness must wait.
    let mut cfg = SimConfig {
        body_len: MIB,
        ..SimConfig::default()
    };
    cfg.engine.buffer_window = 64 * 1024;
    case(cfg);
}

#[test]
fn withheld_piece_resets_the_client() {
    case(SimConfig {
        withhold: Some(150_000),
        ..SimConfig::default()
    });
}

#[test]
fn withheld_piece_with_loss_ipv6() {
    case(SimConfig {
        withhold: Some(300_000),
        ipv6: true,
        ..lossy(0.05)
    });
}

#[test]
fn withheld_first_piece_after_the_cut() {
    case(SimConfig {
        withhold: Some(100_000),
        ..SimConfig::default()
    });
}

#[test]
fn regression_window_exactly_full_at_the_cut() {
    // Found by the property test: 4 KiB client window, body one byte longer
    // than the window can hold with the head, cut at 0, tiny pieces.
    case(SimConfig {
        seed: 3105203938383688540,
        body_len: 4097,
        cut: 0,
        client_rx: 4096,
        timestamps: false,
        sack: false,
        delay: Duration::from_millis(1),
        piece: 48,
        ..SimConfig::default()
    });
}

#[test]
fn regression_ack_of_a_fin_sent_before_an_rto() {
    // Found by the property hunt: the client acknowledged the first FIN
    // after an RTO had scheduled it for retransmission.
    case(SimConfig {
        seed: 8137363624950988200,
        body_len: 282954,
        cut: 55092,
        client_mss: 536,
        client_rx: 1048576,
        timestamps: false,
        loss: 0.027317673555543705,
        dup: 0.057274035935903495,
        delay: Duration::from_millis(4),
        piece: 17528,
        ..SimConfig::default()
    });
}

#[test]
fn regression_lossy_no_sack_mss_536() {
    case(SimConfig {
        seed: 871494491343800026,
        body_len: 74925,
        cut: 12872,
        client_mss: 536,
        client_rx: 1048576,
        timestamps: false,
        sack: false,
        loss: 0.03629969934662788,
        delay: Duration::from_millis(3),
        piece: 12411,
        ..SimConfig::default()
    });
}

#[test]
fn regression_withheld_piece_while_streaming() {
    case(SimConfig {
        seed: 11664215375957756712,
        body_len: 234116,
        cut: 27908,
        client_mss: 536,
        client_rx: 1048576,
        timestamps: false,
        sack: false,
        loss: 0.04495196171149661,
        delay: Duration::from_millis(4),
        piece: 3819,
        withhold: Some(120996),
        limit: Duration::from_secs(100),
        ..SimConfig::default()
    });
}

#[test]
fn regression_paws_with_reordering_during_the_cut() {
    // Found by the property hunt: in-order origin segments raised the
    // client's TS.Recent above injected TSvals.
    case(SimConfig {
        seed: 3164739046236662749,
        body_len: 264955,
        cut: 115316,
        client_mss: 889,
        client_rx: 65536,
        reorder: 0.05475625351418116,
        delay: Duration::from_millis(2),
        piece: 16627,
        ..SimConfig::default()
    });
}

#[test]
fn regression_lost_rst_to_the_origin() {
    // Found by the property hunt: the single RST to the origin was lost.
    case(SimConfig {
        seed: 14682082032768527642,
        body_len: 102471,
        cut: 94124,
        client_rx: 1048576,
        timestamps: false,
        sack: false,
        loss: 0.031035341077468397,
        reorder: 0.024915615632375557,
        delay: Duration::from_millis(1),
        piece: 8347,
        ..SimConfig::default()
    });
}

#[test]
fn regression_origin_bytes_past_the_cut_before_the_decision() {
    // Found by the property hunt: origin segments past the cut that passed
    // before the decision are legitimate (and correct) client bytes.
    case(SimConfig {
        seed: 17375424989101764656,
        body_len: 49479,
        cut: 4465,
        client_rx: 65536,
        timestamps: false,
        sack: false,
        reorder: 0.05383280942163088,
        delay: Duration::from_millis(2),
        piece: 8710,
        withhold: Some(39373),
        ..SimConfig::default()
    });
}

#[test]
fn regression_failed_flow_resets_a_client_whose_last_ack_was_lost() {
    // Found by the 20,000-case property hunt: the client's last ACK before
    // the failure was lost, so the engine's RST carried a stale sequence
    // number (the last ACK it saw). The client answered it with one
    // challenge ACK (RFC 5961), lost too, and ignored the timed repeats at
    // the same stale number: it stayed ESTABLISHED for good. Each RST round
    // now also tries the highest injected sequence number, the byte below
    // it and the segment boundaries in between.
    let cfg = SimConfig {
        seed: 10126970546856170712,
        body_len: 174426,
        cut: 68638,
        client_mss: 536,
        client_rx: 65536,
        timestamps: false,
        sack: false,
        loss: 0.00949677060172634,
        dup: 0.021974467029463988,
        delay: Duration::from_millis(3),
        piece: 15113,
        withhold: Some(145946),
        avoid_seq_wrap: true,
        limit: Duration::from_secs(120),
        ..SimConfig::default()
    };
    let r = case(cfg.clone());
    let (failed, reset) = (r.failed_at.unwrap(), r.client_reset_at.unwrap());
    println!(
        "failed at {failed:?}, client reset {:?} later, {} RSTs to the client",
        reset - failed,
        r.rsts_to_client
    );
    // The same against a client that resets only on the exact number (as
    // Linux does, RFC 5961) and whose challenge ACKs are all lost: the
    // client held one segment past the engine's last view of its ACK, an
    // injected segment boundary the first round tries.
    let r = case(SimConfig {
        strict_rst: true,
        challenges_lost: true,
        ..cfg
    });
    let (failed, reset) = (r.failed_at.unwrap(), r.client_reset_at.unwrap());
    println!(
        "strict: client reset {:?} after the failure, {} RSTs sent, {} not exact",
        reset - failed,
        r.rsts_to_client,
        r.rsts_not_exact
    );
    assert!(r.rsts_not_exact > 0, "{r:?}");
}

// ----- ACK delay spikes (spurious retransmission timeouts) ------------------
//
// Session 3 measured, on a loaded router, client ACKs waiting in the
// NFQUEUE longer than `min_rto` (200 ms): the sender timed out although
// nothing was lost, and the go-back-N resend that followed doubled the
// traffic. These cases delay the client's packets on their way into the
// router's queue (FIFO, nothing lost) and count what the engine resends.

/// A 32 MiB download over a 1 MiB client window, FIFO links and a
/// 1 Gbit/s LAN link to the client (the flight grows to the whole window); spikes given as (start, len,
/// extra) in ms after the cut.
fn spiky(spikes: &[(u64, u64, u64)]) -> SimConfig {
    SimConfig {
        body_len: 32 * MIB,
        cut: 64 * KIB,
        client_rx: MIB as usize,
        piece: 64 * 1024,
        delay: Duration::from_millis(1),
        jitter: false,
        client_link_rate: Some(125_000_000), // 1 Gbit/s
        ack_spikes: spikes
            .iter()
            .map(|&(start, len, extra)| sim::AckSpike {
                start: Duration::from_millis(start),
                len: Duration::from_millis(len),
                extra: Duration::from_millis(extra),
            })
            .collect(),
        ..SimConfig::default()
    }
}

/// Segments the body after the cut needs at the client's MSS.
fn needed_segments(cfg: &SimConfig, r: &sim::SimReport) -> u64 {
    let mss = u64::from(cfg.client_mss) - if cfg.timestamps { 12 } else { 0 };
    (cfg.body_len - r.cut.expect("accelerated")).div_ceil(mss)
}

#[track_caller]
fn spike_case(name: &str, cfg: SimConfig) -> sim::SimReport {
    let r = case(cfg.clone());
    let stats = r.stats.expect("engine stats");
    eprintln!(
        "{name}: needed {} segments, injected {} data segments, {} retransmitted; \
         {} timeouts, {} spurious; RTO after: {:?}; {} client packets spiked, {} injected segments lost",
        needed_segments(&cfg, &r),
        r.data_segments,
        r.retransmitted_segments,
        stats.timeouts,
        stats.spurious_timeouts,
        r.rto_after_spurious,
        r.spiked_packets,
        r.dropped_injected,
    );
    assert!(r.spiked_packets > 0, "the spike hit nothing: {r:?}");
    r
}

/// The spurious timeout cost at most one retransmission burst and the
/// RTT estimator learnt the delay.
#[track_caller]
fn assert_one_spurious_burst(r: &sim::SimReport, delay: Duration, max_rtx: u64) {
    let stats = r.stats.expect("engine stats");
    assert!(stats.timeouts >= 1, "the spike fired the timer: {stats:?}");
    assert!(stats.spurious_timeouts >= 1, "detected: {stats:?}");
    assert!(
        r.retransmitted_segments <= max_rtx,
        "{} segments resent: {r:?}",
        r.retransmitted_segments
    );
    let rto = r.rto_after_spurious[0];
    assert!(rto > delay, "RTO {rto:?} after a {delay:?} spike");
}

/// One 300 ms spike (min_rto 200 ms): the client's ACKs of ~5 ms of
/// transfer arrive 300 ms late, in order, nothing lost. Before the sender
/// detected spurious timeouts this resent the whole flight (366 segments
/// for 23128 needed); now one segment, with and without timestamps (Eifel,
/// F-RTO) and SACK.
#[test]
fn ack_delay_spike_300ms() {
    for (ts, sack) in [(true, true), (false, true), (true, false), (false, false)] {
        let cfg = SimConfig {
            timestamps: ts,
            sack,
            ..spiky(&[(20, 5, 300)])
        };
        let r = spike_case(&format!("spike 300ms ts={ts} sack={sack}"), cfg);
        assert_one_spurious_burst(&r, Duration::from_millis(300), 2);
        assert_eq!(r.stats.expect("engine stats").timeouts, 1);
    }
}

/// A 1 s spike: the timer fires twice (200 ms, then 400 ms backed off)
/// before the late ACKs arrive; each timeout resends the first segment
/// only, and the episode is undone once.
#[test]
fn ack_delay_spike_1s() {
    for ts in [true, false] {
        let cfg = SimConfig {
            timestamps: ts,
            ..spiky(&[(20, 5, 1000)])
        };
        let r = spike_case(&format!("spike 1s ts={ts}"), cfg);
        assert_one_spurious_burst(&r, Duration::from_millis(1000), 3);
    }
}

/// Three spikes 180 ms apart, and a plateau (every ACK 300 ms late for a
/// whole second): the RTO adapted after the first undo, so the later
/// spikes do not fire the timer at all.
#[test]
fn ack_delay_repeated_spikes_and_plateau() {
    for (name, spikes) in [
        ("3 spikes", vec![(20, 5, 300), (200, 5, 300), (380, 5, 300)]),
        ("plateau 1s", vec![(20, 1000, 300)]),
    ] {
        for ts in [true, false] {
            let cfg = SimConfig {
                timestamps: ts,
                ..spiky(&spikes)
            };
            let r = spike_case(&format!("{name} ts={ts}"), cfg);
            assert_one_spurious_burst(&r, Duration::from_millis(300), 2);
            assert_eq!(r.stats.expect("engine stats").timeouts, 1, "{name}: {r:?}");
        }
    }
}

/// Real loss in the same episode: injected segments lost just before the
/// spike (their duplicate ACKs are late too) and during the recovery.
/// The lost segments are resent, the download completes, and nothing
/// else is resent beyond the one spurious retransmission (SACK: one per
/// lost segment; without SACK NewReno resends a few more).
#[test]
fn ack_delay_spike_with_loss() {
    for (drops, lost) in [
        (vec![(19, 3)], 3),
        (vec![(15, 1)], 1),
        (vec![(21, 5)], 5),
        (vec![(19, 3), (320, 5)], 8),
    ] {
        for sack in [true, false] {
            let cfg = SimConfig {
                sack,
                drop_injected: drops
                    .iter()
                    .map(|&(at, n)| (Duration::from_millis(at), n))
                    .collect(),
                ..spiky(&[(20, 5, 300)])
            };
            let r = spike_case(&format!("spike + drops {drops:?} sack={sack}"), cfg);
            assert_eq!(r.dropped_injected, lost);
            assert!(
                r.retransmitted_segments >= lost,
                "the losses were resent: {r:?}"
            );
            assert_one_spurious_burst(&r, Duration::from_millis(300), 2 * lost + 1);
        }
    }
}

/// Without timestamps F-RTO decides by the order of the ACKs: late
/// duplicate ACKs of a loss before the spike make it fall back to the
/// conventional go-back-N (no spurious verdict), which still completes.
#[test]
fn ack_delay_spike_with_loss_without_timestamps_falls_back() {
    let cfg = SimConfig {
        timestamps: false,
        drop_injected: vec![(Duration::from_millis(15), 1)],
        ..spiky(&[(20, 5, 300)])
    };
    let r = spike_case("spike + loss, no timestamps", cfg);
    let stats = r.stats.expect("engine stats");
    assert_eq!((stats.timeouts, stats.spurious_timeouts), (1, 0));
    assert!(r.retransmitted_segments >= 1);
}

/// Random loss (1 %) on every hop of the gigabit testbed: every download
/// completes (regression: F-RTO once left the flight without a timer).
#[test]
fn gigabit_link_with_loss() {
    for (seed, ts) in [(1, true), (1, false), (2, true), (3, false)] {
        let cfg = SimConfig {
            seed,
            timestamps: ts,
            loss: 0.01,
            ..spiky(&[])
        };
        let r = case(cfg.clone());
        let stats = r.stats.expect("engine stats");
        eprintln!(
            "1 % loss seed {seed} ts={ts}: needed {}, injected {}, retransmitted {}; {} timeouts, {} spurious",
            needed_segments(&cfg, &r),
            r.data_segments,
            r.retransmitted_segments,
            stats.timeouts,
            stats.spurious_timeouts
        );
    }
}

/// Found by the property hunt: the client (smoltcp 0.12) panics on an
/// integer overflow when it SACKs out-of-order data across the wrap of the
/// origin's sequence numbers (main's sender hits it too). The harness picks
/// another origin seed for such runs (`avoid_seq_wrap`).
#[test]
fn regression_smoltcp_sack_overflow_at_the_sequence_wrap_is_avoided() {
    case(SimConfig {
        seed: 8141400579087229208,
        body_len: 1638401,
        cut: 64 * KIB,
        client_rx: MIB as usize,
        timestamps: false,
        delay: Duration::from_millis(1),
        piece: 64 * 1024,
        drop_injected: vec![(Duration::ZERO, 1)],
        avoid_seq_wrap: true,
        ..SimConfig::default()
    });
}

#[test]
#[ignore = "pre-existing, origin side, not fixed: all three RSTs to the origin lost"]
fn regression_origin_left_established_after_its_rsts_were_lost() {
    // Found by the 20,000-case hunt of session 4 (it fails the same way with
    // the engine before the client-reset change): a download that
    // completes, then the origin's RST and both repeats are lost (3.4 %
    // loss). The closed flow ignores the origin's packets until the linger
    // ends, and the simulated origin (smoltcp, everything acknowledged)
    // sends none: it stays ESTABLISHED. A real origin probes a zero window
    // or closes the idle connection on its own timeout; once the flow has
    // lingered out those packets reach the client, which answers with an
    // RST. Left for the origin side: answer an origin packet to a closed
    // flow with an RST, or more repeats.
    case(SimConfig {
        seed: 5420668584104690558,
        body_len: 33465,
        cut: 3663,
        client_mss: 1460,
        client_rx: 65536,
        timestamps: false,
        sack: true,
        loss: 0.034271029630082765,
        delay: Duration::from_millis(3),
        piece: 2129,
        avoid_seq_wrap: true,
        ..SimConfig::default()
    });
}

#[test]
#[ignore = "pre-existing, not fixed: a stall in RTO backoff ends in the idle timeout"]
fn regression_idle_timeout_during_rto_backoff_fails_a_lossy_download() {
    // Found by the 20,000-case hunt of session 4 (it fails the same way with
    // the engine before the client-reset change). No piece is withheld, but
    // the head took 17 s through 4.4 % loss and the injected segments after
    // the cut were lost or not acknowledged; the sender backs off to 60 s,
    // the client's only ACK per retransmission is lost three times in a row,
    // and the flow fails by the idle timeout (120 s) at 180 s while the
    // sender is still in backoff. The failure itself is clean (the client
    // is reset 1 ms later, correct bytes only); the property expects a
    // complete download. Left for the sender's owner: the idle timeout
    // should not fire while the sender has a retransmission timer armed.
    case(SimConfig {
        seed: 13938747003425902489,
        body_len: 120602,
        cut: 32112,
        client_mss: 1460,
        client_rx: 1048576,
        timestamps: false,
        sack: true,
        loss: 0.0438762537123548,
        reorder: 0.06632845513357317,
        dup: 0.033453154697048994,
        delay: Duration::from_millis(1),
        piece: 44245,
        avoid_seq_wrap: true,
        ..SimConfig::default()
    });
}

#[test]
fn regression_withheld_piece_the_origin_had_delivered() {
    // Found by the withheld-piece hunt of session 4 (a harness false
    // positive): the origin delivered bytes up to 12092 before the decision,
    // past the whole withheld piece (10603..10830); the engine went on from
    // the client's ACK and the client got the whole body but the FIN (it
    // came out of order); the harness, seeing no progress for 2 s, failed
    // the flow, and the client was reset holding all the (correct) bytes.
    // `assert_reset` allows bytes past the piece when the origin delivered
    // all of it.
    let r = case(SimConfig {
        seed: 12853744849598088613,
        body_len: 15576,
        cut: 9468,
        client_mss: 872,
        client_rx: 65536,
        timestamps: false,
        sack: false,
        loss: 0.02674753124897459,
        dup: 0.02723393804153389,
        delay: Duration::from_millis(1),
        piece: 227,
        withhold: Some(10788),
        avoid_seq_wrap: true,
        ..SimConfig::default()
    });
    assert!(r.origin_body_end >= 10_830, "{r:?}");
}

#[test]
#[ignore = "pre-existing, not fixed: retransmission limit reached before the cut is done"]
fn regression_retransmit_limit_while_the_origin_is_slow_to_reach_the_cut() {
    // Found by the 20,000-case hunt of session 4 (it fails the same way with
    // the engine before the client-reset change). No piece is withheld. The
    // simulated client (smoltcp) holds injected segments far past the cut
    // out of order, its reassembler is full and it drops the origin's
    // out-of-order segments before the cut; the simulated origin gets no
    // duplicate ACKs and resends on its 10 s timer, one segment in order per
    // round: the client reaches the cut only after 479 s. Meanwhile the
    // injected segments past the cut time out 12 times in a row (nothing
    // past the cut can be acknowledged yet) and the flow fails by the
    // retransmission limit at 483 s. The failure itself is clean (client
    // reset 3 ms later, correct bytes only). Left for the sender's owner:
    // timeouts while the client's ACK still advances below the cut should
    // not count towards `max_retransmits`.
    case(SimConfig {
        seed: 3365298348951590081,
        body_len: 148251,
        cut: 51656,
        client_mss: 601,
        client_rx: 1048576,
        timestamps: false,
        sack: false,
        loss: 0.023100073355157628,
        reorder: 0.06189626764284822,
        dup: 0.011640948505908017,
        delay: Duration::from_millis(3),
        piece: 313,
        avoid_seq_wrap: true,
        ..SimConfig::default()
    });
}

#[test]
fn regression_strict_client_holding_origin_bytes_past_the_cut() {
    // Found by the withheld-piece hunt with an RFC 5961 client whose
    // challenge ACKs are lost (`strict_rst`): reordering brought the
    // origin's body segments to the router before its head, so they passed
    // (up to 38 KB past the cut) before the decision; the client's rcv_nxt
    // ended at one of those origin segment boundaries (a lost one after
    // it), and its last ACK was lost. The rounds now try the origin's
    // segment ends too (remembered from the SYN on, as stream offsets).
    let r = case(SimConfig {
        seed: 1406355914645088018,
        body_len: 236420,
        cut: 27465,
        client_mss: 874,
        client_rx: 65536,
        timestamps: true,
        sack: false,
        loss: 0.046836947606614714,
        dup: 0.03681459065292271,
        delay: Duration::from_millis(1),
        piece: 16074,
        withhold: Some(109826),
        avoid_seq_wrap: true,
        strict_rst: true,
        challenges_lost: true,
        limit: Duration::from_secs(30),
        ..SimConfig::default()
    });
    assert!(r.rsts_not_exact > 0, "{r:?}");
}

#[test]
fn regression_strict_client_holding_the_whole_body_from_before_the_decision() {
    // Found by the withheld-piece hunt with `strict_rst`: the response head
    // was lost and came last, so the whole body (236 KB) passed before the
    // decision; the client lost a segment at about 174.8 KB (past the cut),
    // its last ACK was lost, and the engine had last seen about 107.9 KB.
    // The rcv_nxt is one of ~45 segment ends in between: the list of 64 ends
    // (the lowest) had dropped it. The ends are now kept as arithmetic runs
    // (one run for the whole in-order body).
    let r = case(SimConfig {
        seed: 7692301452584149836,
        body_len: 236404,
        cut: 170397,
        client_mss: 1460,
        client_rx: 1048576,
        timestamps: false,
        sack: false,
        loss: 0.04543200952523347,
        delay: Duration::from_millis(3),
        piece: 13202,
        withhold: Some(198300),
        avoid_seq_wrap: true,
        strict_rst: true,
        challenges_lost: true,
        limit: Duration::from_secs(30),
        ..SimConfig::default()
    });
    assert!(r.rsts_not_exact > 0, "{r:?}");
}

#[test]
fn regression_strict_client_stopped_at_the_cut() {
    // Found by the withheld-piece hunt with `strict_rst`: 536-byte segments,
    // most of the body passed before the decision, the client's rcv_nxt was
    // exactly the cut (no injected segment reached it in order) and the
    // engine had not seen its ACK of the cut: the cut lay beyond the lowest
    // 52 candidates, the only ones tried then. Each round now tries the
    // cut, and boundaries from both ends of the range.
    let r = case(SimConfig {
        seed: 16974735758753250813,
        body_len: 218863,
        cut: 127452,
        client_mss: 536,
        client_rx: 1048576,
        timestamps: false,
        sack: false,
        loss: 0.03933789145790784,
        dup: 0.025901631909083324,
        delay: Duration::from_millis(4),
        piece: 45706,
        withhold: Some(187331),
        avoid_seq_wrap: true,
        strict_rst: true,
        challenges_lost: true,
        limit: Duration::from_secs(30),
        ..SimConfig::default()
    });
    assert!(r.rsts_not_exact > 0, "{r:?}");
}

#[test]
fn regression_strict_client_answers_with_a_challenge_ack() {
    // Found by the withheld-piece hunt when `strict_rst` dropped every
    // challenge ACK: the client's rcv_nxt lay 36 segments above the last
    // ACK the engine saw and 28 below the highest byte sent, beyond the 48
    // boundaries the rounds try blind. A client that follows RFC 5961
    // answers the in-window RSTs with a challenge ACK; the engine answers
    // that at its number. (With every challenge ACK lost this case stays
    // ESTABLISHED: the documented limit of blind probing.)
    let r = case(SimConfig {
        seed: 15912024416408230905,
        body_len: 223396,
        cut: 183802,
        client_mss: 536,
        client_rx: 1048576,
        timestamps: false,
        sack: true,
        loss: 0.03920114370688053,
        reorder: 0.034976219957801515,
        delay: Duration::from_millis(4),
        piece: 37521,
        withhold: Some(222711),
        avoid_seq_wrap: true,
        strict_rst: true,
        limit: Duration::from_secs(30),
        ..SimConfig::default()
    });
    assert!(r.challenge_acks > 0 && r.rsts_not_exact > 0, "{r:?}");
}
