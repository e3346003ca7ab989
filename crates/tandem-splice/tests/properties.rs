//! Property tests: random seeds and knobs over the smoltcp simulation, and
//! random/mutated packets against an engine in every state (no panic, and
//! nothing but well-formed packets out).

#![allow(clippy::unwrap_used)]

mod sim;
mod util;

use std::time::Duration;

use proptest::prelude::*;
use sim::{SimConfig, assert_complete, assert_reset, run};
use tandem_splice::{Direction, EngineConfig};
use util::{Pair, Tcp};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sim_config() -> impl Strategy<Value = SimConfig> {
    sim_config_withholding(0.15)
}

/// Random simulation knobs; a piece is withheld with probability
/// `withhold_p` (when it lies past the cut).
fn sim_config_withholding(withhold_p: f64) -> impl Strategy<Value = SimConfig> {
    (
        any::<u64>(),
        any::<bool>(),
        1u64..300_000,
        0.0f64..1.0,
        prop_oneof![Just(536u16), Just(1460u16), 600u16..1460],
        prop_oneof![Just(4096usize), Just(65_536), Just(1 << 20)],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0.0f64), 0.0f64..0.05],
        prop_oneof![Just(0.0f64), 0.0f64..0.1],
        prop_oneof![Just(0.0f64), 0.0f64..0.1],
        (
            1u64..5,
            1usize..64_000,
            prop::option::weighted(withhold_p, 0.0f64..1.0),
        ),
    )
        .prop_map(
            |(
                seed,
                ipv6,
                body_len,
                cut_frac,
                client_mss,
                client_rx,
                timestamps,
                sack,
                loss,
                reorder,
                dup,
                (delay_ms, piece, withhold),
            )| {
                let cut = ((body_len as f64) * cut_frac) as u64;
                // A withheld piece must lie past the cut to matter.
                let withhold = withhold
                    .map(|f| cut + ((body_len - cut) as f64 * f) as u64)
                    .filter(|w| *w < body_len && *w >= cut + piece as u64);
                SimConfig {
                    seed,
                    ipv6,
                    body_len,
                    cut,
                    client_mss,
                    client_rx,
                    timestamps,
                    sack,
                    loss,
                    reorder,
                    dup,
                    delay: Duration::from_millis(delay_ms),
                    piece,
                    withhold,
                    avoid_seq_wrap: true,
                    ..SimConfig::default()
                }
            },
        )
}

proptest! {
    // PROPTEST_CASES=2000 for a longer hunt.
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    #[test]
    fn random_downloads_deliver_exactly_the_body_or_reset(cfg in sim_config()) {
        let r = run(&cfg);
        if cfg.withhold.is_some() && !r.finished {
            assert_reset(&cfg, &r);
        } else {
            // A withheld piece may still not matter: the engine moved the
            // cut past it (the client had already acknowledged it).
            assert_complete(&cfg, &r);
        }
    }
}

proptest! {
    // The failure path alone: a piece past the cut is withheld. The client must
    // end reset within `sim::RESET_WITHIN` of the failure (checked by
    // `assert_reset`), whatever was lost around it.
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn withheld_pieces_always_reset_the_client_in_time(
        cfg in sim_config_withholding(0.99)
            .prop_filter("a piece past the cut is withheld", |c| c.withhold.is_some()),
        strict_rst: bool,
    ) {
        // Half the cases with an RFC 5961 client (as Linux): only the exact
        // RST resets it, an in-window one draws a challenge ACK (which the
        // lossy link may lose).
        let cfg = SimConfig { strict_rst, ..cfg };
        let r = run(&cfg);
        if cfg.withhold.is_some() && !r.finished {
            assert_reset(&cfg, &r);
        } else {
            assert_complete(&cfg, &r);
        }
    }
}

/// Valid packets of a flow in a given state, then mutated.
fn corpus(p: &mut Pair) -> Vec<(bool, Vec<u8>)> {
    let mut v = Vec::new();
    let ts = p.client_ts();
    v.push((
        true,
        p.build(
            true,
            &Tcp {
                seq: p.client_next(),
                ack: Some(p.body_seq(0)),
                window: 100,
                ts,
                sack: vec![(p.body_seq(10), p.body_seq(20))],
                ..Tcp::default()
            },
        ),
    ));
    let ts = p.origin_ts();
    v.push((
        false,
        p.build(
            false,
            &Tcp {
                seq: p.body_seq(0),
                ack: Some(p.client_next()),
                window: 100,
                ts,
                payload: vec![1; 300],
                ..Tcp::default()
            },
        ),
    ));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn mutated_packets_never_panic(
        state in 0u8..4,
        ipv6: bool,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        truncate in any::<prop::sample::Index>(),
        which in any::<prop::sample::Index>(),
        advance in 0u64..5_000,
    ) {
        let mut p = Pair::with_config(ipv6, true, true, EngineConfig { max_retransmits: 2, ..EngineConfig::default() });
        let flow = p.open(50_000, 100);
        if state >= 1 {
            p.engine.accelerate(p.now, flow, 1000).unwrap();
            p.engine.push_piece(p.now, flow, 1000, &Pair::body(1000..20_000)).unwrap();
        }
        if state >= 2 {
            let _ = p.client_ack(1000, 1000);
        }
        if state >= 3 {
            p.engine.fail(p.now, flow);
        }
        let c = corpus(&mut p);
        let (from_client, mut pkt) = c[which.index(c.len())].clone();
        for (at, b) in &edits {
            let i = at.index(pkt.len());
            pkt[i] = *b;
        }
        let keep = truncate.index(pkt.len() + 1);
        pkt.truncate(keep.max(if edits.is_empty() { pkt.len() } else { 0 }));
        let dir = if from_client { Direction::FromClient } else { Direction::FromOrigin };
        p.advance(advance);
        let _ = p.feed_raw(dir, &mut pkt);
        p.engine.handle_timeout(p.now);
        // Whatever comes out is a well-formed packet with valid checksums.
        let _ = p.recv_all();
        let _ = p.events();
    }
}

/// Downloads through a router whose queue delays the client's ACKs (0 to 3
/// spikes, up to 1.5 s), with losses of injected segments and random loss:
/// spurious-timeout detection must never stall a download or corrupt it.
fn spiky_config() -> impl Strategy<Value = SimConfig> {
    (
        any::<u64>(),
        (256u64 * 1024)..(3 << 20),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(None),
            Just(Some(125_000_000u64)),
            Just(Some(12_500_000))
        ],
        prop_oneof![Just(65_536usize), Just(1 << 20)],
        prop::collection::vec((0u64..150, 1u64..40, 100u64..1500), 0..3),
        prop::collection::vec((0u64..400, 1u32..6), 0..3),
        prop_oneof![Just(0.0f64), 0.0f64..0.01],
    )
        .prop_map(
            |(seed, body_len, timestamps, sack, jitter, rate, client_rx, spikes, drops, loss)| {
                SimConfig {
                    seed,
                    body_len,
                    cut: 64 * 1024,
                    client_rx,
                    timestamps,
                    sack,
                    jitter,
                    client_link_rate: rate,
                    loss,
                    delay: Duration::from_millis(1),
                    piece: 64 * 1024,
                    ack_spikes: spikes
                        .into_iter()
                        .map(|(start, len, extra)| sim::AckSpike {
                            start: Duration::from_millis(start),
                            len: Duration::from_millis(len),
                            extra: Duration::from_millis(extra),
                        })
                        .collect(),
                    drop_injected: drops
                        .into_iter()
                        .map(|(at, n)| (Duration::from_millis(at), n))
                        .collect(),
                    avoid_seq_wrap: true,
                    ..SimConfig::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), ..ProptestConfig::default() })]

    #[test]
    fn ack_delay_spikes_never_stall_or_corrupt(cfg in spiky_config()) {
        let r = run(&cfg);
        assert_complete(&cfg, &r);
    }
}
