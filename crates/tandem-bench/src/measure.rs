//! Timing one download (or several at once) from the client behind A with
//! curl, while sampling the bytes entering every router's WAN.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tandem_lab::netns::IfCounters;
use tandem_lab::topology::Proc;
use tandem_lab::transfer;
use tandem_lab::{Rate, Topology, Way};

/// Marker of curl's `--write-out` line in its log.
const MARK: &str = "BENCHW";

/// curl's own timings (they exclude process start-up and `ip netns exec`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurlTimes {
    /// Seconds until the first body byte.
    pub ttfb_s: f64,
    /// Seconds until the end.
    pub total_s: f64,
    /// Body bytes received.
    pub bytes: u64,
}

/// Parses the `--write-out` line of [`curl_argv`] from curl's output.
pub fn parse_curl(log: &str) -> Option<CurlTimes> {
    let line = log.lines().rev().find(|l| l.starts_with(MARK))?;
    let mut f = line[MARK.len()..].split_whitespace();
    let ttfb_s = f.next()?.parse().ok()?;
    let total_s = f.next()?.parse().ok()?;
    let bytes = f.next()?.parse::<f64>().ok()? as u64;
    Some(CurlTimes {
        ttfb_s,
        total_s,
        bytes,
    })
}

/// curl downloading `url` to `out`, printing its timings on a marked line.
pub fn curl_argv(url: &str, out: &Path, max_time_s: u64) -> Vec<String> {
    vec![
        "curl".into(),
        "-sS".into(),
        "--fail".into(),
        "--max-time".into(),
        max_time_s.to_string(),
        "-o".into(),
        out.display().to_string(),
        "-w".into(),
        format!("\n{MARK} %{{time_starttransfer}} %{{time_total}} %{{size_download}}\n"),
        url.into(),
    ]
}

/// A rate change applied during a download.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    /// Seconds after the start.
    pub at_s: f64,
    /// Router whose downlink is re-shaped.
    pub router: usize,
    /// New rate.
    pub rate: Rate,
}

/// How to run [`download`].
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    /// Downloads started at once.
    pub count: usize,
    /// Give up after this long.
    pub timeout: Duration,
    /// Give up when no output file grew for this long (a stalled download).
    pub stall: Duration,
    /// Re-shape a downlink during the run (the caller restores it).
    pub change: Option<Change>,
}

impl Opts {
    /// One download, no rate change, stall limit 30 s.
    pub fn one(timeout: Duration) -> Self {
        Opts {
            count: 1,
            timeout,
            stall: Duration::from_secs(30),
            change: None,
        }
    }
}

/// One measured download.
#[derive(Clone, Debug)]
pub struct Measured {
    /// curl's timings (None if curl failed).
    pub curl: Option<CurlTimes>,
    /// Wall-clock seconds from spawn to exit (includes start-up).
    pub wall_s: f64,
    /// Bytes that entered each router's WAN during the download.
    pub per_source: Vec<u64>,
    /// (seconds, Mbit/s entering each router's WAN) samples.
    pub samples: Vec<(f64, Vec<f64>)>,
    /// Why the download does not count: curl failed or the bytes differ.
    pub error: Option<String>,
}

fn wan_counters(topo: &Topology) -> Result<Vec<IfCounters>> {
    (0..topo.spec().routers)
        .map(|i| IfCounters::open(&topo.router_ns(i), "wan0"))
        .collect()
}

fn read_all(c: &mut [IfCounters]) -> Result<Vec<u64>> {
    c.iter_mut().map(|c| c.read().map(|s| s.rx_bytes)).collect()
}

/// Downloads `url` `opts.count` times at once from the client behind A
/// into `dir`, compares every copy with `expected`, and deletes the copies.
/// A download that times out or stalls is killed and reported in
/// [`Measured::error`].
pub fn download(
    topo: &Topology,
    url: &str,
    expected: &Path,
    dir: &Path,
    opts: Opts,
) -> Result<Vec<Measured>> {
    let Opts {
        count,
        timeout,
        stall,
        change,
    } = opts;
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    std::fs::create_dir_all(dir)?;
    let mut wan = wan_counters(topo)?;
    let base = read_all(&mut wan)?;
    let start = Instant::now();
    let mut procs: Vec<(Proc, PathBuf, Option<f64>)> = Vec::new();
    for _ in 0..count {
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = dir.join(format!("dl-{k}"));
        let p = topo.spawn(
            &topo.client_ns(0),
            &format!("curl-{k}"),
            &curl_argv(url, &out, timeout.as_secs().max(1)),
        )?;
        procs.push((p, out, None));
    }
    let mut prev = base.clone();
    let mut prev_t = 0.0;
    let n = base.len();
    let mut samples = vec![(0.0, vec![0.0; n])];
    let mut changed = change.is_none();
    let mut progress = (0u64, Instant::now());
    let mut aborted: Option<String> = None;
    loop {
        let mut running = 0;
        for (p, _, end) in &mut procs {
            if end.is_none() {
                if p.try_wait()?.is_some() {
                    *end = Some(start.elapsed().as_secs_f64());
                } else {
                    running += 1;
                }
            }
        }
        let t = start.elapsed().as_secs_f64();
        if !changed
            && let Some(c) = change
            && t >= c.at_s
        {
            topo.shape_uplink(c.router, Way::Down, c.rate)?;
            changed = true;
        }
        let now = read_all(&mut wan)?;
        let dt = t - prev_t;
        if running > 0 || dt >= 0.05 {
            let rates = now
                .iter()
                .zip(&prev)
                .map(|(a, b)| a.saturating_sub(*b) as f64 * 8.0 / dt.max(1e-3) / 1e6)
                .collect();
            samples.push((t, rates));
            prev = now;
            prev_t = t;
        }
        if running == 0 {
            break;
        }
        let got: u64 = procs
            .iter()
            .map(|(_, o, _)| std::fs::metadata(o).map(|m| m.len()).unwrap_or(0))
            .sum();
        if got > progress.0 {
            progress = (got, Instant::now());
        }
        let why = if start.elapsed() > timeout {
            Some(format!("did not finish within {timeout:?}"))
        } else if progress.1.elapsed() > stall {
            Some(format!(
                "STALLED: no byte for {stall:?} at {got} bytes (all copies together)"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            for (p, _, _) in &procs {
                p.kill();
            }
            aborted = Some(why);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = read_all(&mut wan)?;
    let per_source: Vec<u64> = now.iter().zip(&base).map(|(a, b)| a - b).collect();
    let mut res = Vec::new();
    for (p, out, end) in procs {
        let log = p.log();
        let ok = matches!(p.try_wait()?, Some(s) if s.success());
        let curl = parse_curl(&log);
        let error = if let Some(a) = &aborted {
            Some(a.clone())
        } else if !ok || curl.is_none() {
            Some(format!(
                "curl failed: {}",
                log.lines()
                    .find(|l| !l.starts_with(MARK) && !l.trim().is_empty())
                    .unwrap_or("")
            ))
        } else {
            transfer::first_difference(expected, &out)
                .with_context(|| format!("comparing {}", out.display()))?
                .map(|off| format!("DIFFERS at byte {off}"))
        };
        let _ = std::fs::remove_file(&out);
        res.push(Measured {
            curl,
            wall_s: end.unwrap_or(0.0),
            per_source: per_source.clone(),
            samples: samples.clone(),
            error,
        });
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_write_out_is_parsed_from_the_last_marked_line() {
        let log = "\nBENCHW 0.021 3.540000 16777216\n";
        let t = parse_curl(log).unwrap();
        assert_eq!(t.bytes, 16_777_216);
        assert!((t.ttfb_s - 0.021).abs() < 1e-12 && (t.total_s - 3.54).abs() < 1e-12);
        assert!(parse_curl("curl: (7) Failed to connect").is_none());
        assert!(parse_curl("BENCHW x y z").is_none());
        // The argv asks curl for exactly what the parser reads.
        let a = curl_argv("http://203.0.113.10/f", Path::new("/tmp/o"), 60);
        assert!(
            a.iter()
                .any(|s| s.contains("%{time_starttransfer} %{time_total}"))
        );
        assert_eq!(a.last().unwrap(), "http://203.0.113.10/f");
    }
}
