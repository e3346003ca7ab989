//! `first-packets-cost`: what `[queue] first_packets` costs traffic the
//! daemon does not accelerate, several values side by side in one run (root).
//!
//! The measurement of tandem-bench's ineligible-traffic cost row (a 1 MiB
//! download below the 4 MiB threshold with curl, nginx origin, time and time
//! to first byte, daemons off vs on), with the daemons started once per
//! `first_packets` value, in mirrored blocks (off, 12, 32, 32, 12, off for
//! `--values 12,32`) so that a drift of the machine's load hits every
//! condition alike; one unrecorded warm-up download per block. Prints the
//! medians, each condition's ratio to "off" and its TTFB added. A
//! benchmark: it asserts nothing.
//!
//! ```text
//! cargo build -p tandem -p tandem-integration --bins
//! sudo first-packets-cost --tandem target/debug/tandem --values 12,32 --per-block 10
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tandem_lab::daemon::{DaemonOptions, Daemons};
use tandem_lab::origin::{OriginKind, start_origin};
use tandem_lab::topology::{ORIGIN_IP, Topology, TopologySpec, router_letter};
use tandem_lab::transfer::write_random_file;

const MIB: u64 = 1 << 20;
const MARK: &str = "FPCOST";

#[derive(Parser)]
#[command(about = "ineligible-traffic cost of several queue.first_packets values, in one run")]
struct Args {
    /// The tandem binary (daemon and delay line).
    #[arg(long)]
    tandem: PathBuf,
    /// `first_packets` values to compare (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![12u32, 32])]
    values: Vec<u32>,
    /// Recorded downloads per block (each condition runs in two blocks).
    #[arg(long, default_value_t = 10)]
    per_block: usize,
    /// Testbeds: `shaped` (20 Mbit/s + 10 ms, the standard testbed) and/or
    /// `unshaped` (no shaping, no delay).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["shaped".to_string(), "unshaped".to_string()])]
    testbeds: Vec<String>,
}

/// One condition's samples: daemons off (`None`) or on with a value.
struct Samples {
    first_packets: Option<u32>,
    total_s: Vec<f64>,
    ttfb_s: Vec<f64>,
    /// Packets A's daemon was handed (its `packets.queued`) and downloads.
    queued: (u64, u64),
}

/// `"key": N` from `tandem status --json` (no JSON crate in this package).
fn json_number(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One curl download from the client behind A: (time to first byte, total)
/// by curl's own clock.
fn curl_once(topo: &Topology, url: &str, out: &Path, k: usize) -> Result<(f64, f64)> {
    let out_s = out.display().to_string();
    let w = format!("\n{MARK} %{{time_starttransfer}} %{{time_total}} %{{size_download}}\n");
    let p = topo.spawn(
        &topo.client_ns(0),
        &format!("fpcost-curl-{k}"),
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "-o",
            &out_s,
            "-w",
            &w,
            url,
        ],
    )?;
    match p.wait_timeout(Duration::from_secs(70))? {
        Some(s) if s.success() => {}
        Some(s) => bail!("curl exited ({s}): {}", p.log()),
        None => {
            p.kill();
            bail!("curl did not finish");
        }
    }
    let log = p.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with(MARK))
        .with_context(|| format!("no timing line from curl: {log}"))?;
    let f: Vec<f64> = line[MARK.len()..]
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let [ttfb, total, size] = f[..] else {
        bail!("bad timing line {line:?}");
    };
    if size as u64 != MIB {
        bail!("downloaded {size} bytes, want {MIB}");
    }
    let _ = std::fs::remove_file(out);
    Ok((ttfb, total))
}

/// Starts daemons on A and B with `first_packets` (rules included).
fn start_daemons(topo: &Topology, exe: &Path, first_packets: u32) -> Result<Daemons> {
    // `tandem keygen` refuses to overwrite the previous block's keys.
    let _ = std::fs::remove_dir_all(topo.workdir().join("daemons"));
    let opts = DaemonOptions {
        min_size: 4 * MIB,
        neighbour_share: Some(1.0),
        first_packets: Some(first_packets),
        ..DaemonOptions::default()
    };
    Daemons::start(topo, exe, &[0, 1], &opts)
}

/// Stops both daemons and removes their firewall rules (the "off"
/// condition has neither).
fn stop_daemons(topo: &Topology, d: Daemons) -> Result<()> {
    for i in 0..2 {
        d.stop(i);
        let rules = topo
            .workdir()
            .join("daemons")
            .join(format!("rules-{}.sh", router_letter(i)));
        topo.exec(
            &topo.router_ns(i),
            &[OsString::from("sh"), rules.into_os_string(), "stop".into()],
        )?;
    }
    Ok(())
}

fn testbed(args: &Args, name: &str) -> Result<()> {
    let exe = &args.tandem;
    let spec = match name {
        "shaped" => TopologySpec::pair(vec![exe.as_os_str().to_owned(), "delayline".into()]),
        "unshaped" => {
            let mut s = TopologySpec::pair(Vec::new());
            s.down = None;
            s.up = None;
            s.mesh_rate = None;
            s.delay_ms = 0;
            s
        }
        other => bail!("unknown testbed {other:?} (shaped, unshaped)"),
    };
    let topo = Topology::build(spec)?;
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www)?;
    write_random_file(&www.join("small.bin"), MIB, 11)?;
    let _origin = start_origin(&topo, &OriginKind::Nginx, &www)?;
    let url = format!("http://{ORIGIN_IP}/small.bin");
    let out = topo.workdir().join("small.out");

    let mut conds: Vec<Samples> = std::iter::once(None)
        .chain(args.values.iter().copied().map(Some))
        .map(|first_packets| Samples {
            first_packets,
            total_s: Vec::new(),
            ttfb_s: Vec::new(),
            queued: (0, 0),
        })
        .collect();
    let forward: Vec<usize> = (0..conds.len()).collect();
    let order: Vec<usize> = forward
        .iter()
        .copied()
        .chain(forward.iter().rev().copied())
        .collect();
    let mut k = 0;
    for c in order {
        let daemons = match conds[c].first_packets {
            Some(n) => Some(start_daemons(&topo, exe, n)?),
            None => None,
        };
        for i in 0..=args.per_block {
            let (ttfb, total) = curl_once(&topo, &url, &out, k)?;
            k += 1;
            if i > 0 {
                conds[c].ttfb_s.push(ttfb);
                conds[c].total_s.push(total);
            }
        }
        if let Some(d) = daemons {
            let status = d.status_json(0)?;
            let queued = json_number(&status, "queued")
                .with_context(|| format!("no packets.queued in {status}"))?;
            conds[c].queued.0 += queued;
            conds[c].queued.1 += args.per_block as u64 + 1;
            stop_daemons(&topo, d)?;
        }
    }

    let off_total = median(&conds[0].total_s);
    let off_ttfb = median(&conds[0].ttfb_s);
    println!(
        "\n1 MiB below the threshold, {name}, {} downloads per condition (load {}):",
        conds[0].total_s.len(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("  condition          time s    ratio   TTFB ms  added ms  queued/download");
    for c in &conds {
        let label = c
            .first_packets
            .map_or("no daemon".to_string(), |n| format!("first_packets {n}"));
        let t = median(&c.total_s);
        let f = median(&c.ttfb_s);
        let per_download = if c.queued.1 > 0 {
            format!("{:.1}", c.queued.0 as f64 / c.queued.1 as f64)
        } else {
            "-".to_string()
        };
        println!(
            "  {label:<17} {t:>7.4}  {:>7.4}  {:>8.2}  {:>+8.2}  {per_download:>15}",
            t / off_total,
            f * 1e3,
            (f - off_ttfb) * 1e3
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    tandem_lab::netns::require_root()?;
    for t in &args.testbeds {
        testbed(&args, t)?;
    }
    Ok(())
}
