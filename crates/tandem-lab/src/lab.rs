//! `tandem lab`: the newcomer's first command. Builds a small world of
//! namespaces (client behind A, neighbours B…, the internet with a delay
//! line, an origin served by the tandem binary itself), downloads one random
//! file through A alone and then with the neighbours' tandem daemons
//! helping, checks both downloads byte for byte, and prints a table and
//! writes an SVG plot + CSV of throughput per source over time.
//!
//! Per-source throughput is measured honestly from outside the daemons: the
//! bytes entering each router's WAN interface (its uplink), sampled from the
//! router namespace's `/proc/net/dev` every 200 ms.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::daemon::{DaemonOptions, Daemons};
use crate::netns::{self, IfCounters};
use crate::origin::{OriginKind, start_origin};
use crate::plot::{self, Panel, Series};
use crate::topology::{
    ORIGIN_IP, Rate, Topology, TopologySpec, client_ip, router_letter, router_wan_ip,
};
use crate::transfer::{self, Tool};

/// How often the uplinks' counters are sampled for the plot and progress.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the client is checked for its exit: its time is taken then.
const EXIT_POLL: Duration = Duration::from_millis(2);

/// Options of `tandem lab`.
#[derive(clap::Args, Clone, Debug)]
pub struct LabArgs {
    /// Routers: A (with the client) and its neighbours B, C, … in a chain mesh.
    #[arg(long, default_value_t = 2)]
    pub routers: usize,
    /// Download and upload rate of every router's uplink, Mbit/s.
    #[arg(long, default_value_t = 20)]
    pub rate_mbit: u64,
    /// One-way delay of the internet, ms.
    #[arg(long, default_value_t = 10)]
    pub delay_ms: u32,
    /// Size of the test file, MiB.
    #[arg(long, default_value_t = 32)]
    pub size_mib: u64,
    /// Rate of every mesh link between neighbours, Mbit/s (802.11g: 54).
    #[arg(long, default_value_t = 54)]
    pub mesh_mbit: u64,
    /// Leave the namespaces and processes running at the end.
    #[arg(long)]
    pub keep: bool,
    /// Directory for the SVG plot and CSV samples.
    #[arg(long, default_value = "tandem-lab-out")]
    pub out: PathBuf,
    /// Origin server: the tandem binary's own (`tandem origin`) or nginx.
    #[arg(long, value_enum, default_value_t = LabOrigin::Tandem)]
    pub origin: LabOrigin,
    /// HTTP client run in the client namespace.
    #[arg(long, value_enum, default_value_t = Tool::Curl)]
    pub client: Tool,
    /// Seed of the random file (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only the first download (A alone); start no daemons.
    #[arg(long)]
    pub alone_only: bool,
    /// Share of each neighbour's uplink that may serve others
    /// (`[uplink] neighbour_share`). The lab's neighbours have no users of
    /// their own, so the default lends the whole uplink; 0.5 is the daemon's
    /// default on a real router.
    #[arg(long, default_value_t = 1.0)]
    pub neighbour_share: f64,
}

/// Which origin server the lab starts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabOrigin {
    /// `tandem origin` (Range-capable, the project's own).
    Tandem,
    /// nginx with a throw-away config.
    Nginx,
}

/// Runs the lab (see the module docs). `tandem_exe` is the tandem binary: it
/// runs the delay line, the origin and the daemons.
pub fn run_lab(args: LabArgs, tandem_exe: &Path) -> Result<()> {
    netns::require_root()?;
    anyhow::ensure!(
        (1..=crate::topology::MAX_ROUTERS).contains(&args.routers),
        "--routers must be 1..={}",
        crate::topology::MAX_ROUTERS
    );
    anyhow::ensure!(
        args.size_mib > 0 && args.rate_mbit > 0,
        "size and rate must be > 0"
    );
    let ui = Ui::new();
    let tandem_exe = std::fs::canonicalize(tandem_exe)
        .with_context(|| format!("tandem binary {}", tandem_exe.display()))?;
    let size = args.size_mib << 20;
    let rate = Rate::mbit(args.rate_mbit);
    let ideal = size as f64 * 8.0 / (rate.0 as f64 * args.routers as f64);

    ui.title(&format!(
        "tandem lab — {} routers, {} Mbit/s uplinks, {} ms one-way delay, {} MiB file",
        args.routers, args.rate_mbit, args.delay_ms, args.size_mib
    ));

    // 1. The world.
    let t = Instant::now();
    let spec = TopologySpec {
        routers: args.routers,
        mesh: TopologySpec::chain(args.routers),
        clients: vec![0],
        down: Some(rate),
        up: Some(rate),
        down_per_router: Vec::new(),
        mesh_rate: Some(Rate::mbit(args.mesh_mbit)),
        delay_ms: args.delay_ms,
        delay_command: vec![
            tandem_exe.clone().into_os_string(),
            OsString::from("delayline"),
        ],
        origin_own_ns: true,
        no_offloads: true,
    };
    let mut topo = Topology::build(spec)?;
    ui.step(
        "namespaces",
        &format!(
            "{}-{{inet,{},client-a,origin}}  ({:.1} s)",
            topo.run_id(),
            (0..args.routers)
                .map(|i| router_letter(i).to_string())
                .collect::<Vec<_>>()
                .join(","),
            t.elapsed().as_secs_f64()
        ),
    );
    ui.step(
        "addresses",
        &format!(
            "client {} → A {} (NAT) → internet → origin {ORIGIN_IP}",
            client_ip(0),
            router_wan_ip(0)
        ),
    );
    ui.step(
        "shaping",
        &format!(
            "HTB {} Mbit/s down and up on every uplink; mesh links {} Mbit/s",
            args.rate_mbit, args.mesh_mbit
        ),
    );
    if args.delay_ms > 0 {
        let rtt = ping_min_ms(&topo, &topo.client_ns(0), ORIGIN_IP)?;
        ui.step(
            "delay line",
            &format!(
                "{} ms each way (NFQUEUE in the internet namespace); client→origin ping {rtt:.1} ms",
                args.delay_ms
            ),
        );
    }

    // 2. The origin and its file.
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www)?;
    let name = "video.mp4";
    let original = www.join(name);
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    transfer::write_random_file(&original, size, seed)?;
    let kind = match args.origin {
        LabOrigin::Tandem => OriginKind::Tandem {
            exe: tandem_exe.clone(),
            extra: Vec::new(),
        },
        LabOrigin::Nginx => OriginKind::Nginx,
    };
    let origin = start_origin(&topo, &kind, &www)?;
    let url = origin.url(name);
    ui.step(
        "origin",
        &format!(
            "{} serving {url} ({} MiB, seed {seed})",
            match args.origin {
                LabOrigin::Tandem => "tandem origin",
                LabOrigin::Nginx => "nginx",
            },
            args.size_mib
        ),
    );

    // 3. Download through A alone.
    let mut results = Vec::new();
    let runs = if args.alone_only { 1 } else { 2 };
    ui.section(&format!("run 1/{runs}: A alone (no tandem daemon)"));
    let r1 = measure(&topo, &ui, &args, "A alone", "A alone", &url, size, "alone")?;
    results.push(r1);

    // 4. With the neighbours' daemons.
    let mut daemons = None;
    if !args.alone_only {
        ui.section(&format!(
            "run 2/{runs}: A with {} helping (tandem daemons on every router)",
            (1..args.routers)
                .map(|i| router_letter(i).to_ascii_uppercase().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        daemons = start_daemons(&topo, &ui, &tandem_exe, args.routers, args.neighbour_share);
        let (label, short) = if daemons.is_some() {
            ("A + neighbours (tandem)", "A + tandem")
        } else {
            ("A again (daemons NOT running)", "A, no daemons")
        };
        let r2 = measure(&topo, &ui, &args, label, short, &url, size, "helped")?;
        results.push(r2);
    }

    // 5. Verify, report, plot.
    ui.section("results");
    let mut all_ok = true;
    for r in &mut results {
        if !r.check.is_empty() {
            all_ok = false; // the client failed; keep its reason
            continue;
        }
        r.check = match transfer::first_difference(&original, &r.path)? {
            None => "identical".to_owned(),
            Some(off) => {
                all_ok = false;
                format!("DIFFERS at byte {off}")
            }
        };
    }
    print_table(&ui, &results, ideal, args.routers);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let panels: Vec<Panel> = results.iter().map(RunResult::panel).collect();
    let title = format!(
        "tandem lab: {} MiB over {} × {} Mbit/s uplinks, {} ms delay",
        args.size_mib, args.routers, args.rate_mbit, args.delay_ms
    );
    let svg_path = args.out.join("tandem-lab.svg");
    let csv_path = args.out.join("tandem-lab.csv");
    std::fs::write(&svg_path, plot::svg(&title, &panels, rate.as_mbit()))?;
    std::fs::write(&csv_path, plot::csv(&panels))?;
    ui.step(
        "plot",
        &format!("{} and {}", svg_path.display(), csv_path.display()),
    );
    // Every process's log (daemons, origin, delay line, client) for the record.
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    if let Ok(dir) = std::fs::read_dir(topo.workdir().join("logs")) {
        for e in dir.filter_map(|e| e.ok()) {
            let _ = std::fs::copy(e.path(), logs.join(e.file_name()));
        }
    }
    for f in ["tandem-a.toml", "tandem-b.toml", "rules-a.sh", "rules-b.sh"] {
        let _ = std::fs::copy(topo.workdir().join("daemons").join(f), logs.join(f));
    }
    ui.step("logs", &format!("{}", logs.display()));
    if let Some(d) = &daemons {
        // What A's daemon itself says (bytes per source etc.), for the record.
        match d.status_json(0) {
            Ok(json) => {
                let p = args.out.join("tandem-status-a.json");
                std::fs::write(&p, json)?;
                ui.step(
                    "status",
                    &format!("A's `tandem status --json` in {}", p.display()),
                );
            }
            Err(e) => ui.warn(&format!("tandem status on A: {e:#}")),
        }
    }

    if args.keep {
        topo.keep();
        ui.step(
            "kept",
            &format!(
                "namespaces {}; files in {}",
                topo.namespaces().join(" "),
                topo.workdir().display()
            ),
        );
        ui.step(
            "remove",
            &format!("sudo sh -c '{}'", topo.removal_command()),
        );
    } else {
        drop(topo);
        ui.step("cleanup", "all namespaces and processes removed");
    }
    if !all_ok {
        bail!(
            "a download failed or was not byte-identical to the origin's file (logs: {})",
            logs.display()
        );
    }
    Ok(())
}

fn start_daemons(
    topo: &Topology,
    ui: &Ui,
    tandem_exe: &Path,
    routers: usize,
    share: f64,
) -> Option<Daemons> {
    let all: Vec<usize> = (0..routers).collect();
    let opts = DaemonOptions {
        neighbour_share: Some(share),
        ..DaemonOptions::default()
    };
    match Daemons::start(topo, tandem_exe, &all, &opts) {
        Ok(d) => {
            ui.step(
                "daemons",
                &format!(
                    "neighbour_share = {share} (each neighbour lends that share of its uplink)"
                ),
            );
            for i in all {
                if let Some(p) = d.proc(i) {
                    let who = router_letter(i).to_ascii_uppercase();
                    ui.step("daemon", &format!("{who}: running (pid {})", p.pid()));
                }
            }
            Some(d)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let first: String = msg.lines().next().unwrap_or("").chars().take(200).collect();
            ui.warn(&format!("cannot run the tandem daemons: {first}"));
            ui.warn("the second download runs without tandem: its figures show no acceleration");
            None
        }
    }
}

/// One measured download.
struct RunResult {
    label: String,
    path: PathBuf,
    bytes: u64,
    elapsed: Duration,
    /// Bytes that entered each router's WAN during the run.
    per_source: Vec<u64>,
    /// (t, Mbit/s per source) samples.
    samples: Vec<(f64, Vec<f64>)>,
    check: String,
}

impl RunResult {
    fn panel(&self) -> Panel {
        let n = self.per_source.len();
        Panel {
            title: format!("{} — {:.1} s", self.label, self.elapsed.as_secs_f64()),
            series: (0..n)
                .map(|i| Series {
                    name: format!("{} uplink", router_letter(i).to_ascii_uppercase()),
                    points: self
                        .samples
                        .iter()
                        .map(|(t, v)| (*t, v.get(i).copied().unwrap_or(0.0)))
                        .collect(),
                })
                .collect(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    topo: &Topology,
    ui: &Ui,
    args: &LabArgs,
    label: &str,
    short: &str,
    url: &str,
    size: u64,
    tag: &str,
) -> Result<RunResult> {
    let n = args.routers;
    let mut wan: Vec<IfCounters> = (0..n)
        .map(|i| IfCounters::open(&topo.router_ns(i), "wan0"))
        .collect::<Result<_>>()?;
    let base: Vec<u64> = wan
        .iter_mut()
        .map(|c| c.read().map(|s| s.rx_bytes))
        .collect::<Result<_>>()?;
    let dir = topo.workdir().join(format!("client-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("video.mp4");
    let timeout =
        Duration::from_secs_f64((size as f64 * 8.0 / (args.rate_mbit as f64 * 1e6)) * 10.0 + 60.0);
    let start = Instant::now();
    let proc = transfer::spawn_download(topo, 0, args.client, url, &out)?;
    let mut prev = base.clone();
    let mut prev_t = 0.0;
    let mut samples = vec![(0.0, vec![0.0; n])];
    let mut last_print = Instant::now();
    let mut end = None;
    loop {
        // Sample every 200 ms, but notice the client's exit within 2 ms: the
        // download's time is taken at its exit, not at the next sample.
        let tick = Instant::now();
        while end.is_none() && tick.elapsed() < SAMPLE_INTERVAL {
            if proc.try_wait()?.is_some() {
                end = Some(start.elapsed());
            } else {
                std::thread::sleep(EXIT_POLL);
            }
        }
        let done = end.is_some();
        let t = start.elapsed().as_secs_f64();
        let now: Vec<u64> = wan
            .iter_mut()
            .map(|c| c.read().map(|s| s.rx_bytes))
            .collect::<Result<_>>()?;
        let dt = (t - prev_t).max(1e-3);
        let rates: Vec<f64> = now
            .iter()
            .zip(&prev)
            .map(|(a, b)| a.saturating_sub(*b) as f64 * 8.0 / dt / 1e6)
            .collect();
        // A final interval of a few ms would show a meaningless spike.
        if !done || dt >= 0.05 {
            samples.push((t, rates.clone()));
        }
        prev = now.clone();
        prev_t = t;
        let got = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        if ui.tty || last_print.elapsed() >= Duration::from_secs(2) || done {
            // The last line shows each source's average over the whole run.
            let shown: Vec<f64> = if done {
                now.iter()
                    .zip(&base)
                    .map(|(a, b)| a.saturating_sub(*b) as f64 * 8.0 / t.max(1e-3) / 1e6)
                    .collect()
            } else {
                rates.clone()
            };
            ui.progress(short, got, size, &shown, t, done);
            last_print = Instant::now();
        }
        if done {
            break;
        }
        if start.elapsed() > timeout {
            proc.kill();
            bail!("download did not finish within {timeout:?}");
        }
    }
    let elapsed = end.unwrap_or_else(|| start.elapsed());
    let status = proc.try_wait()?;
    // A failed client is a result to report (with the logs kept), not a
    // reason to abort the lab.
    let failure = match status {
        Some(s) if s.success() => None,
        other => {
            let log = proc.log();
            let why = log.lines().last().unwrap_or("").trim().to_owned();
            let code = other
                .and_then(|s| s.code())
                .map_or("signal".to_owned(), |c| c.to_string());
            ui.warn(&format!("{label}: the client failed (exit {code}): {why}"));
            Some(format!(
                "FAILED: {}",
                if why.is_empty() { code } else { why }
            ))
        }
    };
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let per_source = prev.iter().zip(&base).map(|(a, b)| a - b).collect();
    Ok(RunResult {
        label: label.to_owned(),
        path: out,
        bytes,
        elapsed,
        per_source,
        samples,
        check: failure.unwrap_or_default(),
    })
}

fn print_table(ui: &Ui, results: &[RunResult], ideal: f64, routers: usize) {
    let names: Vec<String> = (0..routers)
        .map(|i| router_letter(i).to_ascii_uppercase().to_string())
        .collect();
    println!(
        "  {:<30} {:>9} {:>13} {:>11}   {:<18} check",
        "run",
        "time",
        "rate",
        "efficiency",
        format!("WAN bytes {}", names.join("/")),
    );
    for r in results {
        let secs = r.elapsed.as_secs_f64();
        let total: u64 = r.per_source.iter().sum::<u64>().max(1);
        let shares: Vec<String> = r
            .per_source
            .iter()
            .map(|b| format!("{:.0}%", *b as f64 * 100.0 / total as f64))
            .collect();
        let ok = r.check == "identical";
        let (rate, eff) = if ok {
            (
                format!("{:>8.2} Mbit/s", r.bytes as f64 * 8.0 / secs / 1e6),
                format!("{:>9.0} %", ideal / secs * 100.0),
            )
        } else {
            (format!("{:>15}", "—"), format!("{:>11}", "—"))
        };
        let line = format!(
            "  {:<30} {:>7.2} s {rate} {eff}   {:<18} {}",
            r.label,
            secs,
            shares.join(" / "),
            r.check
        );
        if ok {
            println!("{line}");
        } else {
            println!("{}", ui.red(&line));
        }
    }
    println!(
        "  ideal with all {routers} uplinks: {ideal:.2} s  (efficiency = ideal time / measured time)"
    );
}

fn ping_min_ms(topo: &Topology, ns: &str, dst: Ipv4Addr) -> Result<f64> {
    let out = topo.exec(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &dst.to_string(),
        ],
    )?;
    out.lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no RTT in ping output: {out}"))
}

/// Terminal output: colours and a live, rewritten progress line on a tty;
/// plain lines every 2 s otherwise.
struct Ui {
    tty: bool,
}

impl Ui {
    fn new() -> Self {
        Ui {
            tty: std::io::stdout().is_terminal(),
        }
    }
    fn paint(&self, code: &str, s: &str) -> String {
        if self.tty {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    fn title(&self, s: &str) {
        println!("{}", self.paint("1", s));
    }
    fn section(&self, s: &str) {
        println!("\n{}", self.paint("1;34", s));
    }
    fn step(&self, what: &str, detail: &str) {
        println!("  {} {:<11} {detail}", self.paint("32", "✓"), what);
    }
    fn warn(&self, s: &str) {
        println!("  {} {s}", self.paint("33", "!"));
    }
    fn progress(&self, label: &str, got: u64, size: u64, rates: &[f64], t: f64, done: bool) {
        let frac = (got as f64 / size.max(1) as f64).clamp(0.0, 1.0);
        let width = 24;
        let fill = (frac * width as f64).round() as usize;
        let bar: String = "█".repeat(fill) + &"░".repeat(width - fill);
        let per: Vec<String> = rates
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{} {r:5.1}", router_letter(i).to_ascii_uppercase()))
            .collect();
        let line = format!(
            "  {label:<14.14} [{bar}] {:3.0}%  {:5.1}/{:.0} MiB  {} Mbit/s  {t:5.1} s",
            frac * 100.0,
            got as f64 / 1048576.0,
            size as f64 / 1048576.0,
            per.join("  "),
        );
        if self.tty {
            print!("\r\x1b[2K{line}");
            if done {
                println!();
            }
        } else {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
    }
}
