//! Prints the planner simulation tables: completion time against the ideal
//! for both policies and both advertisement rules on the standard
//! scenarios, and session negotiation over random meshes.
//!
//! `cargo run -p tandem-plan --example plansim [size_mib] [sensitivity]`
//! (`sensitivity`: instead, the dynamic policy's efficiency with one
//! setting changed at a time.)

use tandem_plan::sim::{
    MeshConfig, neighbour_side_scenarios, run_download, run_mesh, standard_scenarios,
};
use tandem_plan::{AdvertRule, PlannerConfig, Policy};

const MIB: f64 = (1u64 << 20) as f64;

fn main() {
    let size_mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let size = size_mib << 20;
    let config = PlannerConfig::default();
    if std::env::args().any(|a| a == "sensitivity") {
        sensitivity(size);
        return;
    }
    println!(
        "# Downloads of {size_mib} MiB. A uplink 20 Mbit/s, WAN 10 ms one way, \
         mesh links 54 Mbit/s / 2 ms one way unless named; window {} MiB.",
        config.window >> 20
    );
    println!("# Cells: completion s (ideal / completion). Last columns: dynamic + capped sum.");
    let header = [
        "scenario",
        "ideal s",
        "dyn+capsum",
        "dyn+avg",
        "prop+capsum",
        "prop+avg",
        "cut KiB",
        "dups",
        "stalls",
        "redundMiB",
        "peakMiB",
        "pieces",
    ];
    println!(
        "| {:<34} | {:>7} | {:>17} | {:>17} | {:>17} | {:>17} | {:>7} | {:>4} | {:>6} | {:>9} | {:>7} | {:>6} |",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6],
        header[7],
        header[8],
        header[9],
        header[10],
        header[11]
    );
    for sc in standard_scenarios(size) {
        let mut cells = Vec::new();
        let mut extra = String::new();
        for policy in [Policy::Dynamic, Policy::Proportional] {
            for rule in [AdvertRule::CappedSum, AdvertRule::Average] {
                let r = run_download(&sc, policy, rule, &config);
                cells.push(match r.completion {
                    Some(c) => format!(
                        "{:>8.3} ({:>5.1}%)",
                        c.as_secs_f64(),
                        100.0 * r.efficiency()
                    ),
                    None => "did not finish".to_string(),
                });
                if policy == Policy::Dynamic && rule == AdvertRule::CappedSum {
                    extra = format!(
                        "{:>7} | {:>4} | {:>6} | {:>9.2} | {:>7.2} | {:>6}",
                        r.cut_actual.map_or(0, |c| c >> 10),
                        r.stats.duplicates_assigned,
                        r.stats.stalls,
                        r.stats.redundant_bytes as f64 / MIB,
                        r.peak_buffer as f64 / MIB,
                        r.max_live_pieces
                    );
                }
            }
        }
        println!(
            "| {:<34} | {:>7.3} | {:>17} | {:>17} | {:>17} | {:>17} | {} |",
            sc.name,
            sc.ideal().as_secs_f64(),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            extra
        );
    }
    // Cost of planning: wall-clock time of whole simulated downloads
    // (planner + simulator), so an upper bound of the planner's CPU cost.
    println!();
    for sc in standard_scenarios(size)
        .into_iter()
        .filter(|s| s.name.starts_with("2 routers 20") || s.name.starts_with("8 routers"))
    {
        let started = std::time::Instant::now();
        let r = run_download(&sc, Policy::Dynamic, AdvertRule::CappedSum, &config);
        let took = started.elapsed();
        println!(
            "# cost, {}: {} events, {} pieces, {:.1} ms wall, {:.2} us per event (planner + simulator)",
            sc.name,
            r.steps,
            r.stats.pieces_assigned,
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e6 / r.steps.max(1) as f64
        );
    }
    println!();
    println!(
        "# Neighbour side: one delegated range planned by B with its own uplink and two neighbours (no original flow)."
    );
    println!(
        "| {:<34} | {:>7} | {:>17} | {:>17} |",
        "scenario", "ideal s", "dynamic", "proportional"
    );
    for sc in neighbour_side_scenarios(&[3 << 19, 8 << 20, 32 << 20]) {
        let d = run_download(&sc, Policy::Dynamic, AdvertRule::CappedSum, &config);
        let p = run_download(&sc, Policy::Proportional, AdvertRule::CappedSum, &config);
        let cell = |r: &tandem_plan::sim::DownloadResult| match r.completion {
            Some(c) => format!(
                "{:>8.3} ({:>5.1}%)",
                c.as_secs_f64(),
                100.0 * r.efficiency()
            ),
            None => "did not finish".to_string(),
        };
        println!(
            "| {:<34} | {:>7.3} | {:>17} | {:>17} |",
            sc.name,
            sc.ideal().as_secs_f64(),
            cell(&d),
            cell(&p)
        );
    }
    println!();
    println!(
        "# Session negotiation over random geometric meshes (avg degree 6; depth limit 3, then 6)."
    );
    println!(
        "| {:>7} | {:>4} | {:>5} | {:>8} | {:>5} | {:>8} | {:>6} | {:>9} | {:>8} | {:>11} | {:>10} | {:>8} | {:>8} |",
        "routers",
        "seed",
        "links",
        "involved",
        "depth",
        "refusals",
        "double",
        "settle ms",
        "avg Mbit",
        "capsum Mbit",
        "deliv Mbit",
        "released",
        "leftover"
    );
    for (routers, depth_limit) in [(100usize, 3u32), (1000, 3), (1000, 6)] {
        for seed in 1..=3u64 {
            let r = run_mesh(MeshConfig {
                routers,
                avg_degree: 6.0,
                depth_limit,
                seed,
            });
            println!(
                "| {:>7} | {:>4} | {:>5} | {:>8} | {:>5} | {:>8} | {:>6} | {:>9.1} | {:>8.1} | {:>11.1} | {:>10.1} | {:>8} | {:>8} |",
                r.routers,
                seed,
                r.links,
                r.involved,
                r.tree_depth,
                r.refusals,
                r.double_commitments,
                r.settle_time.as_secs_f64() * 1e3,
                r.advert_average.mbit(),
                r.advert_capped_sum.mbit(),
                r.deliverable.mbit(),
                r.released_by_cancel,
                r.leftover_entries
            );
        }
    }
}

/// Dynamic + capped sum, % of ideal, one setting changed at a time.
fn sensitivity(size: u64) {
    use std::time::Duration;
    let base = PlannerConfig::default();
    let variants: Vec<(&str, PlannerConfig)> = vec![
        ("defaults", base.clone()),
        (
            "target_piece_time 150 ms",
            PlannerConfig {
                target_piece_time: Duration::from_millis(150),
                ..base.clone()
            },
        ),
        (
            "target_piece_time 500 ms",
            PlannerConfig {
                target_piece_time: Duration::from_millis(500),
                ..base.clone()
            },
        ),
        (
            "pipeline_depth 3",
            PlannerConfig {
                pipeline_depth: 3,
                ..base.clone()
            },
        ),
        (
            "window 16 MiB",
            PlannerConfig {
                window: 16 << 20,
                ..base.clone()
            },
        ),
        (
            "window 4 MiB",
            PlannerConfig {
                window: 4 << 20,
                ..base.clone()
            },
        ),
        (
            "endgame_margin 20 ms",
            PlannerConfig {
                endgame_margin: Duration::from_millis(20),
                ..base.clone()
            },
        ),
        (
            "max_copies 3",
            PlannerConfig {
                max_copies: 3,
                ..base.clone()
            },
        ),
    ];
    let scenarios = standard_scenarios(size);
    let mut header = "| setting |".to_string();
    for sc in &scenarios {
        header += &format!(" {} |", sc.name);
    }
    println!("{header}");
    for (name, cfg) in &variants {
        let mut line = format!("| {name} |");
        for sc in &scenarios {
            let r = run_download(sc, Policy::Dynamic, AdvertRule::CappedSum, cfg);
            line += &format!(" {:.1} |", 100.0 * r.efficiency());
        }
        println!("{line}");
    }
}
