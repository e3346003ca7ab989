//! Prints the planner simulation tables: completion time against the ideal
//! for both policies and both advertisement rules on the standard
//! scenarios, and session negotiation over random meshes.
//!
//! `cargo run -p tandem-plan --example plansim [size_mib]`

use tandem_plan::sim::{MeshConfig, run_download, run_mesh, standard_scenarios};
use tandem_plan::{AdvertRule, PlannerConfig, Policy};

fn main() {
    let size_mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let size = size_mib << 20;
    let config = PlannerConfig::default();
    println!(
        "# Downloads of {size_mib} MiB, A uplink 20 Mbit/s, WAN 10 ms one way, mesh links 54 Mbit/s / 2 ms unless named"
    );
    println!(
        "{:<32} {:>8} | {:>17} {:>17} | {:>17} {:>17} | {:>6} {:>5} {:>5} {:>9}",
        "scenario",
        "ideal s",
        "dyn+capped s (eff)",
        "dyn+avg s (eff)",
        "prop+capped s (eff)",
        "prop+avg s (eff)",
        "dups",
        "stall",
        "dupMiB",
        "peakMiB"
    );
    for sc in standard_scenarios(size) {
        let mut cells = Vec::new();
        let mut extra = String::new();
        for policy in [Policy::Dynamic, Policy::Proportional] {
            for rule in [AdvertRule::CappedSum, AdvertRule::Average] {
                let r = run_download(&sc, policy, rule, &config);
                let cell = match r.completion {
                    Some(c) => format!(
                        "{:>8.3} ({:>5.1}%)",
                        c.as_secs_f64(),
                        100.0 * r.efficiency()
                    ),
                    None => "   did not finish".to_string(),
                };
                cells.push(cell);
                if policy == Policy::Dynamic && rule == AdvertRule::CappedSum {
                    extra = format!(
                        "{:>6} {:>5} {:>6.2} {:>9.2}",
                        r.stats.duplicates_assigned,
                        r.stats.stalls,
                        r.stats.redundant_bytes as f64 / (1 << 20) as f64,
                        r.peak_buffer as f64 / (1 << 20) as f64
                    );
                }
            }
        }
        println!(
            "{:<32} {:>8.3} | {:>17} {:>17} | {:>17} {:>17} | {}",
            sc.name,
            sc.ideal().as_secs_f64(),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            extra
        );
    }
    println!();
    println!("# Session negotiation over random geometric meshes (avg degree 6, depth limit 3)");
    println!(
        "{:>7} {:>6} {:>6} {:>8} {:>6} {:>9} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8}",
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
    for routers in [100usize, 1000] {
        for seed in 1..=3u64 {
            let r = run_mesh(MeshConfig {
                routers,
                avg_degree: 6.0,
                depth_limit: 3,
                seed,
            });
            println!(
                "{:>7} {:>6} {:>6} {:>8} {:>6} {:>9} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>9} {:>8}",
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
