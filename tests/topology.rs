//! Topology smoke tests (root): NAT, shaping and the delay line, with nginx
//! as the origin. Need no tandem daemon.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use tandem_lab::topology::{ORIGIN_IP, router_wan_ip};

const MIB: u64 = 1 << 20;

/// A client behind A downloads 8 MiB from the origin through A's NAT over a
/// 20 Mbit/s, 10 ms link: the bytes are identical, the origin saw A's WAN
/// address, nothing LAN-addressed left A's WAN, the capture is clean, and the
/// rate does not exceed the shape.
#[test]
fn client_downloads_through_nat_over_shaped_delayed_links() {
    let topo = pair();
    let (www, file) = www_with_file(&topo, "file.bin", 8 * MIB, 1);
    let _origin = start_origin(&topo, &OriginKind::Nginx, &www).unwrap();
    let cap = Capture::start(&topo, &topo.router_ns(0), "wan0", "a-wan", None).unwrap();
    let got = topo.workdir().join("got.bin");
    let url = format!("http://{ORIGIN_IP}/file.bin");
    let dl = download(&topo, 0, Tool::Curl, &url, &got, Duration::from_secs(120)).unwrap();
    let pcap = cap.stop().unwrap();
    assert_same_bytes(&file, &got).unwrap();
    println!(
        "8 MiB through A: {:.2} s, {:.2} Mbit/s (shape 20 Mbit/s)",
        dl.elapsed.as_secs_f64(),
        dl.mbit_per_s()
    );
    // Goodput can never exceed the HTB rate (headers count against it too).
    assert!(
        dl.mbit_per_s() <= 20.0 * 1.02,
        "faster than the shape: {dl:?}"
    );
    // NAT: the origin saw A's public address, not the client's.
    let log = std::fs::read_to_string(topo.workdir().join("nginx/access.log")).unwrap();
    assert!(
        log.contains(&router_wan_ip(0).to_string()) && !log.contains("192.0.2."),
        "origin access log: {log}"
    );
    assert!(capture::frame_count(&pcap).unwrap() > 5000);
    capture::check_no_lan_source(&pcap).unwrap();
    capture::check_expert(&pcap).unwrap();
}

/// Ping RTT across the internet namespace is at least twice the one-way delay.
#[test]
fn delay_line_adds_the_delay_both_ways() {
    let topo = pair();
    let min = ping_min_ms(&topo, &topo.client_ns(0), &ORIGIN_IP.to_string(), 10);
    println!("client→origin ping min RTT {min:.2} ms with a 10 ms one-way delay");
    assert!(min >= 20.0, "RTT {min} ms < 2 × 10 ms");
    // Router-to-router across the internet passes the delay line twice too.
    let min = ping_min_ms(&topo, &topo.router_ns(0), &router_wan_ip(1).to_string(), 5);
    assert!(min >= 20.0, "A→B RTT {min} ms");
}

/// A larger delay is honoured as well (the delay is a parameter, not a constant).
#[test]
fn delay_line_honours_a_larger_delay() {
    require_root();
    let mut spec = TopologySpec::pair(delay_command());
    spec.delay_ms = 60;
    let topo = Topology::build(spec).unwrap();
    let min = ping_min_ms(&topo, &topo.client_ns(0), &ORIGIN_IP.to_string(), 5);
    println!("ping min RTT {min:.2} ms with a 60 ms one-way delay");
    assert!(min >= 120.0, "RTT {min} ms < 2 × 60 ms");
}

/// Re-shaping A's download link to 4 Mbit/s caps a download at that rate;
/// the mesh link is reachable and unaffected.
#[test]
fn shaping_caps_the_download_rate() {
    let topo = pair();
    topo.shape_uplink(0, Way::Down, Rate::mbit(4)).unwrap();
    let (www, file) = www_with_file(&topo, "f.bin", 2 * MIB, 2);
    let _origin = start_origin(&topo, &OriginKind::Nginx, &www).unwrap();
    let got = topo.workdir().join("got.bin");
    let url = format!("http://{ORIGIN_IP}/f.bin");
    let dl = download(&topo, 0, Tool::Wget, &url, &got, Duration::from_secs(120)).unwrap();
    assert_same_bytes(&file, &got).unwrap();
    println!(
        "2 MiB at 4 Mbit/s: {:.2} s, {:.2} Mbit/s",
        dl.elapsed.as_secs_f64(),
        dl.mbit_per_s()
    );
    assert!(
        dl.mbit_per_s() <= 4.0 * 1.02,
        "faster than the shape: {dl:?}"
    );
    let b = topo.mesh_ip(1, 0).unwrap().to_string();
    topo.exec(&topo.router_ns(0), &["ping", "-c", "1", "-W", "2", &b])
        .unwrap();
}

/// The standard topology: C is a 2-hop neighbour of A (reachable from B,
/// not from A), all three routers reach the origin, and aria2c (one
/// connection) downloads through A.
#[test]
fn standard_topology_mesh_and_aria2() {
    let topo = standard();
    let (a, c) = (topo.router_ns(0), topo.router_ns(2));
    let c_from_b = topo.mesh_ip(2, 1).unwrap().to_string();
    topo.exec(
        &topo.router_ns(1),
        &["ping", "-c", "1", "-W", "2", &c_from_b],
    )
    .unwrap();
    assert!(
        topo.exec(&a, &["ping", "-c", "1", "-W", "1", &c_from_b])
            .is_err()
    );
    assert!(topo.mesh_ip(0, 2).is_none());
    for r in [&a, &topo.router_ns(1), &c] {
        topo.exec(r, &["ping", "-c", "1", "-W", "2", &ORIGIN_IP.to_string()])
            .unwrap();
    }
    let (www, file) = www_with_file(&topo, "v.mp4", 3 * MIB, 3);
    let _origin = start_origin(&topo, &OriginKind::Nginx, &www).unwrap();
    let got = topo.workdir().join("dl").join("v.mp4");
    std::fs::create_dir_all(got.parent().unwrap()).unwrap();
    let url = format!("http://{ORIGIN_IP}/v.mp4");
    download(&topo, 0, Tool::Aria2, &url, &got, Duration::from_secs(120)).unwrap();
    assert_same_bytes(&file, &got).unwrap();
}

/// The upload direction is shaped too: 2 MiB sent from the client to a
/// receiver at the origin over A's uplink re-shaped to 4 Mbit/s arrive
/// intact and no faster than the shape (timed at the receiver, which exits
/// only when everything has arrived).
#[test]
fn shaping_caps_the_upload_rate() {
    let topo = pair();
    topo.shape_uplink(0, Way::Up, Rate::mbit(4)).unwrap();
    let (_www, file) = www_with_file(&topo, "up.bin", 2 * MIB, 4);
    let got = topo.workdir().join("received.bin");
    let d = transfer::socat_transfer(
        &topo,
        &topo.client_ns(0),
        &topo.origin_ns(),
        ORIGIN_IP,
        9000,
        &file,
        &got,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_same_bytes(&file, &got).unwrap();
    let mbit = d.mbit_per_s();
    println!(
        "2 MiB upload at 4 Mbit/s: {:.2} s, {mbit:.2} Mbit/s",
        d.elapsed.as_secs_f64()
    );
    assert!(mbit <= 4.0 * 1.02, "upload faster than the shape: {mbit}");
}

/// The receive-window analysis really judges the segments of a capture
/// (a check that never looks at anything would pass vacuously).
#[test]
fn window_analysis_sees_the_flow() {
    let topo = pair();
    let (www, _file) = www_with_file(&topo, "w.bin", MIB, 6);
    let _origin = start_origin(&topo, &OriginKind::Nginx, &www).unwrap();
    let cap = Capture::start(&topo, &topo.client_ns(0), "eth0", "client", Some("tcp")).unwrap();
    let got = topo.workdir().join("got.bin");
    let url = format!("http://{ORIGIN_IP}/w.bin");
    download(&topo, 0, Tool::Curl, &url, &got, Duration::from_secs(60)).unwrap();
    let pcap = cap.stop().unwrap();
    let report = capture::window_violations(&pcap).unwrap();
    assert!(report.violations.is_empty(), "{report:?}");
    // Every data segment from the origin was judged against a known window.
    let data = capture::matching(&pcap, "tcp.srcport == 80 && tcp.len > 0").unwrap();
    assert!(
        data.len() > 500,
        "only {} data segments captured",
        data.len()
    );
    assert!(
        report.judged >= data.len(),
        "judged {} of {}",
        report.judged,
        data.len()
    );
    capture::check_expert(&pcap).unwrap();
}

/// Figures of the delay line (printed; the only assertion is the lower
/// bound): RTT spread over 30 pings, and its CPU cost while a 8 MiB download
/// at 20 Mbit/s passes through it.
#[test]
fn delay_line_figures() {
    let topo = pair();
    let out = topo
        .exec(
            &topo.client_ns(0),
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                "30",
                "-i",
                "0.05",
                &ORIGIN_IP.to_string(),
            ],
        )
        .unwrap();
    let rtt = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap()
        .to_owned();
    println!("10 ms one-way delay, 30 pings: {rtt}");
    let min: f64 = rtt
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(min >= 20.0);
    let dl = topo.delayline().unwrap();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", dl.pid())).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime, stime are fields 14 and 15 (1-based) = index 11, 12 after ')'.
        (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
    };
    let (www, file) = www_with_file(&topo, "f.bin", 8 * MIB, 7);
    let _origin = start_origin(&topo, &OriginKind::Nginx, &www).unwrap();
    let got = topo.workdir().join("got.bin");
    let mut inet = topo.counters(&topo.internet_ns(), "origin0").unwrap();
    let p0 = inet.read().unwrap().rx_packets + inet.read().unwrap().tx_packets;
    let c0 = cpu();
    let url = format!("http://{ORIGIN_IP}/f.bin");
    let d = download(&topo, 0, Tool::Curl, &url, &got, Duration::from_secs(120)).unwrap();
    let c1 = cpu();
    let s = inet.read().unwrap();
    let packets = s.rx_packets + s.tx_packets - p0;
    assert_same_bytes(&file, &got).unwrap();
    println!(
        "8 MiB in {:.2} s ({:.2} Mbit/s): delay line used {:.2} s CPU for ~{packets} packets \
         ({:.1} µs/packet, {:.0}% of one core)",
        d.elapsed.as_secs_f64(),
        d.mbit_per_s(),
        c1 - c0,
        (c1 - c0) * 1e6 / packets.max(1) as f64,
        (c1 - c0) * 100.0 / d.elapsed.as_secs_f64()
    );
}

/// Mesh links are shaped (54 Mbit/s, 802.11g) and carry traffic between
/// neighbours directly, without the internet's delay.
#[test]
fn mesh_link_is_shaped() {
    let topo = pair();
    let (_www, file) = www_with_file(&topo, "m.bin", 8 * MIB, 8);
    let got = topo.workdir().join("m.out");
    let b_ip = topo.mesh_ip(1, 0).unwrap();
    let d = transfer::socat_transfer(
        &topo,
        &topo.router_ns(0),
        &topo.router_ns(1),
        b_ip,
        7000,
        &file,
        &got,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_same_bytes(&file, &got).unwrap();
    println!(
        "8 MiB A→B over the 54 Mbit/s mesh: {:.2} s, {:.2} Mbit/s",
        d.elapsed.as_secs_f64(),
        d.mbit_per_s()
    );
    assert!(
        d.mbit_per_s() <= 54.0 * 1.02,
        "faster than the mesh shape: {d:?}"
    );
    let rtt = ping_min_ms(&topo, &topo.router_ns(0), &b_ip.to_string(), 3);
    assert!(
        rtt < 20.0,
        "mesh RTT {rtt} ms: does it go through the delayed internet?"
    );
}

/// Variant: the origin address lives in the internet namespace itself, no
/// delay line, one router; Python's http.server as the origin.
#[test]
fn origin_inside_the_internet_namespace() {
    require_root();
    let mut spec = TopologySpec::pair(Vec::new());
    spec.routers = 1;
    spec.mesh.clear();
    spec.delay_ms = 0;
    spec.origin_own_ns = false;
    let topo = Topology::build(spec).unwrap();
    assert_eq!(topo.origin_ns(), topo.internet_ns());
    assert_eq!(topo.namespaces().len(), 3, "inet, a, client-a");
    let (www, file) = www_with_file(&topo, "p.bin", MIB, 10);
    let _origin = start_origin(&topo, &OriginKind::Python, &www).unwrap();
    let got = topo.workdir().join("got.bin");
    let url = format!("http://{ORIGIN_IP}/p.bin");
    download(&topo, 0, Tool::Curl, &url, &got, Duration::from_secs(60)).unwrap();
    assert_same_bytes(&file, &got).unwrap();
}

/// A capture stopped while traffic still flows holds every packet that
/// crossed the interface before the stop, and no trace of the lab's stop
/// marker. Background: a ping every 2 ms from the client across A's WAN
/// during the stop, so packets keep arriving while tcpdump stops (its
/// "received by filter" then exceeds "captured" — the old completeness
/// check took that for a loss and failed
/// `daemon_killed_fails_open_and_the_download_in_progress_ends_visibly`
/// once). Foreground, before the stop: 50 pings of a distinct size that
/// all got their reply, so their 100 packets crossed both captured
/// interfaces before the stop and must all be in both files.
#[test]
fn capture_stopped_during_traffic_holds_everything_before_the_stop() {
    let topo = pair();
    let origin = ORIGIN_IP.to_string();
    let client = topo.client_ns(0);
    let cap_wan = Capture::start(&topo, &topo.router_ns(0), "wan0", "a-wan", None).unwrap();
    let cap_cl = Capture::start(&topo, &client, "eth0", "client", Some("icmp")).unwrap();
    let background = topo
        .spawn(
            &client,
            "ping-background",
            &["ping", "-n", "-i", "0.002", "-s", "64", &origin],
        )
        .unwrap();
    let out = topo
        .exec(
            &client,
            &[
                "ping", "-n", "-q", "-c", "50", "-i", "0.01", "-s", "1111", "-W", "5", &origin,
            ],
        )
        .unwrap();
    assert!(
        out.contains(" 50 received"),
        "the foreground pings were not all answered, the test proves nothing:\n{out}"
    );
    let files = [
        ("a-wan", cap_wan.stop().unwrap()),
        ("client", cap_cl.stop().unwrap()),
    ];
    assert!(
        background.is_running(),
        "the background ping ended before the stop: {}",
        background.log()
    );
    background.kill();
    for (name, pcap) in &files {
        let log = std::fs::read_to_string(topo.workdir().join(format!("logs/tcpdump-{name}.log")))
            .unwrap_or_default();
        let stats = capture::TcpdumpStats::parse(&log);
        // 1111 bytes of ICMP payload: IP length 1139.
        let requests = capture::matching(pcap, "icmp.type == 8 && ip.len == 1139").unwrap();
        let replies = capture::matching(pcap, "icmp.type == 0 && ip.len == 1139").unwrap();
        let markers = capture::matching(
            pcap,
            &format!("eth.type == {:#06x}", capture::MARKER_ETHERTYPE),
        )
        .unwrap();
        let background_frames = capture::matching(pcap, "icmp && ip.len == 92").unwrap();
        println!(
            "{name}: {} foreground requests, {} replies, {} background frames, {} markers left; tcpdump {}",
            requests.len(),
            replies.len(),
            background_frames.len(),
            markers.len(),
            stats.map_or_else(|| "without statistics".to_string(), |s| s.to_string()),
        );
        assert_eq!(requests.len(), 50, "{name}: echo requests before the stop");
        assert_eq!(replies.len(), 50, "{name}: echo replies before the stop");
        assert!(markers.is_empty(), "{name}: stop markers left: {markers:?}");
        assert!(
            !background_frames.is_empty(),
            "{name}: no background traffic captured"
        );
    }
}
