//! Cost rows: what the daemon costs traffic it does not accelerate (time of
//! a 1 MiB download below the threshold and time to first byte, daemon
//! running vs not), the unshaped throughput of an accelerated download vs
//! plain forwarding (CPU bound), CPU seconds per GiB, and peak RSS during a
//! large download and during 20 concurrent ones.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tandem_lab::origin::{OriginKind, start_origin};
use tandem_lab::{Rate, Topology, TopologySpec, transfer};

use crate::measure;
use crate::procfs;
use crate::report::median;
use crate::scenario::System;
use crate::systems;

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// Daemon running vs not on a download below the threshold.
#[derive(Clone, Debug, Serialize)]
pub struct Ineligible {
    /// File size, bytes (below `min_size`).
    pub size: u64,
    /// The daemons' `min_size`.
    pub min_size: u64,
    /// Total times without the daemon (and without its rules), s.
    pub off_s: Vec<f64>,
    /// Total times with the daemon running, s.
    pub on_s: Vec<f64>,
    /// Times to first byte without the daemon, s.
    pub off_ttfb_s: Vec<f64>,
    /// Times to first byte with the daemon, s.
    pub on_ttfb_s: Vec<f64>,
    /// median(on) / median(off).
    pub ratio: f64,
    /// median TTFB on − off, ms.
    pub ttfb_added_ms: f64,
}

/// Unshaped, CPU-bound throughput and the daemons' CPU and memory.
#[derive(Clone, Debug, Serialize)]
pub struct Unshaped {
    /// File size, MiB.
    pub size_mib: u64,
    /// Goodput of each plain download, Mbit/s.
    pub plain_mbit: Vec<f64>,
    /// Goodput of each accelerated download, Mbit/s.
    pub tandem_mbit: Vec<f64>,
    /// median(tandem) / median(plain).
    pub ratio: f64,
    /// A's daemon CPU seconds per GiB downloaded (median).
    pub a_cpu_s_per_gib: f64,
    /// B's daemon CPU seconds per GiB it fetched over its uplink (median).
    pub b_cpu_s_per_gib: f64,
    /// Median share of the bytes that entered B's WAN.
    pub b_share: f64,
    /// A's daemon RSS before the downloads, MiB.
    pub a_idle_rss_mib: f64,
    /// A's daemon peak RSS during one download (max over repetitions), MiB.
    pub a_peak_rss_mib: f64,
    /// B's daemon peak RSS during one download, MiB.
    pub b_peak_rss_mib: f64,
}

/// Many concurrent downloads through A with the daemons running.
#[derive(Clone, Debug, Serialize)]
pub struct Concurrent {
    /// Number of downloads.
    pub count: usize,
    /// Size of each, MiB.
    pub size_mib: u64,
    /// Byte-identical downloads.
    pub ok: usize,
    /// Wall time until the last finished, s.
    pub elapsed_s: f64,
    /// Downloads A's daemon accelerated (status `decisions.accelerated`).
    pub accelerated: u64,
    /// A's daemon peak RSS during them, MiB.
    pub a_peak_rss_mib: f64,
    /// B's daemon peak RSS during them, MiB.
    pub b_peak_rss_mib: f64,
    /// Failures, if any.
    pub errors: Vec<String>,
}

/// All cost results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CostResults {
    /// Ineligible-traffic overhead.
    pub ineligible: Option<Ineligible>,
    /// Unshaped throughput, CPU, memory.
    pub unshaped: Option<Unshaped>,
    /// Concurrent downloads.
    pub concurrent: Option<Concurrent>,
    /// Parts that failed.
    pub errors: Vec<String>,
}

impl CostResults {
    /// Printed table.
    pub fn table(&self) -> String {
        let mut s = String::from("\ncost\n");
        if let Some(i) = &self.ineligible {
            let _ = writeln!(
                s,
                "  {} KiB below the threshold ({} MiB), 20 Mbit/s + 10 ms, {} + {} downloads:",
                i.size / 1024,
                i.min_size / MIB,
                i.off_s.len(),
                i.on_s.len()
            );
            let _ = writeln!(
                s,
                "    time      no daemon {:.4} s   daemon {:.4} s   ratio {:.4}  (target <= 1.02)",
                median(&i.off_s),
                median(&i.on_s),
                i.ratio
            );
            let _ = writeln!(
                s,
                "    TTFB      no daemon {:.2} ms  daemon {:.2} ms  added {:+.2} ms  (target <= 1 ms)",
                median(&i.off_ttfb_s) * 1e3,
                median(&i.on_ttfb_s) * 1e3,
                i.ttfb_added_ms
            );
        }
        if let Some(u) = &self.unshaped {
            let _ = writeln!(
                s,
                "  unshaped {} MiB download, no delay (CPU bound):",
                u.size_mib
            );
            let _ = writeln!(
                s,
                "    plain forwarding {:.0} Mbit/s   tandem {:.0} Mbit/s   ratio {:.3}  (target >= 0.5)   B's share {:.0}%",
                median(&u.plain_mbit),
                median(&u.tandem_mbit),
                u.ratio,
                u.b_share * 100.0
            );
            let _ = writeln!(
                s,
                "    CPU  A {:.2} s/GiB downloaded   B {:.2} s/GiB fetched",
                u.a_cpu_s_per_gib, u.b_cpu_s_per_gib
            );
            let _ = writeln!(
                s,
                "    RSS  A idle {:.1} MiB, peak {:.1} MiB (target <= 32 MiB for 1 GiB)   B peak {:.1} MiB",
                u.a_idle_rss_mib, u.a_peak_rss_mib, u.b_peak_rss_mib
            );
        }
        if let Some(c) = &self.concurrent {
            let _ = writeln!(
                s,
                "  {} concurrent {} MiB downloads: {}/{} identical in {:.1} s, {} accelerated; peak RSS A {:.1} MiB, B {:.1} MiB",
                c.count,
                c.size_mib,
                c.ok,
                c.count,
                c.elapsed_s,
                c.accelerated,
                c.a_peak_rss_mib,
                c.b_peak_rss_mib
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "  ! {e}");
        }
        s
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// Runs every cost measurement.
pub fn run_cost(
    exe: &Path,
    origin: OriginKind,
    quick: bool,
    reps: usize,
    out: &Path,
) -> Result<CostResults> {
    let mut r = CostResults::default();
    match ineligible(exe, &origin, quick) {
        Ok(i) => r.ineligible = Some(i),
        Err(e) => r.errors.push(format!("ineligible: {e:#}")),
    }
    match unshaped(exe, &origin, quick, reps, out) {
        Ok((u, c)) => {
            r.unshaped = Some(u);
            r.concurrent = Some(c);
        }
        Err(e) => r.errors.push(format!("unshaped: {e:#}")),
    }
    Ok(r)
}

fn ineligible(exe: &Path, origin: &OriginKind, quick: bool) -> Result<Ineligible> {
    let mut spec = TopologySpec::pair(vec![
        exe.as_os_str().to_owned(),
        OsString::from("delayline"),
    ]);
    spec.mesh_rate = Some(Rate::mbit(54));
    let topo = Topology::build(spec)?;
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www)?;
    let size = MIB;
    let min_size = 4 * MIB;
    let file = www.join("small.bin");
    transfer::write_random_file(&file, size, 11)?;
    let o = start_origin(&topo, origin, &www)?;
    let url = o.url("small.bin");
    let dir = topo.workdir().join("client");
    let per_block = if quick { 4 } else { 10 };
    let mut res = Ineligible {
        size,
        min_size,
        off_s: Vec::new(),
        on_s: Vec::new(),
        off_ttfb_s: Vec::new(),
        on_ttfb_s: Vec::new(),
        ratio: f64::NAN,
        ttfb_added_ms: f64::NAN,
    };
    // ABBA blocks so a drift of the machine's load hits both alike; one
    // unrecorded warm-up download per block.
    for on in [false, true, true, false] {
        let act = if on {
            Some(systems::start(
                &topo,
                exe,
                System::TandemDynamic,
                &[20, 20],
                min_size,
            )?)
        } else {
            None
        };
        for k in 0..=per_block {
            let m = measure::download(&topo, &url, &file, &dir, 1, Duration::from_secs(60), None)?;
            let Some(m) = m.into_iter().next() else {
                continue;
            };
            if let Some(e) = m.error {
                bail!(
                    "1 MiB download failed (daemon {}): {e}",
                    if on { "on" } else { "off" }
                );
            }
            if k == 0 {
                continue;
            }
            if let Some(c) = m.curl {
                let (t, f) = if on {
                    (&mut res.on_s, &mut res.on_ttfb_s)
                } else {
                    (&mut res.off_s, &mut res.off_ttfb_s)
                };
                t.push(c.total_s);
                f.push(c.ttfb_s);
            }
        }
        if let Some(a) = act {
            a.check_alive()?;
            a.stop(&topo);
        }
    }
    res.ratio = median(&res.on_s) / median(&res.off_s);
    res.ttfb_added_ms = (median(&res.on_ttfb_s) - median(&res.off_ttfb_s)) * 1e3;
    println!(
        "  1 MiB below threshold: off {:.4} s, on {:.4} s (ratio {:.4}); TTFB added {:+.2} ms",
        median(&res.off_s),
        median(&res.on_s),
        res.ratio,
        res.ttfb_added_ms
    );
    Ok(res)
}

fn unshaped(
    exe: &Path,
    origin: &OriginKind,
    quick: bool,
    reps: usize,
    out: &Path,
) -> Result<(Unshaped, Concurrent)> {
    let mut spec = TopologySpec::pair(Vec::new());
    spec.down = None;
    spec.up = None;
    spec.mesh_rate = None;
    spec.delay_ms = 0;
    let topo = Topology::build(spec)?;
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www)?;
    let big_mib = if quick { 256 } else { 1024 };
    let conc_mib = if quick { 16 } else { 64 };
    let count = 20;
    let big = www.join("big.bin");
    let conc = www.join("conc.bin");
    transfer::write_random_file(&big, big_mib * MIB, 21)?;
    transfer::write_random_file(&conc, conc_mib * MIB, 22)?;
    let o = start_origin(&topo, origin, &www)?;
    let dir = topo.workdir().join("client");
    let timeout = Duration::from_secs(900);
    let mbit = |m: &measure::Measured| {
        m.curl
            .map(|c| c.bytes as f64 * 8.0 / c.total_s.max(1e-9) / 1e6)
            .unwrap_or(f64::NAN)
    };
    let mut u = Unshaped {
        size_mib: big_mib,
        plain_mbit: Vec::new(),
        tandem_mbit: Vec::new(),
        ratio: f64::NAN,
        a_cpu_s_per_gib: f64::NAN,
        b_cpu_s_per_gib: f64::NAN,
        b_share: f64::NAN,
        a_idle_rss_mib: f64::NAN,
        a_peak_rss_mib: 0.0,
        b_peak_rss_mib: 0.0,
    };
    let mut a_cpu = Vec::new();
    let mut b_cpu = Vec::new();
    let mut shares = Vec::new();
    let mut conc_res = None;
    for rep in 0..reps {
        // Plain first in odd repetitions, tandem first in even ones.
        for tandem in if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if !tandem {
                let m = measure::download(&topo, &o.url("big.bin"), &big, &dir, 1, timeout, None)?;
                for m in m {
                    if let Some(e) = &m.error {
                        bail!("plain unshaped download: {e}");
                    }
                    println!("  unshaped plain    {big_mib} MiB: {:.0} Mbit/s", mbit(&m));
                    u.plain_mbit.push(mbit(&m));
                }
                continue;
            }
            let act = systems::start(&topo, exe, System::TandemDynamic, &[1000, 1000], MIB)?;
            let (Some(pa), Some(pb)) = (act.daemon_pid(0), act.daemon_pid(1)) else {
                act.stop(&topo);
                bail!("no daemon pids");
            };
            if rep == 0 {
                u.a_idle_rss_mib = mib(procfs::rss(pa)?);
            }
            procfs::reset_peak_rss(pa)?;
            procfs::reset_peak_rss(pb)?;
            let (ca, cb) = (procfs::cpu_s(pa)?, procfs::cpu_s(pb)?);
            let m = measure::download(&topo, &o.url("big.bin"), &big, &dir, 1, timeout, None)?;
            let (ca2, cb2) = (procfs::cpu_s(pa)?, procfs::cpu_s(pb)?);
            u.a_peak_rss_mib = u.a_peak_rss_mib.max(mib(procfs::peak_rss(pa)?));
            u.b_peak_rss_mib = u.b_peak_rss_mib.max(mib(procfs::peak_rss(pb)?));
            for m in &m {
                if let Some(e) = &m.error {
                    act.stop(&topo);
                    bail!("accelerated unshaped download: {e}");
                }
                let total: u64 = m.per_source.iter().sum::<u64>().max(1);
                let b_bytes = m.per_source.get(1).copied().unwrap_or(0);
                shares.push(b_bytes as f64 / total as f64);
                a_cpu.push((ca2 - ca) / ((big_mib * MIB) as f64 / GIB));
                if b_bytes > 0 {
                    b_cpu.push((cb2 - cb) / (b_bytes as f64 / GIB));
                }
                println!(
                    "  unshaped tandem   {big_mib} MiB: {:.0} Mbit/s, B share {:.0}%, CPU A {:.2} s B {:.2} s, peak RSS A {:.1} MiB",
                    mbit(m),
                    shares.last().copied().unwrap_or(0.0) * 100.0,
                    ca2 - ca,
                    cb2 - cb,
                    u.a_peak_rss_mib
                );
                u.tandem_mbit.push(mbit(m));
            }
            if let Ok(j) = act.status_json(exe, 0) {
                let _ = std::fs::write(out.join(format!("status-unshaped-rep{}.json", rep + 1)), j);
            }
            if rep == 0 {
                // 20 concurrent downloads with the same daemons.
                let before = accelerated(&act, exe);
                procfs::reset_peak_rss(pa)?;
                procfs::reset_peak_rss(pb)?;
                let ms = measure::download(
                    &topo,
                    &o.url("conc.bin"),
                    &conc,
                    &dir,
                    count,
                    timeout,
                    None,
                )?;
                let after = accelerated(&act, exe);
                let errors: Vec<String> = ms.iter().filter_map(|m| m.error.clone()).collect();
                let c = Concurrent {
                    count,
                    size_mib: conc_mib,
                    ok: ms.iter().filter(|m| m.error.is_none()).count(),
                    elapsed_s: ms.iter().map(|m| m.wall_s).fold(0.0, f64::max),
                    accelerated: after.saturating_sub(before),
                    a_peak_rss_mib: mib(procfs::peak_rss(pa)?),
                    b_peak_rss_mib: mib(procfs::peak_rss(pb)?),
                    errors,
                };
                println!(
                    "  {count} x {conc_mib} MiB concurrent: {}/{count} identical, {:.1} s, {} accelerated, peak RSS A {:.1} MiB",
                    c.ok, c.elapsed_s, c.accelerated, c.a_peak_rss_mib
                );
                conc_res = Some(c);
            }
            act.check_alive()?;
            act.stop(&topo);
        }
    }
    u.ratio = median(&u.tandem_mbit) / median(&u.plain_mbit);
    u.a_cpu_s_per_gib = median(&a_cpu);
    u.b_cpu_s_per_gib = median(&b_cpu);
    u.b_share = median(&shares);
    let Some(c) = conc_res else {
        bail!("concurrent downloads not measured");
    };
    Ok((u, c))
}

fn accelerated(act: &systems::Active, exe: &Path) -> u64 {
    act.status_json(exe, 0)
        .ok()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .and_then(|v| v.get("decisions")?.get("accelerated")?.as_u64())
        .unwrap_or(0)
}
