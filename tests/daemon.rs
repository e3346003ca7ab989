//! netns tests against the tandem daemon (root). They are `#[ignore]`d
//! until `tandem run` works (crates/tandem); run them with
//!
//! ```text
//! cargo build -p tandem && sudo -E cargo test -p tandem-integration --test daemon -- --ignored
//! ```
//!
//! The daemon binary comes from `$TANDEM_EXE` or the target directory.
//! Assertions are about bytes, never about time: "B helped" means B's WAN
//! carried a real share of the body, measured from outside the daemons.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use tandem_lab::daemon::{DaemonOptions, Daemons};
use tandem_lab::netns::IfCounters;
use tandem_lab::topology::ORIGIN_IP;

const MIB: u64 = 1 << 20;

struct World {
    topo: Topology,
    _origin: Origin,
    file: PathBuf,
    url: String,
    daemons: Daemons,
}

/// Topology + origin (the tandem binary's own, or nginx) serving one random
/// file + daemons on every router.
fn world(spec: TopologySpec, origin: OriginKind, size: u64) -> World {
    require_root();
    let topo = Topology::build(spec).unwrap();
    let (www, file) = www_with_file(&topo, "video.mp4", size, 42);
    let origin = start_origin(&topo, &origin, &www).unwrap();
    let url = origin.url("video.mp4");
    let all: Vec<usize> = (0..topo.spec().routers).collect();
    let daemons = Daemons::start(&topo, &tandem_exe(), &all, &DaemonOptions::default()).unwrap();
    World {
        topo,
        _origin: origin,
        file,
        url,
        daemons,
    }
}

fn tandem_origin() -> OriginKind {
    OriginKind::Tandem {
        exe: tandem_exe(),
        extra: Vec::new(),
    }
}

fn wan_rx(topo: &Topology, router: usize) -> IfCounters {
    topo.counters(&topo.router_ns(router), "wan0").unwrap()
}

/// Waits until `path` has at least `bytes` bytes (or the download ended).
fn wait_for_bytes(p: &tandem_lab::Proc, path: &Path, bytes: u64) {
    let start = Instant::now();
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < bytes && p.is_running() {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn accelerated_download_is_identical_and_b_carries_a_share() {
    for (tool, origin) in [
        (Tool::Curl, tandem_origin()),
        (Tool::Wget, OriginKind::Nginx),
        (Tool::Aria2, tandem_origin()),
    ] {
        let w = world(TopologySpec::pair(delay_command()), origin, 32 * MIB);
        let mut b = wan_rx(&w.topo, 1);
        let b0 = b.read().unwrap().rx_bytes;
        let cap_wan =
            Capture::start(&w.topo, &w.topo.router_ns(0), "wan0", "a-wan", Some("tcp")).unwrap();
        let cap_lan =
            Capture::start(&w.topo, &w.topo.client_ns(0), "eth0", "client", Some("tcp")).unwrap();
        let got = w.topo.workdir().join("dl").join("video.mp4");
        std::fs::create_dir_all(got.parent().unwrap()).unwrap();
        let d = download(&w.topo, 0, tool, &w.url, &got, Duration::from_secs(300)).unwrap();
        let wan = cap_wan.stop().unwrap();
        let lan = cap_lan.stop().unwrap();
        assert_same_bytes(&w.file, &got).unwrap();
        let from_b = b.read().unwrap().rx_bytes - b0;
        println!(
            "{tool:?}: {:.2} s ({:.1} Mbit/s), B's WAN carried {:.0}% of the body; A status: {}",
            d.elapsed.as_secs_f64(),
            d.mbit_per_s(),
            from_b as f64 * 100.0 / (32 * MIB) as f64,
            w.daemons.status_json(0).unwrap_or_default()
        );
        assert!(from_b > 32 * MIB / 5, "B carried only {from_b} bytes");
        capture::check_no_lan_source(&wan).unwrap();
        capture::check_expert(&lan).unwrap();
        capture::check_expert(&wan).unwrap();
    }
}

#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn two_hop_neighbour_c_helps_through_b() {
    let w = world(
        TopologySpec::standard(delay_command()),
        tandem_origin(),
        32 * MIB,
    );
    let mut c = wan_rx(&w.topo, 2);
    let c0 = c.read().unwrap().rx_bytes;
    let got = w.topo.workdir().join("got.mp4");
    download(
        &w.topo,
        0,
        Tool::Curl,
        &w.url,
        &got,
        Duration::from_secs(300),
    )
    .unwrap();
    assert_same_bytes(&w.file, &got).unwrap();
    let from_c = c.read().unwrap().rx_bytes - c0;
    assert!(from_c > 32 * MIB / 10, "C carried only {from_c} bytes");
}

#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn neighbour_killed_mid_download_is_still_identical() {
    let w = world(
        TopologySpec::pair(delay_command()),
        tandem_origin(),
        32 * MIB,
    );
    let got = w.topo.workdir().join("got.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url, &got).unwrap();
    wait_for_bytes(&p, &got, 8 * MIB);
    w.daemons.stop(1);
    transfer::finish(&p, start, &got, Duration::from_secs(300)).unwrap();
    assert_same_bytes(&w.file, &got).unwrap();
}

#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn mesh_link_cut_mid_download_is_still_identical() {
    let w = world(
        TopologySpec::pair(delay_command()),
        tandem_origin(),
        32 * MIB,
    );
    let got = w.topo.workdir().join("got.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url, &got).unwrap();
    wait_for_bytes(&p, &got, 8 * MIB);
    w.topo
        .add_loss(&w.topo.router_ns(0), "mesh-b", Dir::Ingress, 1.0)
        .unwrap();
    w.topo
        .add_loss(&w.topo.router_ns(0), "mesh-b", Dir::Egress, 1.0)
        .unwrap();
    transfer::finish(&p, start, &got, Duration::from_secs(300)).unwrap();
    assert_same_bytes(&w.file, &got).unwrap();
}

/// The file changes at the origin mid-download: the client must get either
/// the complete old file or a failed transfer (reset) — never a mixture.
#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn file_replaced_mid_download_is_never_corrupt() {
    let w = world(
        TopologySpec::pair(delay_command()),
        tandem_origin(),
        32 * MIB,
    );
    let old = w.topo.workdir().join("old.mp4");
    std::fs::copy(&w.file, &old).unwrap();
    let got = w.topo.workdir().join("got.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url, &got).unwrap();
    wait_for_bytes(&p, &got, 8 * MIB);
    // New content, new mtime (a minute later: a new Last-Modified and ETag).
    let tmp = w.topo.workdir().join("www").join(".new");
    write_random_file(&tmp, 32 * MIB, 43).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    std::fs::rename(&tmp, &w.file).unwrap();
    match transfer::finish(&p, start, &got, Duration::from_secs(300)) {
        Ok(_) => assert_same_bytes(&old, &got).unwrap(),
        Err(e) => println!("client saw a clean failure: {e:#}"),
    }
}

#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn loss_on_uplinks_and_mesh_is_still_identical() {
    let w = world(
        TopologySpec::pair(delay_command()),
        tandem_origin(),
        32 * MIB,
    );
    for r in 0..2 {
        w.topo.add_uplink_loss(r, Way::Down, 0.01).unwrap();
        w.topo.add_uplink_loss(r, Way::Up, 0.01).unwrap();
    }
    w.topo
        .add_loss(&w.topo.router_ns(0), "mesh-b", Dir::Ingress, 0.01)
        .unwrap();
    w.topo
        .add_loss(&w.topo.router_ns(1), "mesh-a", Dir::Ingress, 0.01)
        .unwrap();
    let cap = Capture::start(&w.topo, &w.topo.router_ns(0), "wan0", "a-wan", Some("tcp")).unwrap();
    let got = w.topo.workdir().join("got.mp4");
    download(
        &w.topo,
        0,
        Tool::Curl,
        &w.url,
        &got,
        Duration::from_secs(600),
    )
    .unwrap();
    let pcap = cap.stop().unwrap();
    assert_same_bytes(&w.file, &got).unwrap();
    capture::check_no_lan_source(&pcap).unwrap();
}

#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn twenty_concurrent_downloads_are_all_identical() {
    require_root();
    let topo = Topology::build(TopologySpec::pair(delay_command())).unwrap();
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let files: Vec<PathBuf> = (0..20)
        .map(|k| {
            let f = www.join(format!("f{k}.bin"));
            write_random_file(&f, 6 * MIB, 100 + k).unwrap();
            f
        })
        .collect();
    let _origin = start_origin(&topo, &tandem_origin(), &www).unwrap();
    let _daemons =
        Daemons::start(&topo, &tandem_exe(), &[0, 1], &DaemonOptions::default()).unwrap();
    let start = Instant::now();
    let procs: Vec<_> = (0..20)
        .map(|k| {
            let out = topo.workdir().join(format!("got{k}.bin"));
            let url = format!("http://{ORIGIN_IP}/f{k}.bin");
            (
                transfer::spawn_download(&topo, 0, Tool::Curl, &url, &out).unwrap(),
                out,
            )
        })
        .collect();
    for (k, (p, out)) in procs.iter().enumerate() {
        transfer::finish(p, start, out, Duration::from_secs(600)).unwrap();
        assert_same_bytes(&files[k], out).unwrap();
    }
}

/// A response tandem must not touch (origin without Range support) passes
/// through byte-identical, and B fetches nothing.
#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn ineligible_response_passes_through_untouched() {
    let w = world(
        TopologySpec::pair(delay_command()),
        OriginKind::Tandem {
            exe: tandem_exe(),
            extra: vec!["--no-ranges".into()],
        },
        16 * MIB,
    );
    let mut b = wan_rx(&w.topo, 1);
    let b0 = b.read().unwrap().rx_bytes;
    let got = w.topo.workdir().join("got.mp4");
    download(
        &w.topo,
        0,
        Tool::Curl,
        &w.url,
        &got,
        Duration::from_secs(300),
    )
    .unwrap();
    assert_same_bytes(&w.file, &got).unwrap();
    let from_b = b.read().unwrap().rx_bytes - b0;
    assert!(
        from_b < MIB / 4,
        "B fetched {from_b} bytes for an ineligible response"
    );
}

/// A's daemon dies mid-download: the client gets the whole file or a clean
/// failure, and no LAN-addressed packet leaves A's WAN meanwhile.
#[test]
#[ignore = "needs the tandem daemon runtime (`tandem run`)"]
fn daemon_killed_mid_download_never_corrupts_or_leaks() {
    let w = world(
        TopologySpec::pair(delay_command()),
        tandem_origin(),
        32 * MIB,
    );
    let cap = Capture::start(&w.topo, &w.topo.router_ns(0), "wan0", "a-wan", None).unwrap();
    let got = w.topo.workdir().join("got.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url, &got).unwrap();
    wait_for_bytes(&p, &got, 12 * MIB);
    w.daemons
        .proc(0)
        .unwrap()
        .signal(tandem_lab::Signal::SIGKILL);
    // 32 MiB over one 20 Mbit/s uplink take ~15 s; 120 s means stuck.
    match transfer::finish(&p, start, &got, Duration::from_secs(120)) {
        Ok(_) => assert_same_bytes(&w.file, &got).unwrap(),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                !e.contains("did not finish"),
                "the client hangs instead of failing: {e}"
            );
            println!("client saw a clean failure: {e}");
        }
    }
    let pcap = cap.stop().unwrap();
    capture::check_no_lan_source(&pcap).unwrap();
}

/// The project's real firewall rules (`tandem rules iptables`) on A with no
/// daemon bound to the queue: downloads still work (fail-open through
/// `--queue-bypass`), byte-identical, and nothing LAN-addressed leaves A's WAN.
/// Needs only the tandem binary, not the daemon runtime.
#[test]
#[ignore = "needs the tandem binary (`cargo build -p tandem`, or TANDEM_EXE)"]
fn real_rules_without_daemon_fail_open() {
    use tandem_lab::daemon::{install_rules, lab_spec, write_config};
    require_root();
    let topo = Topology::build(TopologySpec::pair(delay_command())).unwrap();
    let dir = topo.workdir().join("daemons");
    std::fs::create_dir_all(&dir).unwrap();
    // Placeholder keys: the rules do not depend on them.
    let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".to_string();
    std::fs::write(dir.join("key-a"), &key).unwrap();
    let spec = lab_spec(
        &topo,
        0,
        &dir,
        &[key.clone(), key],
        &DaemonOptions::default(),
    );
    let conf = write_config(&topo, &spec).unwrap();
    install_rules(&topo, &tandem_exe(), 0, &conf).unwrap();
    let (www, file) = www_with_file(&topo, "video.mp4", 4 * MIB, 9);
    let _origin = start_origin(&topo, &tandem_origin(), &www).unwrap();
    let cap = Capture::start(&topo, &topo.router_ns(0), "wan0", "a-wan", None).unwrap();
    let got = topo.workdir().join("got.mp4");
    let url = format!("http://{ORIGIN_IP}/video.mp4");
    download(&topo, 0, Tool::Curl, &url, &got, Duration::from_secs(120)).unwrap();
    let pcap = cap.stop().unwrap();
    assert_same_bytes(&file, &got).unwrap();
    capture::check_no_lan_source(&pcap).unwrap();
    capture::check_expert(&pcap).unwrap();
    let rules = topo
        .exec(
            &topo.router_ns(0),
            &[
                "iptables", "-w", "-t", "mangle", "-L", "TANDEM", "-v", "-n", "-x",
            ],
        )
        .unwrap();
    let queued: u64 = rules
        .lines()
        .filter(|l| l.contains("NFQUEUE"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(queued > 0, "no packet met a queue rule:\n{rules}");
}
