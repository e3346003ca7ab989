//! Fail-open (root): a queue rule with `--queue-bypass` and nobody bound to
//! the queue must not break traffic, and neither must the delay line dying.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use tandem_lab::topology::ORIGIN_IP;

/// A's FORWARD sends port-80 traffic to queue 7, which no daemon serves:
/// with `--queue-bypass` the download still completes, byte-identical.
#[test]
fn unbound_queue_with_bypass_passes_traffic() {
    let topo = pair();
    let a = topo.router_ns(0);
    for chain_args in [["--dport", "80"], ["--sport", "80"]] {
        topo.exec(
            &a,
            &[
                "iptables",
                "-w",
                "-I",
                "FORWARD",
                "-p",
                "tcp",
                chain_args[0],
                chain_args[1],
                "-j",
                "NFQUEUE",
                "--queue-num",
                "7",
                "--queue-bypass",
            ],
        )
        .unwrap();
    }
    let (www, file) = www_with_file(&topo, "f.bin", 1 << 20, 5);
    let _origin = start_origin(&topo, &OriginKind::Nginx, &www).unwrap();
    let got = topo.workdir().join("got.bin");
    let url = format!("http://{ORIGIN_IP}/f.bin");
    download(&topo, 0, Tool::Curl, &url, &got, Duration::from_secs(60)).unwrap();
    assert_same_bytes(&file, &got).unwrap();
    // The rule really matched: its packet counter moved.
    let rules = topo
        .exec(&a, &["iptables", "-w", "-L", "FORWARD", "-v", "-n", "-x"])
        .unwrap();
    let matched: u64 = rules
        .lines()
        .filter(|l| l.contains("NFQUEUE"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        matched > 100,
        "queue rules matched only {matched} packets:\n{rules}"
    );
}

/// Killing the delay line mid-transfer does not blackhole the internet:
/// its rule has `--queue-bypass`, so traffic flows (undelayed) afterwards.
#[test]
fn delay_line_death_does_not_blackhole() {
    let topo = pair();
    let origin = ORIGIN_IP.to_string();
    let client = topo.client_ns(0);
    let before = ping_min_ms(&topo, &client, &origin, 3);
    assert!(before >= 20.0);
    let dl = topo.delayline().expect("delay line runs");
    dl.kill();
    assert!(!dl.is_running());
    let after = ping_min_ms(&topo, &client, &origin, 3);
    println!("RTT with delay line {before:.2} ms, after killing it {after:.2} ms");
    assert!(
        after < before,
        "delay still applied after the delay line died?"
    );
}

/// SIGTERM makes the delay line release every packet it holds and exit 0.
#[test]
fn delay_line_exits_cleanly_on_sigterm() {
    let topo = pair();
    let dl = topo.delayline().expect("delay line runs");
    let _ = ping_min_ms(&topo, &topo.client_ns(0), &ORIGIN_IP.to_string(), 2);
    dl.signal(tandem_lab::Signal::SIGTERM);
    let status = dl
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("exited");
    assert!(status.success(), "{status}: {}", dl.log());
    assert!(dl.log().contains("packets delayed"), "{}", dl.log());
}
