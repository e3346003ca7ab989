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
use tandem_lab::{Topology, TopologySpec, transfer};

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
    /// Where it was measured.
    pub testbed: String,
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

/// Throughput of plain vs accelerated downloads and the daemons' CPU and
/// memory on one testbed.
#[derive(Clone, Debug, Serialize)]
pub struct Unshaped {
    /// Which testbed.
    pub testbed: String,
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
    /// Failed or stalled accelerated downloads.
    pub errors: Vec<String>,
}

/// Many concurrent downloads through A with the daemons running.
#[derive(Clone, Debug, Serialize)]
pub struct Concurrent {
    /// Which testbed.
    pub testbed: String,
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
    /// Ineligible-traffic overhead on the shaped, delayed testbed.
    pub ineligible: Option<Ineligible>,
    /// Ineligible-traffic overhead unshaped, without delay (the daemon's
    /// own latency is not hidden by 20 ms of RTT).
    pub ineligible_unshaped: Option<Ineligible>,
    /// Large accelerated downloads (vs plain where measured) with CPU and
    /// memory: standard testbed, unshaped (CPU bound), 100 Mbit/s.
    pub accel: Vec<Unshaped>,
    /// Concurrent downloads, per testbed.
    pub concurrent: Vec<Concurrent>,
    /// Parts that failed.
    pub errors: Vec<String>,
}

impl CostResults {
    /// Printed table.
    pub fn table(&self) -> String {
        let mut s = String::from("\ncost\n");
        for i in self.ineligible.iter().chain(&self.ineligible_unshaped) {
            let _ = writeln!(
                s,
                "  {} KiB below the threshold ({} MiB), {}, {} + {} downloads:",
                i.size / 1024,
                i.min_size / MIB,
                i.testbed,
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
        for u in &self.accel {
            let _ = writeln!(s, "  {} MiB download, {}:", u.size_mib, u.testbed);
            let _ = writeln!(
                s,
                "    plain forwarding {:.0} Mbit/s   tandem {:.0} Mbit/s   ratio {:.3}   B's share {:.0}%",
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
                "    RSS  A idle {:.1} MiB, peak {:.1} MiB   B peak {:.1} MiB",
                u.a_idle_rss_mib, u.a_peak_rss_mib, u.b_peak_rss_mib
            );
            for e in &u.errors {
                let _ = writeln!(s, "    ! {e}");
            }
        }
        for c in &self.concurrent {
            let _ = writeln!(
                s,
                "  {} concurrent {} MiB downloads, {}: {}/{} identical in {:.1} s, {} accelerated; peak RSS A {:.1} MiB, B {:.1} MiB",
                c.count,
                c.size_mib,
                c.testbed,
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

/// Which cost rows to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CostRows {
    /// Every cost row.
    All,
    /// Only the unshaped accelerated download vs plain forwarding (the
    /// CPU-bound ratio of issue 6), repeated `reps` times alternating.
    Unshaped,
}

/// Runs the cost measurements `rows` selects.
pub fn run_cost(
    exe: &Path,
    origin: OriginKind,
    quick: bool,
    reps: usize,
    out: &Path,
    perf: bool,
    rows: CostRows,
) -> Result<CostResults> {
    let mut r = CostResults::default();
    let ctx = Ctx { out, perf };
    if rows == CostRows::Unshaped {
        if let Err(e) = unshaped_testbed(exe, &origin, quick, reps, &ctx, &mut r, false) {
            r.errors.push(format!("unshaped: {e:#}"));
        }
        return Ok(r);
    }
    match shaped_ineligible(exe, &origin, quick) {
        Ok(i) => r.ineligible = Some(i),
        Err(e) => r.errors.push(format!("ineligible (shaped): {e:#}")),
    }
    if let Err(e) = unshaped(exe, &origin, quick, reps, &ctx, &mut r) {
        r.errors.push(format!("unshaped: {e:#}"));
    }
    Ok(r)
}

/// Where to write and whether to profile.
struct Ctx<'a> {
    out: &'a Path,
    perf: bool,
}

/// `perf record -g` of a process until [`Perf::finish`].
struct Perf {
    child: std::process::Child,
    data: std::path::PathBuf,
}

impl Perf {
    fn start(pid: u32, data: &Path) -> Result<Perf> {
        let child = std::process::Command::new("perf")
            .args(["record", "-F", "499", "-g", "-q", "-o"])
            .arg(data)
            .args(["-p", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Perf {
            child,
            data: data.to_path_buf(),
        })
    }

    /// Stops recording and writes `perf report` (flat, by symbol) next to
    /// the data file.
    fn finish(mut self) -> Result<()> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        self.child.wait()?;
        let rep = std::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "symbol",
                "-g",
                "none",
                "-i",
            ])
            .arg(&self.data)
            .output()?;
        std::fs::write(self.data.with_extension("txt"), &rep.stdout)?;
        Ok(())
    }
}

fn shaped_ineligible(exe: &Path, origin: &OriginKind, quick: bool) -> Result<Ineligible> {
    let spec = TopologySpec::pair(vec![
        exe.as_os_str().to_owned(),
        OsString::from("delayline"),
    ]);
    let topo = Topology::build(spec)?;
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www)?;
    transfer::write_random_file(&www.join("small.bin"), MIB, 11)?;
    let o = start_origin(&topo, origin, &www)?;
    ineligible(
        &topo,
        exe,
        &o.url("small.bin"),
        &www.join("small.bin"),
        quick,
        "20 Mbit/s + 10 ms",
        &[20, 20],
    )
}

/// A 1 MiB download (below the 4 MiB threshold), daemons off and on, in
/// ABBA blocks so a drift of the machine's load hits both alike; one
/// unrecorded warm-up download per block.
fn ineligible(
    topo: &Topology,
    exe: &Path,
    url: &str,
    file: &Path,
    quick: bool,
    testbed: &str,
    rates: &[u64],
) -> Result<Ineligible> {
    let min_size = 4 * MIB;
    let dir = topo.workdir().join("client");
    let per_block = if quick { 4 } else { 10 };
    let mut res = Ineligible {
        testbed: testbed.to_owned(),
        size: MIB,
        min_size,
        off_s: Vec::new(),
        on_s: Vec::new(),
        off_ttfb_s: Vec::new(),
        on_ttfb_s: Vec::new(),
        ratio: f64::NAN,
        ttfb_added_ms: f64::NAN,
    };
    for on in [false, true, true, false] {
        let act = if on {
            Some(systems::start(
                topo,
                exe,
                System::TandemDynamic,
                rates,
                min_size,
            )?)
        } else {
            None
        };
        for k in 0..=per_block {
            let m = measure::download(
                topo,
                url,
                file,
                &dir,
                measure::Opts::one(Duration::from_secs(60)),
            )?;
            let Some(m) = m.into_iter().next() else {
                continue;
            };
            if let Some(e) = m.error {
                if let Some(a) = act {
                    a.stop(topo);
                }
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
            a.stop(topo);
        }
    }
    res.ratio = median(&res.on_s) / median(&res.off_s);
    res.ttfb_added_ms = (median(&res.on_ttfb_s) - median(&res.off_ttfb_s)) * 1e3;
    println!(
        "  1 MiB below threshold ({testbed}): off {:.4} s, on {:.4} s (ratio {:.4}); TTFB off {:.2} ms, on {:.2} ms, added {:+.2} ms",
        median(&res.off_s),
        median(&res.on_s),
        res.ratio,
        median(&res.off_ttfb_s) * 1e3,
        median(&res.on_ttfb_s) * 1e3,
        res.ttfb_added_ms
    );
    Ok(res)
}

/// The unshaped testbed (no shaping, no delay) built for the CPU-bound
/// rows.
fn unshaped_topology() -> Result<Topology> {
    let mut spec = TopologySpec::pair(Vec::new());
    spec.down = None;
    spec.up = None;
    spec.mesh_rate = None;
    spec.delay_ms = 0;
    Topology::build(spec)
}

/// The unshaped testbed (no shaping, no delay): the accelerated row, plain
/// forwarding and tandem alternating `reps` times (ratio of medians), and
/// with `with_ineligible` first the ineligible-traffic rows. Alone
/// (`--cost unshaped`) the first tandem download is profiled with `--perf`;
/// in the full cost group the standard testbed is.
fn unshaped_testbed(
    exe: &Path,
    origin: &OriginKind,
    quick: bool,
    reps: usize,
    ctx: &Ctx,
    r: &mut CostResults,
    with_ineligible: bool,
) -> Result<()> {
    let topo = unshaped_topology()?;
    let _logs = crate::systems::KeepLogs::new(&topo, &ctx.out.join("logs").join("cost-unshaped"));
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www)?;
    let big_mib = if quick { 256 } else { 1024 };
    transfer::write_random_file(&www.join("big.bin"), big_mib * MIB, 21)?;
    let small = www.join("small.bin");
    if with_ineligible {
        transfer::write_random_file(&small, MIB, 23)?;
    }
    let o = start_origin(&topo, origin, &www)?;
    let rates = [1000, 1000];
    if with_ineligible {
        match ineligible(
            &topo,
            exe,
            &o.url("small.bin"),
            &small,
            quick,
            "unshaped, no delay",
            &rates,
        ) {
            Ok(i) => r.ineligible_unshaped = Some(i),
            Err(e) => r.errors.push(format!("ineligible (unshaped): {e:#}")),
        }
    }
    let bench = Accel {
        topo: &topo,
        exe,
        rates: &rates,
        url: o.url("big.bin"),
        file: www.join("big.bin"),
        size_mib: big_mib,
        testbed: "unshaped, no delay (CPU bound)",
        tag: "unshaped",
        with_plain: true,
    };
    match bench.run(reps, ctx, ctx.perf && !with_ineligible) {
        Ok(u) => r.accel.push(u),
        Err(e) => r.errors.push(format!("unshaped accelerated: {e:#}")),
    }
    Ok(())
}

fn unshaped(
    exe: &Path,
    origin: &OriginKind,
    quick: bool,
    reps: usize,
    ctx: &Ctx,
    r: &mut CostResults,
) -> Result<()> {
    let big_mib = if quick { 32 } else { 1024 };
    let conc_mib = if quick { 8 } else { 64 };
    // 1. The standard testbed (20+20 Mbit/s, 10 ms): CPU per GiB, peak RSS
    //    and a profile of a large accelerated download, then 20 at once.
    {
        let spec = TopologySpec::pair(vec![
            exe.as_os_str().to_owned(),
            OsString::from("delayline"),
        ]);
        let topo = Topology::build(spec)?;
        let _logs =
            crate::systems::KeepLogs::new(&topo, &ctx.out.join("logs").join("cost-standard"));
        let www = topo.workdir().join("www");
        std::fs::create_dir_all(&www)?;
        transfer::write_random_file(&www.join("big.bin"), big_mib * MIB, 25)?;
        transfer::write_random_file(&www.join("conc.bin"), conc_mib * MIB, 26)?;
        let o = start_origin(&topo, origin, &www)?;
        let rates = [20, 20];
        let bench = Accel {
            topo: &topo,
            exe,
            rates: &rates,
            url: o.url("big.bin"),
            file: www.join("big.bin"),
            size_mib: big_mib,
            testbed: "standard testbed, 20+20 Mbit/s + 10 ms (tandem only)",
            tag: "standard",
            with_plain: false,
        };
        match bench.run(1, ctx, ctx.perf) {
            Ok(u) => r.accel.push(u),
            Err(e) => r.errors.push(format!("standard accelerated: {e:#}")),
        }
        match concurrent(
            &topo,
            exe,
            &rates,
            &o.url("conc.bin"),
            &www.join("conc.bin"),
            conc_mib,
            "20+20 Mbit/s + 10 ms",
            ctx,
        ) {
            Ok(c) => r.concurrent.push(c),
            Err(e) => r.errors.push(format!("concurrent (standard): {e:#}")),
        }
    }
    // 2. Unshaped, no delay: CPU-bound throughput, ineligible latency.
    unshaped_testbed(exe, origin, quick, reps, ctx, r, true)?;
    // 3. 100 Mbit/s uplinks, no delay.
    let mut spec = TopologySpec::pair(Vec::new());
    spec.down = Some(tandem_lab::Rate::mbit(100));
    spec.up = Some(tandem_lab::Rate::mbit(100));
    spec.mesh_rate = None;
    spec.delay_ms = 0;
    let topo = Topology::build(spec)?;
    let _logs = crate::systems::KeepLogs::new(&topo, &ctx.out.join("logs").join("cost-100mbit"));
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www)?;
    let big_mib = if quick { 128 } else { 512 };
    transfer::write_random_file(&www.join("big.bin"), big_mib * MIB, 24)?;
    transfer::write_random_file(&www.join("conc.bin"), conc_mib * MIB, 22)?;
    let o = start_origin(&topo, origin, &www)?;
    let rates = [100, 100];
    let bench = Accel {
        topo: &topo,
        exe,
        rates: &rates,
        url: o.url("big.bin"),
        file: www.join("big.bin"),
        size_mib: big_mib,
        testbed: "100+100 Mbit/s uplinks, no delay",
        tag: "100mbit",
        with_plain: true,
    };
    match bench.run(1, ctx, false) {
        Ok(u) => r.accel.push(u),
        Err(e) => r.errors.push(format!("100 Mbit/s accelerated: {e:#}")),
    }
    match concurrent(
        &topo,
        exe,
        &rates,
        &o.url("conc.bin"),
        &www.join("conc.bin"),
        conc_mib,
        "100+100 Mbit/s, no delay",
        ctx,
    ) {
        Ok(c) => r.concurrent.push(c),
        Err(e) => r.errors.push(format!("concurrent (100 Mbit/s): {e:#}")),
    }
    Ok(())
}

/// 20 downloads of `url` at once with fresh daemons; peak RSS of both.
#[allow(clippy::too_many_arguments)]
fn concurrent(
    topo: &Topology,
    exe: &Path,
    rates: &[u64],
    url: &str,
    file: &Path,
    conc_mib: u64,
    testbed: &str,
    ctx: &Ctx,
) -> Result<Concurrent> {
    let count = 20;
    let act = systems::start(topo, exe, System::TandemDynamic, rates, MIB)?;
    let (Some(pa), Some(pb)) = (act.daemon_pid(0), act.daemon_pid(1)) else {
        act.stop(topo);
        bail!("no daemon pids");
    };
    procfs::reset_peak_rss(pa)?;
    procfs::reset_peak_rss(pb)?;
    let slowest = rates.iter().copied().min().unwrap_or(20).max(1) as f64 * 1e6;
    let timeout =
        Duration::from_secs_f64((count as u64 * conc_mib * MIB) as f64 * 8.0 / slowest + 60.0);
    let ms = measure::download(
        topo,
        url,
        file,
        &topo.workdir().join("client"),
        measure::Opts {
            count,
            ..measure::Opts::one(timeout)
        },
    )?;
    let alive = act.check_alive();
    let errors: Vec<String> = ms
        .iter()
        .filter_map(|m| m.error.clone())
        .chain(alive.err().map(|e| format!("a daemon died: {e:#}")))
        .collect();
    let c = Concurrent {
        testbed: testbed.to_owned(),
        count,
        size_mib: conc_mib,
        ok: ms.iter().filter(|m| m.error.is_none()).count(),
        elapsed_s: ms.iter().map(|m| m.wall_s).fold(0.0, f64::max),
        accelerated: accelerated(&act, exe),
        a_peak_rss_mib: procfs::peak_rss(pa).map(mib).unwrap_or(f64::NAN),
        b_peak_rss_mib: procfs::peak_rss(pb).map(mib).unwrap_or(f64::NAN),
        errors,
    };
    if let Ok(j) = act.status_json(exe, 0) {
        let name = format!(
            "status-concurrent-{}.json",
            rates.first().copied().unwrap_or(0)
        );
        let _ = std::fs::write(ctx.out.join(name), j);
    }
    println!(
        "  {count} x {conc_mib} MiB concurrent ({testbed}): {}/{count} identical, {:.1} s, {} accelerated, peak RSS A {:.1} MiB",
        c.ok, c.elapsed_s, c.accelerated, c.a_peak_rss_mib
    );
    act.stop(topo);
    Ok(c)
}

/// Plain vs accelerated downloads of one file on one testbed, with the
/// daemons' CPU time and peak RSS.
struct Accel<'a> {
    topo: &'a Topology,
    exe: &'a Path,
    rates: &'a [u64],
    url: String,
    file: std::path::PathBuf,
    size_mib: u64,
    testbed: &'a str,
    tag: &'a str,
    /// Also measure plain forwarding (alternating with tandem).
    with_plain: bool,
}

impl Accel<'_> {
    fn run(&self, reps: usize, ctx: &Ctx, perf: bool) -> Result<Unshaped> {
        let (topo, exe, big_mib) = (self.topo, self.exe, self.size_mib);
        let dir = topo.workdir().join("client");
        // At least 20 Mbit/s, or it is a failure anyway.
        let timeout = Duration::from_secs_f64((big_mib * MIB) as f64 * 8.0 / 20e6 + 30.0);
        let mbit = |m: &measure::Measured| {
            m.curl
                .map(|c| c.bytes as f64 * 8.0 / c.total_s.max(1e-9) / 1e6)
                .unwrap_or(f64::NAN)
        };
        let mut u = Unshaped {
            testbed: self.testbed.to_owned(),
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
            errors: Vec::new(),
        };
        let (mut a_cpu, mut b_cpu, mut shares) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..reps {
            // Plain first in even repetitions, tandem first in odd ones.
            for tandem in if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                if !tandem && !self.with_plain {
                    continue;
                }
                if !tandem {
                    for m in measure::download(
                        topo,
                        &self.url,
                        &self.file,
                        &dir,
                        measure::Opts::one(timeout),
                    )? {
                        if let Some(e) = &m.error {
                            bail!("plain {big_mib} MiB download ({}): {e}", self.testbed);
                        }
                        println!(
                            "  {} plain  {big_mib} MiB: {:.0} Mbit/s",
                            self.tag,
                            mbit(&m)
                        );
                        u.plain_mbit.push(mbit(&m));
                    }
                    continue;
                }
                let act = systems::start(topo, exe, System::TandemDynamic, self.rates, MIB)?;
                let (Some(pa), Some(pb)) = (act.daemon_pid(0), act.daemon_pid(1)) else {
                    act.stop(topo);
                    bail!("no daemon pids");
                };
                if rep == 0 {
                    u.a_idle_rss_mib = mib(procfs::rss(pa)?);
                }
                procfs::reset_peak_rss(pa)?;
                procfs::reset_peak_rss(pb)?;
                let (ca, cb) = (procfs::cpu_s(pa)?, procfs::cpu_s(pb)?);
                let prof = if perf && rep == 0 {
                    Some((
                        Perf::start(pa, &ctx.out.join(format!("perf-{}-a.data", self.tag)))?,
                        Perf::start(pb, &ctx.out.join(format!("perf-{}-b.data", self.tag)))?,
                    ))
                } else {
                    None
                };
                let m = measure::download(
                    topo,
                    &self.url,
                    &self.file,
                    &dir,
                    measure::Opts::one(timeout),
                )?;
                if let Some((p1, p2)) = prof {
                    p1.finish()?;
                    p2.finish()?;
                }
                if let Err(e) = act.check_alive() {
                    let msg = format!(
                        "a daemon died during the accelerated download (rep {}): {e:#}",
                        rep + 1
                    );
                    println!("  ! {msg}");
                    u.errors.push(msg);
                    act.stop(topo);
                    continue;
                }
                let (ca2, cb2) = (procfs::cpu_s(pa)?, procfs::cpu_s(pb)?);
                u.a_peak_rss_mib = u.a_peak_rss_mib.max(mib(procfs::peak_rss(pa)?));
                u.b_peak_rss_mib = u.b_peak_rss_mib.max(mib(procfs::peak_rss(pb)?));
                if let Ok(j) = act.status_json(exe, 0) {
                    let _ = std::fs::write(
                        ctx.out
                            .join(format!("status-{}-rep{}.json", self.tag, rep + 1)),
                        j,
                    );
                }
                for m in &m {
                    if let Some(e) = &m.error {
                        println!("  {} tandem {big_mib} MiB: ! {e}", self.tag);
                        u.errors
                            .push(format!("accelerated {big_mib} MiB, rep {}: {e}", rep + 1));
                        continue;
                    }
                    let total: u64 = m.per_source.iter().sum::<u64>().max(1);
                    let b_bytes = m.per_source.get(1).copied().unwrap_or(0);
                    shares.push(b_bytes as f64 / total as f64);
                    a_cpu.push((ca2 - ca) / ((big_mib * MIB) as f64 / GIB));
                    if b_bytes > 0 {
                        b_cpu.push((cb2 - cb) / (b_bytes as f64 / GIB));
                    }
                    println!(
                        "  {} tandem {big_mib} MiB: {:.0} Mbit/s, B share {:.0}%, CPU A {:.2} s B {:.2} s, peak RSS A {:.1} MiB",
                        self.tag,
                        mbit(m),
                        shares.last().copied().unwrap_or(0.0) * 100.0,
                        ca2 - ca,
                        cb2 - cb,
                        u.a_peak_rss_mib
                    );
                    u.tandem_mbit.push(mbit(m));
                }
                act.stop(topo);
            }
        }
        u.ratio = median(&u.tandem_mbit) / median(&u.plain_mbit);
        u.a_cpu_s_per_gib = median(&a_cpu);
        u.b_cpu_s_per_gib = median(&b_cpu);
        u.b_share = median(&shares);
        Ok(u)
    }
}

fn accelerated(act: &systems::Active, exe: &Path) -> u64 {
    act.status_json(exe, 0)
        .ok()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .and_then(|v| v.get("decisions")?.get("accelerated")?.as_u64())
        .unwrap_or(0)
}
