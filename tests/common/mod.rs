//! Shared helpers of the netns integration tests. Most of the machinery lives
//! in the `tandem-lab` crate; this adds what is specific to running under
//! `cargo test`.
#![allow(dead_code, unused_imports, clippy::unwrap_used)] // each test binary uses a different subset

use std::ffi::OsString;
use std::path::PathBuf;

pub mod world;

pub use tandem_lab::capture::{self, Capture};
pub use tandem_lab::origin::{Origin, OriginKind, start_origin};
pub use tandem_lab::topology::{self, Dir, Rate, Topology, TopologySpec, Way};
pub use tandem_lab::transfer::{self, Tool, assert_same_bytes, download, write_random_file};

/// Fails loudly unless root: CI runs as root, and these tests must never
/// pass by silently skipping.
pub fn require_root() {
    if let Err(e) = tandem_lab::netns::require_root() {
        panic!("{e:#}\n(these netns integration tests refuse to skip)");
    }
}

/// The stand-in binary that runs the delay line (`tandem-lab-helper delayline`).
pub fn helper_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem-lab-helper"))
}

/// Command prefix that runs the delay line.
pub fn delay_command() -> Vec<OsString> {
    vec![helper_exe().into_os_string(), "delayline".into()]
}

/// The `tandem` binary for tests that need the daemon or its origin: `$TANDEM_EXE`,
/// or `tandem` next to the test's target directory (build it with
/// `cargo build -p tandem`). Panics with instructions when absent.
pub fn tandem_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_EXE") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/tandem
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("tandem"))
        .expect("target dir");
    assert!(
        p.exists(),
        "{} not found: run `cargo build -p tandem` first or set TANDEM_EXE",
        p.display()
    );
    p
}

/// Standard topology (client–A, A–B–C mesh, 2-hop C) with the stand-in delay line.
pub fn standard() -> Topology {
    require_root();
    Topology::build(TopologySpec::standard(delay_command())).expect("build topology")
}

/// Client–A, A–B with the stand-in delay line.
pub fn pair() -> Topology {
    require_root();
    Topology::build(TopologySpec::pair(delay_command())).expect("build topology")
}

/// Writes a seeded random file `name` of `size` bytes into `<workdir>/www`
/// and returns the directory and the file's path.
pub fn www_with_file(topo: &Topology, name: &str, size: u64, seed: u64) -> (PathBuf, PathBuf) {
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let f = www.join(name);
    write_random_file(&f, size, seed).unwrap();
    (www, f)
}

/// Minimum round-trip time in ms of `count` pings from `ns` to `dst`.
pub fn ping_min_ms(topo: &Topology, ns: &str, dst: &str, count: u32) -> f64 {
    let out = topo
        .exec(
            ns,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                dst,
            ],
        )
        .expect("ping");
    // rtt min/avg/max/mdev = 20.123/20.456/21.000/0.200 ms
    let line = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or_else(|| panic!("no rtt line in ping output:\n{out}"));
    let nums = line.split('=').nth(1).expect("rtt values").trim();
    nums.split('/')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("min rtt")
}

/// Like `capture::EXPERT_PROBLEM_FILTER`, except that a TCP checksum of
/// 0xffff where 0x0000 was computed is not a problem: both are zero in
/// ones' complement (RFC 1624), every receiver accepts it, and Linux itself
/// writes 0xffff when it computes the checksum in software
/// (`skb_checksum_help`: `csum_fold(..) ?: CSUM_MANGLED_0`), so about one
/// in 65 536 of the client's own segments carries it (seen in a capture:
/// an ACK the client sent).
pub const TRANSPORT_PROBLEM_FILTER: &str =
    "ip.checksum.status == 0 || (tcp.checksum.status == 0 && !tcp.checksum.ffff) || _ws.malformed";

/// Fails if `pcap` has a bad IP/TCP checksum (see
/// [`TRANSPORT_PROBLEM_FILTER`]) or a malformed IP/TCP packet, or a data
/// segment beyond the receiver's advertised window; returns how many data
/// segments the window check judged.
pub fn check_well_formed(pcap: &std::path::Path) -> usize {
    let bad = capture::matching_with(pcap, TRANSPORT_PROBLEM_FILTER, true).unwrap();
    assert!(
        bad.is_empty(),
        "{}: {} bad checksums or malformed packets, e.g.:\n{}",
        pcap.display(),
        bad.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    let w = capture::window_violations(pcap).unwrap();
    assert!(
        w.violations.is_empty(),
        "{}: {} segments beyond the receive window, e.g.:\n{}",
        pcap.display(),
        w.violations.len(),
        w.violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    w.judged
}

/// A packet capture for the tests: [`tandem_lab::capture::Capture`]
/// (`tcpdump -U --immediate-mode`), panicking with the lab's diagnosis
/// instead of returning errors. Its [`Cap::stop`] returns a file that holds
/// every packet that crossed the interface before the call: the lab sends a
/// stop marker and waits for tcpdump to write it (tcpdump's own counters
/// cannot say that: "received by filter" also counts packets that arrive
/// while it stops, e.g. the origin's FIN-ACK of a download that just
/// ended, which once failed `daemon_killed_fails_open_...` with "captured
/// 25117 of 25118 packets").
pub struct Cap(Capture);

impl Cap {
    /// Starts tcpdump on `iface` in `ns`, writing `<workdir>/<name>.pcap`.
    pub fn start(topo: &Topology, ns: &str, iface: &str, name: &str, filter: Option<&str>) -> Cap {
        match Capture::start(topo, ns, iface, name, filter) {
            Ok(c) => Cap(c),
            Err(e) => panic!("starting the capture {name} on {ns}/{iface}: {e:#}"),
        }
    }

    /// Stops it once everything before the call is written; returns the
    /// file. Prints tcpdump's statistics: "received by filter" above
    /// "captured" counts packets that arrived while it stopped (after the
    /// marker), which the old check took for a loss.
    pub fn stop(self) -> PathBuf {
        let path = self.0.path().to_path_buf();
        match self.0.stop_with_stats() {
            Ok((p, stats)) => {
                if let Some(s) = stats {
                    println!(
                        "capture {}: tcpdump {s} (marker included; {} arrived while it stopped)",
                        p.display(),
                        s.received.saturating_sub(s.captured)
                    );
                }
                p
            }
            Err(e) => panic!("stopping the capture {}: {e:#}", path.display()),
        }
    }
}
