//! netns tests against the tandem daemon (root): accelerated downloads and
//! what may go wrong during one. Pass-through cases are in
//! `passthrough.rs`.
//!
//! ```text
//! cargo build -p tandem && sudo -E cargo test -p tandem-integration --test daemon -- --nocapture
//! ```
//!
//! The daemon binary comes from `$TANDEM_EXE` or the target directory
//! (`cargo build -p tandem`). Every test builds and removes its own
//! namespaces (also when it fails: the topology's `Drop`), and holds
//! [`world::serial`] so the tests run one at a time (2 cores).
//!
//! Assertions are about bytes, never about time: "B helped" means B's WAN
//! carried a real share of the body, measured from outside the daemons.
//! Times, bytes per router WAN, decisions and memory are printed
//! (`--nocapture`).
//!
//! Clients and origins are spread over the tests: curl, wget and aria2c (one
//! connection); tandem's own origin and nginx.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::world::{
    MIB, QueueReport, Status, World, serial, tandem_origin, vm_hwm, wait_for_bytes,
};
use common::*;
use tandem_lab::Signal;
use tandem_lab::daemon::DaemonOptions;
use tandem_lab::topology::ORIGIN_IP;

/// The daemon's `[planner] window` default (bytes buffered per download).
const PLANNER_WINDOW: u64 = 8 * MIB;
/// The daemon's `[splice] max_downloads` default.
const MAX_DOWNLOADS: u64 = 8;
/// The largest `[queue] first_packets` the daemon accepts.
const FIRST_PACKETS_MAX: u32 = 64;
/// Memory of the daemon apart from download buffers (debug build: code,
/// tokio runtime, flow table, peer links, allocator slack), stated here and
/// checked by `twenty_concurrent_downloads_are_identical_and_memory_bounded`
/// (measured 2026-11-21: VmHWM 9.4 MiB idle after start-up).
const RSS_BASE: u64 = 32 * MIB;

fn print_status(what: &str, s: &Status) {
    println!(
        "{what}: decisions {:?}, packets {:?}, peer bytes {:?}",
        s.decisions, s.packets, s.peer_bytes
    );
}

/// Downloads `name` with `tool` from the client behind A, with captures on
/// A's WAN and on the client; checks bytes and captures and returns the
/// result line.
fn download_checked(
    w: &World,
    tool: Tool,
    name: &str,
    size: u64,
) -> (transfer::Download, Vec<u64>) {
    let mut meter = w.wan_meter();
    let got = w.out(name);
    let d = download(
        &w.topo,
        0,
        tool,
        &w.url(name),
        &got,
        Duration::from_secs(300),
    )
    .unwrap();
    assert_same_bytes(&w.file(name), &got).unwrap();
    let wan = meter.read();
    println!(
        "{tool:?}: {size} bytes identical in {:.2} s ({:.1} Mbit/s); WAN bytes {}",
        d.elapsed.as_secs_f64(),
        d.mbit_per_s(),
        meter.describe(size)
    );
    (d, wan)
}

/// Issue item: a large eligible file via one neighbour (curl, tandem's
/// origin). B's WAN carries a real share of the body and A's daemon reports
/// the download accelerated with bytes from peer `b`.
#[test]
fn large_file_via_one_neighbour_is_identical_and_b_helps() {
    let _serial = serial();
    let size = 32 * MIB;
    let w = World::pair(tandem_origin(), &[("video.mp4", size, 42)]);
    let (_, wan) = download_checked(&w, Tool::Curl, "video.mp4", size);
    let s = w.status(0);
    print_status("A", &s);
    assert_eq!(s.decision("accelerated"), 1, "{}", s.raw);
    assert!(wan[1] > size / 5, "B's WAN carried only {} bytes", wan[1]);
    assert!(
        s.peer_bytes.get("b").copied().unwrap_or(0) > size / 5,
        "A counts too few bytes from b: {}",
        s.raw
    );
}

/// Issue item: via two neighbours including the 2-hop one (standard
/// topology A–B–C; C is reachable only through B's daemon). aria2c (one
/// connection) against nginx. B and C both carry a share.
#[test]
fn large_file_via_two_neighbours_including_two_hop() {
    let _serial = serial();
    let size = 32 * MIB;
    let w = World::new(
        TopologySpec::standard(delay_command()),
        OriginKind::Nginx,
        &[("video.mp4", size, 43)],
        &DaemonOptions::default(),
    );
    let (_, wan) = download_checked(&w, Tool::Aria2, "video.mp4", size);
    print_status("A", &w.status(0));
    print_status("B", &w.status(1));
    assert_eq!(w.status(0).decision("accelerated"), 1);
    assert!(wan[1] > size / 10, "B's WAN carried only {} bytes", wan[1]);
    assert!(wan[2] > size / 10, "C's WAN carried only {} bytes", wan[2]);
}

/// Issue item: captures during an accelerated download (wget, nginx). On
/// A's WAN no packet has a LAN (192.0.2.0/24) source; on the client the TCP
/// stream is well formed: no bad checksum, nothing malformed, no segment
/// beyond the client's advertised receive window.
#[test]
fn captures_show_no_lan_source_on_wan_and_a_clean_client_stream() {
    let _serial = serial();
    let size = 24 * MIB;
    let w = World::pair(OriginKind::Nginx, &[("video.mp4", size, 44)]);
    let cap_wan = Cap::start(&w.topo, &w.topo.router_ns(0), "wan0", "a-wan", None);
    let cap_cl = Cap::start(&w.topo, &w.topo.client_ns(0), "eth0", "client", Some("tcp"));
    let (_, wan) = download_checked(&w, Tool::Wget, "video.mp4", size);
    let wan_pcap = cap_wan.stop();
    let cl_pcap = cap_cl.stop();
    let s = w.status(0);
    print_status("A", &s);
    assert_eq!(s.decision("accelerated"), 1, "{}", s.raw);
    assert!(s.packet("injected") > 0, "nothing injected: {}", s.raw);
    assert!(wan[1] > size / 10, "B's WAN carried only {} bytes", wan[1]);
    capture::check_no_lan_source(&wan_pcap).unwrap();
    let judged_client = check_well_formed(&cl_pcap);
    let judged_wan = check_well_formed(&wan_pcap);
    let lan_sources = capture::matching(&wan_pcap, capture::LAN_SOURCE_FILTER).unwrap();
    println!(
        "captures: A's WAN {} frames ({} with a LAN source), client {} frames; \
         data segments judged against the receive window: client {judged_client}, A's WAN {judged_wan}",
        capture::frame_count(&wan_pcap).unwrap(),
        lan_sources.len(),
        capture::frame_count(&cl_pcap).unwrap(),
    );
    assert!(
        judged_client > 1000,
        "the window check judged only {judged_client} client-bound segments"
    );
}

/// Issue item: the neighbour's daemon is SIGKILLed mid-download (after
/// 8 MiB reached the client): the download completes, identical.
#[test]
fn neighbour_killed_mid_download_is_still_identical() {
    let _serial = serial();
    let size = 32 * MIB;
    let w = World::pair(tandem_origin(), &[("video.mp4", size, 45)]);
    let mut meter = w.wan_meter();
    let got = w.out("video.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url("video.mp4"), &got).unwrap();
    wait_for_bytes(&p, &got, 8 * MIB);
    let at_kill = meter.read();
    let killed_at = start.elapsed();
    w.daemons.proc(1).unwrap().signal(Signal::SIGKILL);
    let d = transfer::finish(&p, start, &got, Duration::from_secs(300)).unwrap();
    assert_same_bytes(&w.file("video.mp4"), &got).unwrap();
    println!(
        "B killed at {:.2} s having carried {:.1} MiB; identical after {:.2} s; WAN bytes {}",
        killed_at.as_secs_f64(),
        at_kill[1] as f64 / MIB as f64,
        d.elapsed.as_secs_f64(),
        meter.describe(size)
    );
    print_status("A", &w.status(0));
}

/// The mesh link to B goes dead (100 % loss both ways) mid-download: A's
/// own uplink finishes the job, identical.
#[test]
fn mesh_link_cut_mid_download_is_still_identical() {
    let _serial = serial();
    let size = 24 * MIB;
    let w = World::pair(tandem_origin(), &[("video.mp4", size, 46)]);
    // Evidence only (copied if the test fails).
    let _cap = Cap::start(&w.topo, &w.topo.client_ns(0), "eth0", "client", Some("tcp"));
    let mut meter = w.wan_meter();
    let got = w.out("video.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url("video.mp4"), &got).unwrap();
    wait_for_bytes(&p, &got, 8 * MIB);
    let a = w.topo.router_ns(0);
    w.topo.add_loss(&a, "mesh-b", Dir::Ingress, 1.0).unwrap();
    w.topo.add_loss(&a, "mesh-b", Dir::Egress, 1.0).unwrap();
    let d = transfer::finish(&p, start, &got, Duration::from_secs(300)).unwrap();
    assert_same_bytes(&w.file("video.mp4"), &got).unwrap();
    println!(
        "mesh cut at 8 MiB; identical after {:.2} s; WAN bytes {}",
        d.elapsed.as_secs_f64(),
        meter.describe(size)
    );
    print_status("A", &w.status(0));
}

/// Issue item: the file is replaced on the origin mid-download (new content,
/// new mtime, so new ETag and Last-Modified; nginx, wget). The client gets
/// either the complete old file or a visible failure — never a mixture.
#[test]
fn file_replaced_mid_download_is_never_mixed() {
    let _serial = serial();
    let size = 32 * MIB;
    let w = World::pair(OriginKind::Nginx, &[("video.mp4", size, 47)]);
    let old = w.topo.workdir().join("old.mp4");
    std::fs::copy(w.file("video.mp4"), &old).unwrap();
    let got = w.out("video.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Wget, &w.url("video.mp4"), &got).unwrap();
    wait_for_bytes(&p, &got, 8 * MIB);
    let tmp = w.www.join(".new");
    write_random_file(&tmp, size, 48).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(f);
    std::fs::rename(&tmp, w.file("video.mp4")).unwrap();
    let outcome = transfer::finish(&p, start, &got, Duration::from_secs(300));
    let s = w.status(0);
    print_status("A", &s);
    match outcome {
        Ok(d) => {
            assert_same_bytes(&old, &got).unwrap();
            println!(
                "old file complete and identical after {:.2} s",
                d.elapsed.as_secs_f64()
            );
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(!e.contains("did not finish"), "the client hangs: {e}");
            // What did arrive is a prefix of the old file, nothing of the new.
            let len = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
            let got_bytes = std::fs::read(&got).unwrap_or_default();
            let old_bytes = std::fs::read(&old).unwrap();
            assert!(
                got_bytes[..] == old_bytes[..got_bytes.len().min(old_bytes.len())],
                "the {len} bytes received are not a prefix of the old file"
            );
            println!(
                "visible failure after {:.2} s with {len} bytes (a prefix of the old file): {e}",
                start.elapsed().as_secs_f64()
            );
        }
    }
}

/// Issue item: 2 % random loss both ways on the client's LAN link (applied
/// in A: packets from and to `lan0`, injected segments included). aria2c,
/// tandem's origin.
#[test]
fn loss_on_the_client_lan_is_still_identical() {
    let _serial = serial();
    let size = 16 * MIB;
    let w = World::pair(tandem_origin(), &[("video.mp4", size, 49)]);
    let a = w.topo.router_ns(0);
    w.topo.add_loss(&a, "lan0", Dir::Ingress, 0.02).unwrap();
    w.topo.add_loss(&a, "lan0", Dir::Egress, 0.02).unwrap();
    download_checked(&w, Tool::Aria2, "video.mp4", size);
    let s = w.status(0);
    print_status("A", &s);
    assert_eq!(s.decision("accelerated"), 1, "{}", s.raw);
}

/// Issue item: 2 % random loss both ways on A's WAN (its uplink, applied in
/// the internet namespace). curl, nginx. Nothing LAN-addressed leaves A.
#[test]
fn loss_on_a_wan_is_still_identical() {
    let _serial = serial();
    let size = 16 * MIB;
    let w = World::pair(OriginKind::Nginx, &[("video.mp4", size, 50)]);
    w.topo.add_uplink_loss(0, Way::Down, 0.02).unwrap();
    w.topo.add_uplink_loss(0, Way::Up, 0.02).unwrap();
    let cap = Cap::start(&w.topo, &w.topo.router_ns(0), "wan0", "a-wan", None);
    download_checked(&w, Tool::Curl, "video.mp4", size);
    let pcap = cap.stop();
    let s = w.status(0);
    print_status("A", &s);
    assert_eq!(s.decision("accelerated"), 1, "{}", s.raw);
    capture::check_no_lan_source(&pcap).unwrap();
}

/// Issue item: A's daemon is SIGKILLed while it owns a client's flow (after
/// the cut, 12 MiB into 32). That download ends visibly — identical, or
/// reset — and never hangs (the WAN guard answers the orphaned client's
/// packets with a TCP reset). Then a new download through A works
/// (fail-open: the queue rules bypass a queue nobody serves), identical.
/// Nothing LAN-addressed leaves A's WAN throughout.
#[test]
fn daemon_killed_fails_open_and_the_download_in_progress_ends_visibly() {
    let _serial = serial();
    let size = 32 * MIB;
    let w = World::pair(
        tandem_origin(),
        &[("video.mp4", size, 51), ("after.mp4", 16 * MIB, 52)],
    );
    let cap = Cap::start(&w.topo, &w.topo.router_ns(0), "wan0", "a-wan", None);
    let cap_cl = Cap::start(&w.topo, &w.topo.client_ns(0), "eth0", "client", Some("tcp"));
    let got = w.out("video.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url("video.mp4"), &got).unwrap();
    wait_for_bytes(&p, &got, 12 * MIB);
    let s = w.status(0);
    print_status("A before the kill", &s);
    assert_eq!(s.decision("accelerated"), 1, "not accelerated: {}", s.raw);
    let killed_at = start.elapsed();
    w.daemons.proc(0).unwrap().signal(Signal::SIGKILL);
    // 32 MiB over one 20 Mbit/s uplink take ~15 s; 120 s means stuck.
    let (completed, ending) = match transfer::finish(&p, start, &got, Duration::from_secs(120)) {
        Ok(d) => {
            if let Err(e) = assert_same_bytes(&w.file("video.mp4"), &got) {
                panic!(
                    "check 1 (the download completed after the kill, so it must be identical): {e:#}"
                );
            }
            println!(
                "killed at {:.2} s; the download completed, identical, at {:.2} s",
                killed_at.as_secs_f64(),
                d.elapsed.as_secs_f64()
            );
            (true, "completed".to_string())
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                !e.contains("did not finish"),
                "check 1 (the download ends, it does not hang): killed at {:.2} s, still running at 120 s: {e}",
                killed_at.as_secs_f64()
            );
            let len = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
            let diff = transfer::first_difference(&w.file("video.mp4"), &got).unwrap();
            assert_eq!(
                diff,
                Some(len),
                "check 1 (what the client received before failing is a prefix of the file): \
                 it has {len} bytes, the first wrong one at offset {diff:?} (None: identical); \
                 killed at {:.2} s; client: {e}",
                killed_at.as_secs_f64()
            );
            println!(
                "killed at {:.2} s; visible failure {:.2} s later with {len} bytes (a correct prefix): {e}",
                killed_at.as_secs_f64(),
                (start.elapsed() - killed_at).as_secs_f64()
            );
            (false, format!("failed with {len} bytes: {e}"))
        }
    };
    // The end was a TCP reset reaching the client (in the name of the
    // origin), not a timeout.
    let cl_pcap = cap_cl.stop();
    let resets = capture::matching(
        &cl_pcap,
        "tcp.flags.reset == 1 && ip.dst == 192.0.2.2 && tcp.srcport == 80",
    )
    .unwrap();
    let frames = capture::frame_count(&cl_pcap).unwrap();
    let tail = capture::matching(
        &cl_pcap,
        &format!("frame.number > {}", frames.saturating_sub(6)),
    )
    .unwrap();
    println!(
        "resets reaching the client: {}; the client's last frames:\n{}",
        resets.len(),
        tail.join("\n")
    );
    if !completed {
        assert!(
            !resets.is_empty(),
            "check 2 (a failed download ended by a reset from port 80): none in {} ({frames} frames); \
             download {ending}; the client's last frames:\n{}",
            cl_pcap.display(),
            tail.join("\n")
        );
    }
    // Fail-open: a new download through A, no daemon.
    let got2 = w.out("after.mp4");
    let d = download(
        &w.topo,
        0,
        Tool::Wget,
        &w.url("after.mp4"),
        &got2,
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| {
        panic!("check 3 (fail-open: a new download through A with its daemon dead): {e:#}")
    });
    if let Err(e) = assert_same_bytes(&w.file("after.mp4"), &got2) {
        panic!("check 3 (fail-open: the download after the kill is identical): {e:#}");
    }
    println!(
        "after the kill: 16 MiB identical through A in {:.2} s ({:.1} Mbit/s)",
        d.elapsed.as_secs_f64(),
        d.mbit_per_s()
    );
    let pcap = cap.stop();
    if let Err(e) = capture::check_no_lan_source(&pcap) {
        panic!("check 4 (nothing LAN-addressed on A's WAN during and after the kill): {e:#}");
    }
}

/// How long an orphaned client waits for its reset when A's daemon dies
/// long after the cut. Nothing on A acts for a dead daemon: the reset comes
/// from the WAN guard when the next client packet is INVALID, and the client
/// sends one only in answer to something — the stopped origin's next
/// zero-window probe (exponential backoff, at most TCP_RTO_MAX = 120 s
/// apart) or the client's own keepalive (curl: 60 s idle). Uplinks at
/// 5 Mbit/s so the kill comes ~15 s after the cut; the latency is printed
/// (measured 2026-11-21: 2.3 s after a kill 16 s in) and must stay below
/// 130 s (the slowest possible probe plus a margin).
#[test]
fn daemon_killed_long_after_the_cut_still_ends_visibly() {
    let _serial = serial();
    let size = 24 * MIB;
    let w = World::pair(tandem_origin(), &[("video.mp4", size, 54)]);
    for r in 0..2 {
        w.topo.shape_uplink(r, Way::Down, Rate::mbit(5)).unwrap();
    }
    let got = w.out("video.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url("video.mp4"), &got).unwrap();
    wait_for_bytes(&p, &got, 18 * MIB);
    assert_eq!(w.status(0).decision("accelerated"), 1);
    let killed_at = start.elapsed();
    w.daemons.proc(0).unwrap().signal(Signal::SIGKILL);
    match transfer::finish(&p, start, &got, killed_at + Duration::from_secs(130)) {
        Ok(d) => {
            assert_same_bytes(&w.file("video.mp4"), &got).unwrap();
            println!(
                "killed at {:.2} s; completed, identical, at {:.2} s",
                killed_at.as_secs_f64(),
                d.elapsed.as_secs_f64()
            );
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(!e.contains("did not finish"), "the client hangs: {e}");
            let len = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
            assert_eq!(
                transfer::first_difference(&w.file("video.mp4"), &got).unwrap(),
                Some(len),
                "the bytes before the failure are not the file's"
            );
            println!(
                "killed at {:.2} s (5 Mbit/s uplinks); the client's reset came {:.2} s later, {len} bytes (a correct prefix): {e}",
                killed_at.as_secs_f64(),
                (start.elapsed() - killed_at).as_secs_f64()
            );
        }
    }
}

/// A's daemon stopped the polite way (SIGTERM) mid-download: it resets the
/// client's flow itself before exiting (within 20 s of the signal, not
/// through the WAN guard at the client's next keepalive) (docs/ARCHITECTURE.md: nobody could
/// finish a half-spliced flow), exits cleanly, and what the client received
/// is a correct prefix. curl, nginx.
///
/// Regression (2026-11-21): in 3 of 6 runs the daemon logged "client reset"
/// and exited within 2 ms, but its single RST carried a stale sequence number
/// (data in flight) and the client dropped it; curl saw the reset only 60 s
/// later. The daemon now keeps serving the queue for 500 ms after resetting,
/// so the engine answers the client's next ACKs with exact RSTs: 8 of 8 runs
/// reset the client ~0.5 s after the signal.
#[test]
fn daemon_sigterm_resets_the_download_in_progress_and_exits_cleanly() {
    let _serial = serial();
    let size = 32 * MIB;
    let w = World::pair(OriginKind::Nginx, &[("video.mp4", size, 53)]);
    let got = w.out("video.mp4");
    let start = Instant::now();
    let p = transfer::spawn_download(&w.topo, 0, Tool::Curl, &w.url("video.mp4"), &got).unwrap();
    wait_for_bytes(&p, &got, 12 * MIB);
    assert_eq!(w.status(0).decision("accelerated"), 1);
    let daemon = w.daemons.proc(0).unwrap();
    let stopped_at = start.elapsed();
    daemon.signal(Signal::SIGTERM);
    let status = daemon
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("the daemon exits within 10 s of SIGTERM");
    assert!(status.success(), "daemon exit {status}: {}", daemon.log());
    match transfer::finish(&p, start, &got, Duration::from_secs(120)) {
        Ok(d) => {
            assert_same_bytes(&w.file("video.mp4"), &got).unwrap();
            println!(
                "SIGTERM at {:.2} s; the download completed, identical, at {:.2} s",
                stopped_at.as_secs_f64(),
                d.elapsed.as_secs_f64()
            );
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(!e.contains("did not finish"), "the client hangs: {e}");
            // The daemon's own reset arrives at once (measured 0.03 s); 20 s
            // is far above any scheduling noise and below curl's 60 s
            // keepalive, whose probe the WAN guard would reset instead.
            let after = start.elapsed() - stopped_at;
            assert!(
                after < Duration::from_secs(20),
                "the client was reset only {:.1} s after SIGTERM (not by the daemon's exit reset): {e}",
                after.as_secs_f64()
            );
            let len = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
            assert_eq!(
                transfer::first_difference(&w.file("video.mp4"), &got).unwrap(),
                Some(len),
                "the bytes before the failure are not the file's"
            );
            println!(
                "SIGTERM at {:.2} s; daemon exited ({status}); client failed {:.2} s after the signal with {len} bytes (a correct prefix): {e}",
                stopped_at.as_secs_f64(),
                (start.elapsed() - stopped_at).as_secs_f64()
            );
        }
    }
}

/// Issue item: 20 concurrent large downloads through A (curl, tandem's
/// origin). All identical; `max_downloads` (8) are accelerated and the other
/// 12 pass through as `busy` (decision counters); A's daemon's peak RSS
/// (VmHWM) stays within `RSS_BASE + max_downloads × planner.window`.
///
/// The daemon decides on a connection only if its response head is among
/// the connection's first `queue.first_packets` packets (both directions,
/// counted by conntrack) when it crosses A; a head that comes later passes
/// in the kernel and the connection gets no decision (fail-safe: no
/// acceleration, the download is still identical). Twenty initial windows
/// at once overflow the 70 ms FIFO of A's shaped downlink (20 x ~15 KB into
/// 175 KB: segments of many connections are retransmitted in the first
/// second, seen in captures of A's WAN). When a connection's head is among
/// the dropped packets, its retransmission reaches A only after the
/// connection's later segments and the client's duplicate ACKs: packet 15
/// or later, outside the default window of 12. Seen as "11 busy" (session
/// 3, once), and reproduced once in 55 runs with the delay line stalled
/// in bursts: 19 of 20 connections decided while every packet that met a
/// queue rule reached the daemon. In a capture of a stalled run the head of
/// one of A's own Range fetches (same path) was lost and came 145 ms late,
/// after 11 segments of its connection (packet 27). This test
/// is about admission and memory, not the window: it runs with the largest
/// window, 64, which a head lost once still makes (about packet 25).
#[test]
fn twenty_concurrent_downloads_are_identical_and_memory_bounded() {
    let _serial = serial();
    let n = 20u64;
    let size = 8 * MIB;
    let files: Vec<(String, u64, u64)> = (0..n)
        .map(|k| (format!("f{k}.bin"), size, 100 + k))
        .collect();
    let refs: Vec<(&str, u64, u64)> = files.iter().map(|(f, s, k)| (f.as_str(), *s, *k)).collect();
    let w = World::new(
        TopologySpec::pair(delay_command()),
        tandem_origin(),
        &refs,
        &DaemonOptions {
            first_packets: Some(FIRST_PACKETS_MAX),
            ..DaemonOptions::default()
        },
    );
    let pid = w.daemons.proc(0).unwrap().pid();
    let idle = vm_hwm(pid).unwrap();
    let mut meter = w.wan_meter();
    let start = Instant::now();
    let procs = w.spawn_curls(files.iter().map(|(name, _, _)| name.as_str()));
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    for (p, out, name) in &procs {
        match transfer::finish(p, start, out, Duration::from_secs(600)) {
            Ok(d) => {
                if let Err(e) = assert_same_bytes(&w.file(name), out) {
                    failures.push(format!("{name}: {e:#}"));
                }
                slowest = slowest.max(d.elapsed);
            }
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    let hwm = w.daemon_hwm(0);
    let s = w.status(0);
    let queues = QueueReport::read(&w.topo, &w.topo.router_ns(0));
    print_status("A", &s);
    let decided: u64 = s.decisions.values().sum();
    let queue_line = format!(
        "A's queues: {queues}; the daemon handled {} packets, so {} never reached it",
        s.packet("queued"),
        queues.bypassed(s.packet("queued"))
    );
    let delay_line = match w.topo.delayline_bypass() {
        Ok(Some(d)) => d.to_string(),
        Ok(None) => "no delay line".to_string(),
        Err(e) => format!("delay line counters unreadable: {e:#}"),
    };
    let queue_line = format!("{queue_line}; {delay_line}");
    println!("{queue_line}");
    let bound = RSS_BASE + MAX_DOWNLOADS * PLANNER_WINDOW;
    println!(
        "{n} x {} MiB, {} failed, last done after {:.2} s ({:.1} Mbit/s aggregate); WAN bytes {}; \
         A's daemon VmHWM idle {:.1} MiB, peak {:.1} MiB (bound {:.0} MiB = {} MiB base + {MAX_DOWNLOADS} x {} MiB window)",
        size / MIB,
        failures.len(),
        slowest.as_secs_f64(),
        (n * size) as f64 * 8.0 / slowest.as_secs_f64().max(1e-9) / 1e6,
        meter.describe(n * size),
        idle as f64 / MIB as f64,
        hwm as f64 / MIB as f64,
        bound as f64 / MIB as f64,
        RSS_BASE / MIB,
        PLANNER_WINDOW / MIB
    );
    assert!(
        failures.is_empty(),
        "{} of {n} downloads failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        s.decision("accelerated"),
        MAX_DOWNLOADS,
        "expected max_downloads accelerated; decisions {:?} ({decided} of {n} connections decided); {queue_line}",
        s.decisions
    );
    assert_eq!(
        s.decision("busy"),
        n - MAX_DOWNLOADS,
        "expected the rest to pass through as busy; decisions {:?} ({decided} of {n} connections decided); {queue_line}",
        s.decisions
    );
    assert!(
        hwm <= bound,
        "VmHWM {hwm} above the bound {bound} (idle {idle}, {} downloads accelerated)",
        s.decision("accelerated")
    );
}

/// The project's real firewall rules (`tandem rules iptables`) on A with no
/// daemon bound to the queue: downloads still work (fail-open through
/// `--queue-bypass`), byte-identical, and nothing LAN-addressed leaves A's WAN.
#[test]
fn real_rules_without_daemon_fail_open() {
    use tandem_lab::daemon::{install_rules, lab_spec, write_config};
    let _serial = serial();
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
    let cap = Cap::start(&topo, &topo.router_ns(0), "wan0", "a-wan", None);
    let got = topo.workdir().join("got.mp4");
    let url = format!("http://{ORIGIN_IP}/video.mp4");
    download(&topo, 0, Tool::Curl, &url, &got, Duration::from_secs(120)).unwrap();
    let pcap = cap.stop();
    assert_same_bytes(&file, &got).unwrap();
    capture::check_no_lan_source(&pcap).unwrap();
    check_well_formed(&pcap);
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
