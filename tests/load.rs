//! netns tests of the daemon under load (root): accelerated downloads where
//! nothing slows the packets down (no shaping, no WAN delay), so the daemon
//! itself, its NFQUEUE and its raw-socket injection are the bottleneck.
//!
//! ```text
//! cargo build -p tandem && sudo -E cargo test -p tandem-integration --test load -- --nocapture --test-threads=1
//! ```
//!
//! These reproduce failures the cost benchmark found (docs/benchmarks.md,
//! "Where tandem falls short"): an unshaped accelerated download stalled
//! after ~50 MB, and one over 100 Mbit/s uplinks without delay was reset or
//! stalled. Assertions are about outcomes (every byte identical, the
//! download accelerated, B's uplink carried a share), never about time; a
//! stall is caught by the download's generous timeout and reported with the
//! daemon's status and both ends' socket state.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::world::{MIB, World, serial};
use common::*;
use tandem_lab::daemon::DaemonOptions;
use tandem_lab::topology::ORIGIN_IP;

/// A pair topology (client–A, A–B) without any shaping or WAN delay, or
/// with both uplinks shaped to `rate` (still without delay).
fn fast_pair(rate: Option<Rate>) -> TopologySpec {
    let mut spec = TopologySpec::pair(Vec::new());
    spec.down = rate;
    spec.up = rate;
    spec.mesh_rate = None;
    spec.delay_ms = 0;
    spec
}

/// What the stall looks like from both ends (printed when a download fails).
fn diagnose(w: &World) -> String {
    let ss = |ns: String| {
        w.topo
            .exec(&ns, &["ss", "-tnio", "state", "all"])
            .unwrap_or_else(|e| format!("ss failed: {e:#}"))
    };
    let status = w
        .daemons
        .status_json(0)
        .unwrap_or_else(|e| format!("status failed: {e:#}"));
    format!(
        "A's status:\n{status}\nclient sockets:\n{}\nA's sockets:\n{}\nA's log (tail):\n{}",
        ss(w.topo.client_ns(0)),
        ss(w.topo.router_ns(0)),
        tail(&w.daemons.proc(0).map(|p| p.log()).unwrap_or_default(), 40),
    )
}

/// User + system CPU seconds of process `pid` so far (clock ticks of 10 ms).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at 3.
    (ticks(11) + ticks(12)) / 100.0
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// How much of the body B's uplink must have carried.
#[derive(Clone, Copy)]
enum BShare {
    /// Shaped uplinks: B helps with at least 5 % of the body.
    AtLeastFivePercent,
    /// Unshaped: whoever fetches fastest wins, and on a CPU-bound 2-core
    /// machine A's own fetcher can take nearly all of it (measured 4.8 %
    /// for B in one CI run): B's share is not what this test is about.
    Any,
}

/// Downloads `name` (`size` bytes) through A with curl; on success checks
/// the bytes, that the download was accelerated, and B's share.
fn accelerated_download(w: &World, name: &str, size: u64, b_share: BShare) {
    let mut meter = w.wan_meter();
    let got = w.out(name);
    let url = format!("http://{ORIGIN_IP}/{name}");
    let pids: Vec<u32> = (0..2)
        .map(|i| w.daemons.proc(i).map_or(0, |p| p.pid()))
        .collect();
    let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_s(p)).collect();
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &url, &got).unwrap();
    // A download that makes no progress for 30 s has stalled: report the
    // state of both ends before the process is killed.
    let mut last = (0u64, Instant::now());
    let res = loop {
        if p.try_wait().unwrap().is_some() {
            break transfer::finish(&p, start, &got, Duration::from_secs(3600));
        }
        let n = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            let d = diagnose(w);
            p.kill();
            panic!("download stalled at {n} of {size} bytes for 30 s\n{d}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let d = match res {
        Ok(d) => d,
        Err(e) => panic!("download failed: {e:#}\n{}", diagnose(w)),
    };
    let cpu: Vec<f64> = pids.iter().zip(&cpu0).map(|(&p, c)| cpu_s(p) - c).collect();
    assert_same_bytes(&w.file(name), &got).unwrap();
    let s = w.status(0);
    let wan = meter.read();
    let gib = size as f64 / (1u64 << 30) as f64;
    let b_gib = wan.get(1).copied().unwrap_or(0) as f64 / (1u64 << 30) as f64;
    println!(
        "{size} bytes identical in {:.2} s ({:.0} Mbit/s); WAN bytes {}; daemon CPU A {:.2} s ({:.1} s/GiB downloaded), B {:.2} s ({:.1} s/GiB fetched); A: decisions {:?}, packets {:?}",
        d.elapsed.as_secs_f64(),
        d.mbit_per_s(),
        meter.describe(size),
        cpu[0],
        cpu[0] / gib,
        cpu[1],
        cpu[1] / b_gib.max(1e-9),
        s.decisions,
        s.packets
    );
    assert_eq!(s.decision("accelerated"), 1, "not accelerated: {}", s.raw);
    if matches!(b_share, BShare::AtLeastFivePercent) {
        assert!(
            wan.get(1).copied().unwrap_or(0) > size / 20,
            "B's uplink carried less than 5 % of the body: {wan:?}"
        );
    }
}

fn world(spec: TopologySpec, files: &[(&str, u64, u64)]) -> World {
    World::new(
        spec,
        OriginKind::Nginx,
        files,
        &DaemonOptions {
            neighbour_share: Some(1.0),
            ..DaemonOptions::default()
        },
    )
}

/// Unshaped, no delay: the client's LAN, A's and B's uplinks and the mesh
/// all run at veth speed. Measured with binary 8769df1 and HEAD 266071e:
/// the download stalled every time after ~45-55 MB (the progress deadlock,
/// fixed in 0536c39; the 100 Mbit/s test below covers the same fix).
///
/// Then, with the daemon behind at Gbit/s (a debug build; 1 486 to 63 618
/// packets waiting), one client ACK of the injected stream bypassed the
/// full fail-open queue and the WAN guard reset the client (5 of 5 runs at
/// 5bddf16 on a loaded machine; `queue_dropped` does not count fail-open
/// bypasses). The client's INVALID packets now go to a queue that is not
/// fail-open (`queue.number + 1`): 8 of 8 runs passed after that change.
#[test]
fn unshaped_accelerated_download_completes_identical() {
    let _serial = serial();
    let size = 256 * MIB;
    let w = world(fast_pair(None), &[("big.bin", size, 21)]);
    accelerated_download(&w, "big.bin", size, BShare::Any);
}

/// 100 Mbit/s uplinks, no delay. Measured with HEAD 266071e: stalled at
/// 12 MB (the client acknowledged nothing past the cut).
#[test]
fn hundred_mbit_no_delay_accelerated_download_completes_identical() {
    let _serial = serial();
    let size = 128 * MIB;
    let w = world(fast_pair(Some(Rate::mbit(100))), &[("big.bin", size, 24)]);
    accelerated_download(&w, "big.bin", size, BShare::AtLeastFivePercent);
}

/// The standard testbed (20+20 Mbit/s, 10 ms one-way WAN delay): the
/// outcome is asserted; the daemons' CPU per GiB is printed (the figure the
/// cost benchmark reports, measured here on a smaller download).
#[test]
fn standard_testbed_accelerated_download_completes_identical() {
    let _serial = serial();
    let size = 64 * MIB;
    let w = world(
        TopologySpec::pair(delay_command()),
        &[("big.bin", size, 25)],
    );
    accelerated_download(&w, "big.bin", size, BShare::AtLeastFivePercent);
}

/// Every source stops delivering mid-download while the client waits: B's
/// daemon is frozen (SIGSTOP) and A's own fetches to the origin are dropped
/// (A's OUTPUT; the client's forwarded packets are untouched). The client
/// must not hang: the daemon resets it (`session_silence` in the runtime,
/// 30 s by default, or a session error, whichever comes first), and what it
/// received is a correct prefix. 5 Mbit/s uplinks so that the freeze comes
/// long before the end.
#[test]
fn frozen_sources_reset_the_client_instead_of_hanging() {
    let _serial = serial();
    let size = 32 * MIB;
    let w = world(
        TopologySpec::pair(delay_command()),
        &[("big.bin", size, 27)],
    );
    for r in 0..2 {
        w.topo.shape_uplink(r, Way::Down, Rate::mbit(5)).unwrap();
    }
    let got = w.out("big.bin");
    let url = format!("http://{ORIGIN_IP}/big.bin");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &url, &got).unwrap();
    common::world::wait_for_bytes(&p, &got, 4 * MIB);
    assert_eq!(w.status(0).decision("accelerated"), 1);
    w.topo
        .exec(
            &w.topo.router_ns(0),
            &[
                "iptables", "-I", "OUTPUT", "-p", "tcp", "--dport", "80", "-j", "DROP",
            ],
        )
        .unwrap();
    w.daemons
        .proc(1)
        .unwrap()
        .signal(tandem_lab::Signal::SIGSTOP);
    let frozen_at = start.elapsed();
    let res = transfer::finish(&p, start, &got, frozen_at + Duration::from_secs(180));
    w.daemons
        .proc(1)
        .unwrap()
        .signal(tandem_lab::Signal::SIGCONT);
    let len = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
    match res {
        Ok(_) => panic!("the download completed although every source was frozen"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                !e.contains("did not finish"),
                "the client hangs: {e}\n{}",
                diagnose(&w)
            );
            assert_eq!(
                transfer::first_difference(&w.file("big.bin"), &got).unwrap(),
                Some(len),
                "the bytes before the failure are not the file's"
            );
            println!(
                "sources frozen at {:.1} s; the client was reset {:.1} s later with {len} bytes (a correct prefix): {e}",
                frozen_at.as_secs_f64(),
                (start.elapsed() - frozen_at).as_secs_f64()
            );
        }
    }
}

/// 20 concurrent 64 MiB downloads on the standard testbed (20+20 Mbit/s,
/// 10 ms): 8 accelerated (`splice.max_downloads`), 12 passed through.
/// Measured with binary 8769df1: every download stopped for 30 s ("source
/// stalled" in every session). Ignored by default: it moves 1.25 GiB
/// through 40 Mbit/s (about 5 minutes); run it with `--ignored`.
#[test]
#[ignore = "about 5 minutes; run with --ignored"]
fn twenty_concurrent_64mib_standard_all_identical() {
    let _serial = serial();
    let n = 20u64;
    let size = 64 * MIB;
    let files: Vec<(String, u64, u64)> = (0..n)
        .map(|k| (format!("c{k}.bin"), size, 300 + k))
        .collect();
    let refs: Vec<(&str, u64, u64)> = files.iter().map(|(f, s, k)| (f.as_str(), *s, *k)).collect();
    let w = World::new(
        TopologySpec::pair(delay_command()),
        OriginKind::Nginx,
        &refs,
        &DaemonOptions {
            neighbour_share: Some(1.0),
            ..DaemonOptions::default()
        },
    );
    let mut meter = w.wan_meter();
    let start = Instant::now();
    let procs = w.spawn_curls(files.iter().map(|(name, _, _)| name.as_str()));
    // Stall detection: no copy grew for 30 s while some still run.
    let mut last = (0u64, Instant::now());
    while procs.iter().any(|(p, _, _)| p.is_running()) {
        let total: u64 = procs
            .iter()
            .map(|(_, out, _)| std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
            .sum();
        if total != last.0 {
            last = (total, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            let d = diagnose(&w);
            for (p, _, _) in &procs {
                p.kill();
            }
            panic!("stalled: no copy grew for 30 s at {total} bytes in all\n{d}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for (p, out, name) in &procs {
        match transfer::finish(p, start, out, Duration::from_secs(1200)) {
            Ok(d) => {
                if let Err(e) = assert_same_bytes(&w.file(name), out) {
                    failures.push(format!("{name}: {e:#}"));
                }
                slowest = slowest.max(d.elapsed);
            }
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    let s = w.status(0);
    println!(
        "{n} x {} MiB: {} failed, last done after {:.1} s; WAN bytes {}; A: decisions {:?}, packets {:?}",
        size / MIB,
        failures.len(),
        slowest.as_secs_f64(),
        meter.describe(n * size),
        s.decisions,
        s.packets
    );
    assert!(
        failures.is_empty(),
        "{} of {n} downloads failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        diagnose(&w)
    );
    assert!(
        s.decision("accelerated") >= 1,
        "none accelerated: {}",
        s.raw
    );
}
