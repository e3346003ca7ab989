//! The benchmark scenarios: topologies, rates, sizes, the systems compared,
//! and the ideal time each is judged against. Pure data and arithmetic.

use serde::Serialize;

/// Fraction of an HTB rate that is TCP payload: HTB on a veth counts whole
/// Ethernet frames (1514 bytes for a full segment) and a full segment carries
/// 1448 payload bytes (1500 MTU − 20 IP − 20 TCP − 12 timestamp option).
/// The ideal uses these *usable* rates, so 1.0 is reachable in principle.
pub const GOODPUT_FRACTION: f64 = 1448.0 / 1514.0;

/// Which part of the suite a scenario belongs to (`--only`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// 2 routers, 20+20 Mbit/s.
    Two,
    /// 4 routers, one of them 2 hops away.
    Four,
    /// Heterogeneous 20+5 Mbit/s.
    Hetero,
    /// A neighbour whose link drops from 20 to 5 Mbit/s halfway.
    Change,
    /// The mesh link as the bottleneck (neighbour 40, mesh 20).
    Mesh,
    /// Cost rows: ineligible traffic, unshaped throughput, CPU, memory.
    Cost,
}

/// A system compared in an efficiency scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Plain routing through A alone (no daemon, no rules).
    Plain,
    /// MPTCP bonding through an aggregator (OpenMPTCProuter style).
    Mptcp,
    /// tandem with the planner's `proportional` policy (the seed's).
    TandemProportional,
    /// tandem with the planner's `dynamic` policy.
    TandemDynamic,
}

impl System {
    /// Short label for tables and legends.
    pub fn label(self) -> &'static str {
        match self {
            System::Plain => "plain (A alone)",
            System::Mptcp => "MPTCP bonding",
            System::TandemProportional => "tandem proportional",
            System::TandemDynamic => "tandem dynamic",
        }
    }
    /// Machine-friendly name (CSV/JSON).
    pub fn key(self) -> &'static str {
        match self {
            System::Plain => "plain",
            System::Mptcp => "mptcp",
            System::TandemProportional => "tandem-proportional",
            System::TandemDynamic => "tandem-dynamic",
        }
    }
    /// The planner policy name in the daemon config, for tandem systems.
    pub fn policy(self) -> Option<&'static str> {
        match self {
            System::TandemProportional => Some("proportional"),
            System::TandemDynamic => Some("dynamic"),
            _ => None,
        }
    }
}

/// A neighbour's download rate changes during the download.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RateChange {
    /// Router whose downlink is re-shaped.
    pub router: usize,
    /// New rate, Mbit/s.
    pub to_mbit: u64,
}

/// One efficiency scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Short id, used in file names.
    pub id: String,
    /// Title for tables and plots.
    pub title: String,
    /// Group (`--only`).
    pub group: Group,
    /// Routers; A (index 0) has the client.
    pub routers: usize,
    /// Mesh links.
    pub mesh: Vec<(usize, usize)>,
    /// Download rate of each router's uplink, Mbit/s (upload: the same).
    pub down_mbit: Vec<u64>,
    /// Rate of every mesh link, Mbit/s.
    pub mesh_mbit: u64,
    /// One-way WAN delay, ms.
    pub delay_ms: u32,
    /// File sizes, MiB.
    pub sizes_mib: Vec<u64>,
    /// Rate change of a neighbour at half the ideal transfer.
    pub change: Option<RateChange>,
    /// Systems measured, all in the same run.
    pub systems: Vec<System>,
}

impl Scenario {
    /// Usable rate (bit/s of payload) A can draw on with the given per-router
    /// download rates: A's own uplink plus, for each of A's neighbours in a
    /// breadth-first tree of the mesh, what its subtree can bring, capped by
    /// the mesh link it comes over.
    pub fn usable_bps_with(&self, down_mbit: &[u64]) -> f64 {
        let n = self.routers;
        // BFS tree from A.
        let mut parent = vec![usize::MAX; n];
        let mut order = vec![0usize];
        let mut seen = vec![false; n];
        if n > 0 {
            seen[0] = true;
        }
        let mut k = 0;
        while k < order.len() {
            let u = order[k];
            k += 1;
            for &(a, b) in &self.mesh {
                let v = if a == u {
                    b
                } else if b == u {
                    a
                } else {
                    continue;
                };
                if v < n && !seen[v] {
                    seen[v] = true;
                    parent[v] = u;
                    order.push(v);
                }
            }
        }
        // Children before parents: reverse BFS order.
        let mut total: Vec<f64> = (0..n)
            .map(|i| down_mbit.get(i).copied().unwrap_or(0) as f64 * 1e6)
            .collect();
        for &v in order.iter().skip(1).rev() {
            let p = parent[v];
            let brought = total[v].min(self.mesh_mbit as f64 * 1e6);
            total[p] += brought;
        }
        total.first().copied().unwrap_or(0.0) * GOODPUT_FRACTION
    }

    /// Usable rate with the scenario's initial rates.
    pub fn usable_bps(&self) -> f64 {
        self.usable_bps_with(&self.down_mbit)
    }

    /// When the rate change happens, seconds after the download starts: when
    /// half the file would have arrived at the initial usable rate.
    pub fn change_at_s(&self, size: u64) -> Option<f64> {
        self.change
            .map(|_| size as f64 / 2.0 * 8.0 / self.usable_bps().max(1.0))
    }

    /// The rates after the change.
    pub fn changed_rates(&self) -> Vec<u64> {
        let mut r = self.down_mbit.clone();
        if let Some(c) = self.change
            && let Some(x) = r.get_mut(c.router)
        {
            *x = c.to_mbit;
        }
        r
    }

    /// Ideal time for `size` bytes: size / usable rate, or, with a rate
    /// change, the first half at the initial and the second half at the
    /// changed usable rate.
    pub fn ideal_s(&self, size: u64) -> f64 {
        let bits = size as f64 * 8.0;
        match self.change {
            None => bits / self.usable_bps().max(1.0),
            Some(_) => {
                bits / 2.0 / self.usable_bps().max(1.0)
                    + bits / 2.0 / self.usable_bps_with(&self.changed_rates()).max(1.0)
            }
        }
    }
}

/// The efficiency scenarios of the suite; `quick` = smaller sizes.
pub fn scenarios(quick: bool, mptcp: bool) -> Vec<Scenario> {
    let all = |mptcp_ok: bool| {
        let mut v = vec![System::Plain];
        if mptcp && mptcp_ok {
            v.push(System::Mptcp);
        }
        v.extend([System::TandemProportional, System::TandemDynamic]);
        v
    };
    let pick = |full: &[u64], q: &[u64]| if quick { q.to_vec() } else { full.to_vec() };
    vec![
        Scenario {
            id: "two".into(),
            title: "2 routers, 20+20 Mbit/s".into(),
            group: Group::Two,
            routers: 2,
            mesh: vec![(0, 1)],
            down_mbit: vec![20, 20],
            mesh_mbit: 54,
            delay_ms: 10,
            sizes_mib: pick(&[8, 32, 128], &[8, 32]),
            change: None,
            systems: all(true),
        },
        Scenario {
            id: "four".into(),
            title: "4 routers, 4x20 Mbit/s, D 2 hops away (A-B, A-C, B-D)".into(),
            group: Group::Four,
            routers: 4,
            mesh: vec![(0, 1), (0, 2), (1, 3)],
            down_mbit: vec![20, 20, 20, 20],
            mesh_mbit: 54,
            delay_ms: 10,
            sizes_mib: pick(&[32, 128], &[32]),
            change: None,
            // MPTCP reaches only direct neighbours (B, C); it is measured
            // against the same 4-uplink ideal.
            systems: all(true),
        },
        Scenario {
            id: "hetero".into(),
            title: "heterogeneous, A 20 + B 5 Mbit/s".into(),
            group: Group::Hetero,
            routers: 2,
            mesh: vec![(0, 1)],
            down_mbit: vec![20, 5],
            mesh_mbit: 54,
            delay_ms: 10,
            sizes_mib: pick(&[32], &[16]),
            change: None,
            systems: all(true),
        },
        Scenario {
            id: "change".into(),
            title: "B drops from 20 to 5 Mbit/s halfway".into(),
            group: Group::Change,
            routers: 2,
            mesh: vec![(0, 1)],
            down_mbit: vec![20, 20],
            mesh_mbit: 54,
            delay_ms: 10,
            sizes_mib: pick(&[32], &[16]),
            change: Some(RateChange {
                router: 1,
                to_mbit: 5,
            }),
            systems: all(true),
        },
        Scenario {
            id: "mesh".into(),
            title: "mesh bottleneck, A 20 + B 40 Mbit/s over a 20 Mbit/s mesh".into(),
            group: Group::Mesh,
            routers: 2,
            mesh: vec![(0, 1)],
            down_mbit: vec![20, 40],
            mesh_mbit: 20,
            delay_ms: 10,
            sizes_mib: pick(&[32], &[16]),
            change: None,
            systems: all(true),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(id: &str) -> Scenario {
        scenarios(false, true)
            .into_iter()
            .find(|s| s.id == id)
            .unwrap()
    }

    #[test]
    fn ideal_of_two_routers_is_size_over_forty_mbit_of_payload() {
        let s = find("two");
        let ideal = s.ideal_s(32 << 20);
        let want = (32u64 << 20) as f64 * 8.0 / (40e6 * GOODPUT_FRACTION);
        assert!((ideal - want).abs() < 1e-9, "{ideal} vs {want}");
        // The testbed reference (TESTBED.md): 6.7 s for 32 MiB at wire rate.
        assert!((6.7..7.1).contains(&ideal), "{ideal}");
    }

    #[test]
    fn two_hop_router_counts_through_its_parent_mesh_link() {
        let s = find("four");
        assert!((s.usable_bps() - 80e6 * GOODPUT_FRACTION).abs() < 1.0);
        // A mesh slower than B+D caps both together.
        let mut t = s.clone();
        t.mesh_mbit = 30;
        // A 20 + min(30, B 20 + D 20) + min(30, C 20) = 70.
        assert!((t.usable_bps() - 70e6 * GOODPUT_FRACTION).abs() < 1.0);
    }

    #[test]
    fn mesh_bottleneck_caps_the_neighbour() {
        let s = find("mesh");
        assert!((s.usable_bps() - 40e6 * GOODPUT_FRACTION).abs() < 1.0);
    }

    #[test]
    fn rate_change_ideal_is_half_at_each_rate() {
        let s = find("change");
        let size = 32u64 << 20;
        let bits = size as f64 * 8.0;
        let want = bits / 2.0 / (40e6 * GOODPUT_FRACTION) + bits / 2.0 / (25e6 * GOODPUT_FRACTION);
        assert!((s.ideal_s(size) - want).abs() < 1e-9);
        let at = s.change_at_s(size).unwrap();
        assert!((at - bits / 2.0 / (40e6 * GOODPUT_FRACTION)).abs() < 1e-9);
        assert_eq!(s.changed_rates(), vec![20, 5]);
        assert_eq!(find("two").change_at_s(size), None);
    }

    #[test]
    fn every_scenario_compares_all_systems_and_quick_is_smaller() {
        let full = scenarios(false, true);
        let quick = scenarios(true, true);
        for (f, q) in full.iter().zip(&quick) {
            assert_eq!(f.systems.len(), 4, "{}", f.id);
            assert!(q.sizes_mib.iter().sum::<u64>() <= f.sizes_mib.iter().sum::<u64>());
        }
        assert_eq!(find("two").sizes_mib, vec![8, 32, 128]);
        assert!(
            scenarios(false, false)
                .iter()
                .all(|s| !s.systems.contains(&System::Mptcp))
        );
    }
}
