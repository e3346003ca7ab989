//! A running "world" for the daemon tests: a topology, an origin serving
//! seeded random files, tandem daemons on the routers, and the measurements
//! the tests assert on (bytes per router WAN, the daemon's status counters,
//! its peak memory).
//!
//! CPU: the machine (and CI) has 2 cores, and an accelerated download keeps
//! a delay line, two or three daemons, an origin and a client busy. Every
//! test that starts daemons therefore holds [`serial`] for its whole run, so
//! the tests of one binary run one at a time whatever `--test-threads` says;
//! cargo runs the test binaries themselves one after the other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tandem_lab::daemon::{DaemonOptions, Daemons};
use tandem_lab::netns::IfCounters;
use tandem_lab::origin::{Origin, OriginKind, start_origin};
use tandem_lab::topology::{ORIGIN_IP, Proc, Topology, TopologySpec, router_letter};
use tandem_lab::transfer::write_random_file;

use super::{require_root, tandem_exe};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the per-binary lock that makes daemon tests run one at a time (see
/// the module doc). A test that panicked while holding it does not block the
/// others (the poison is ignored: each test builds its own world).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tandem binary's own origin server.
pub fn tandem_origin() -> OriginKind {
    OriginKind::Tandem {
        exe: tandem_exe(),
        extra: Vec::new(),
    }
}

/// A topology with an origin and daemons.
pub struct World {
    /// Declared first so it is dropped last (after origin and daemons'
    /// handles; teardown kills every process anyway).
    pub daemons: Daemons,
    /// The origin server.
    pub origin: Origin,
    /// The directory the origin serves.
    pub www: PathBuf,
    /// The namespaces.
    pub topo: Topology,
}

impl World {
    /// Builds `spec`, writes `files` (name, size, seed) into the served
    /// directory, starts `origin` and daemons with `opts` on every router.
    pub fn new(
        spec: TopologySpec,
        origin: OriginKind,
        files: &[(&str, u64, u64)],
        opts: &DaemonOptions,
    ) -> World {
        require_root();
        let topo = Topology::build(spec).expect("build topology");
        let www = topo.workdir().join("www");
        std::fs::create_dir_all(&www).unwrap();
        for (name, size, seed) in files {
            write_random_file(&www.join(name), *size, *seed).unwrap();
        }
        let origin = start_origin(&topo, &origin, &www).expect("start origin");
        let all: Vec<usize> = (0..topo.spec().routers).collect();
        let daemons = Daemons::start(&topo, &tandem_exe(), &all, opts).expect("start daemons");
        World {
            daemons,
            origin,
            www,
            topo,
        }
    }

    /// Pair topology (client–A, A–B), 20 Mbit/s + 10 ms, lab daemon options.
    pub fn pair(origin: OriginKind, files: &[(&str, u64, u64)]) -> World {
        World::new(
            TopologySpec::pair(super::delay_command()),
            origin,
            files,
            &DaemonOptions::default(),
        )
    }

    /// The served copy of `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.www.join(name)
    }

    /// `http://203.0.113.10/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{ORIGIN_IP}/{name}")
    }

    /// A path for a download in the work dir.
    pub fn out(&self, name: &str) -> PathBuf {
        let d = self.topo.workdir().join("dl");
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    /// Starts one curl per file behind router A, all at once: (process,
    /// output path, file name).
    pub fn spawn_curls<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(Proc, PathBuf, &'a str)> {
        names
            .into_iter()
            .map(|name| {
                let out = self.out(name);
                let p = tandem_lab::transfer::spawn_download(
                    &self.topo,
                    0,
                    tandem_lab::transfer::Tool::Curl,
                    &self.url(name),
                    &out,
                )
                .unwrap();
                (p, out, name)
            })
            .collect()
    }

    /// Starts counting the bytes received on every router's WAN.
    pub fn wan_meter(&self) -> WanMeter {
        WanMeter::new(&self.topo)
    }

    /// Router `i`'s daemon status, parsed.
    pub fn status(&self, i: usize) -> Status {
        Status::parse(&self.daemons.status_json(i).expect("tandem status --json"))
    }

    /// Peak resident memory (VmHWM, bytes) of router `i`'s daemon.
    pub fn daemon_hwm(&self, i: usize) -> u64 {
        let p = self.daemons.proc(i).expect("daemon runs");
        vm_hwm(p.pid()).expect("VmHWM of the daemon")
    }
}

/// Where a failed test's logs and captures are copied: the lab keeps the
/// work dir of a panicked test, but the next topology anyone builds removes
/// work dirs whose process is gone, so the evidence would not survive.
pub const FAILURE_DIR: &str = "/tmp/tandem-itest-failures";

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let src = self.topo.workdir().to_path_buf();
        let dst = Path::new(FAILURE_DIR).join(self.topo.run_id());
        if copy_evidence(&src, &dst).is_ok() {
            eprintln!(
                "daemon test failed: logs and captures copied to {}",
                dst.display()
            );
        }
        // The state of each router's firewall and queue at the failure:
        // rule counters (did the WAN guard reject client packets?) and the
        // kernel's queue counters (queue_dropped / user_dropped: did packets
        // bypass a full queue?).
        for i in 0..self.topo.spec().routers {
            let ns = self.topo.router_ns(i);
            let rules = self
                .topo
                .exec(&ns, &["iptables-save", "-c"])
                .unwrap_or_default();
            let queue = self
                .topo
                .exec(&ns, &["cat", "/proc/net/netfilter/nfnetlink_queue"])
                .unwrap_or_default();
            let guard: Vec<&str> = rules.lines().filter(|l| l.contains("REJECT")).collect();
            eprintln!(
                "router {i}: nfnetlink_queue (queue portid total copy_mode copy_range queue_dropped user_dropped id_seq 1):\n{queue}guard: {guard:?}"
            );
            let _ = std::fs::write(
                dst.join(format!("firewall-{i}.txt")),
                format!("{rules}\n# /proc/net/netfilter/nfnetlink_queue\n{queue}"),
            );
        }
    }
}

/// Copies `logs/`, `daemons/` (configs, rules; not keys) and `*.pcap` of a
/// work dir.
fn copy_evidence(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for sub in ["logs", "daemons"] {
        let Ok(entries) = std::fs::read_dir(src.join(sub)) else {
            continue;
        };
        std::fs::create_dir_all(dst.join(sub))?;
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("key-") || !e.path().is_file() {
                continue;
            }
            std::fs::copy(e.path(), dst.join(sub).join(&name))?;
        }
    }
    for e in std::fs::read_dir(src)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "pcap") {
            std::fs::copy(e.path(), dst.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// VmHWM of process `pid` in bytes.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes received on each router's WAN since the meter was made: measured
/// outside the daemons, so it shows where the body really came from.
pub struct WanMeter {
    counters: Vec<(IfCounters, u64)>,
}

impl WanMeter {
    fn new(topo: &Topology) -> WanMeter {
        let counters = (0..topo.spec().routers)
            .map(|i| {
                let mut c = topo.counters(&topo.router_ns(i), "wan0").unwrap();
                let start = c.read().unwrap().rx_bytes;
                (c, start)
            })
            .collect();
        WanMeter { counters }
    }

    /// Bytes per router since the start (index = router).
    pub fn read(&mut self) -> Vec<u64> {
        self.counters
            .iter_mut()
            .map(|(c, start)| c.read().unwrap().rx_bytes - *start)
            .collect()
    }

    /// "A 12.3 MiB (38%), B ..." relative to `body` bytes.
    pub fn describe(&mut self, body: u64) -> String {
        self.read()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    "{} {:.1} MiB ({:.0}%)",
                    router_letter(i).to_ascii_uppercase(),
                    *b as f64 / MIB as f64,
                    *b as f64 * 100.0 / body as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The parts of `tandem status --json` the tests use.
#[derive(Debug, Default, Clone)]
pub struct Status {
    /// The JSON text as printed.
    pub raw: String,
    /// Decision counters (`accelerated` and each pass-through reason).
    pub decisions: BTreeMap<String, u64>,
    /// Packet counters (`queued`, `injected`, ...).
    pub packets: BTreeMap<String, u64>,
    /// Body bytes delivered per configured peer.
    pub peer_bytes: BTreeMap<String, u64>,
}

impl Status {
    /// Parses the snapshot's flat counter maps and the peers' byte counts.
    /// A tiny reader for the daemon's own output (the tests package has no
    /// JSON dependency): it fails loudly if the format changes.
    pub fn parse(raw: &str) -> Status {
        let compact: String = raw.split_whitespace().collect();
        let map = |key: &str| -> BTreeMap<String, u64> {
            let start = compact
                .find(&format!("\"{key}\":{{"))
                .unwrap_or_else(|| panic!("no {key:?} map in status: {raw}"));
            let body = &compact[start + key.len() + 4..];
            let end = body.find('}').expect("map end");
            body[..end]
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once(':').expect("key:value");
                    (
                        k.trim_matches('"').to_string(),
                        v.parse::<f64>().expect("number") as u64,
                    )
                })
                .collect()
        };
        let mut peer_bytes = BTreeMap::new();
        if let Some(start) = compact.find("\"peers\":[") {
            let body = &compact[start + 9..];
            let end = body.find(']').expect("peers end");
            for obj in body[..end].split("},{") {
                let field = |f: &str| {
                    let i = obj.find(&format!("\"{f}\":"))? + f.len() + 3;
                    let v = &obj[i..];
                    let e = v.find([',', '}']).unwrap_or(v.len());
                    Some(v[..e].trim_matches('"').to_string())
                };
                if let (Some(n), Some(b)) = (field("name"), field("bytes")) {
                    peer_bytes.insert(n, b.parse().expect("peer bytes"));
                }
            }
        }
        Status {
            raw: raw.to_string(),
            decisions: map("decisions"),
            packets: map("packets"),
            peer_bytes,
        }
    }

    /// A decision counter (0 if absent).
    pub fn decision(&self, name: &str) -> u64 {
        self.decisions.get(name).copied().unwrap_or(0)
    }

    /// A packet counter (0 if absent).
    pub fn packet(&self, name: &str) -> u64 {
        self.packets.get(name).copied().unwrap_or(0)
    }
}

/// Packets the kernel handed to NFQUEUE `queue` in namespace `ns` so far
/// (`id_sequence` of /proc/net/netfilter/nfnetlink_queue; 0 if the queue
/// has no listener line).
pub fn nfqueue_total(topo: &Topology, ns: &str, queue: u16) -> u64 {
    let text = topo
        .exec(ns, &["cat", "/proc/net/netfilter/nfnetlink_queue"])
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first()?.parse::<u16>().ok()? == queue).then(|| f.get(7)?.parse::<u64>().ok())?
        })
        .sum()
}

/// Waits until `path` holds at least `bytes` bytes; panics if the download
/// ends first or nothing happens for 120 s.
pub fn wait_for_bytes(p: &Proc, path: &Path, bytes: u64) {
    let start = Instant::now();
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < bytes {
        assert!(
            p.is_running(),
            "{} ended before {bytes} bytes: {}",
            p.name(),
            p.log()
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel's view of the daemon's queues in one router namespace: what
/// the daemon was sent and what the kernel let past it. The queue the
/// first packets of a flow go to is fail-open, so a daemon that falls
/// behind does not see some packets — including, possibly, a response head
/// (then that connection gets no decision).
#[derive(Debug, Default, Clone)]
pub struct QueueReport {
    /// Per bound queue: (number, packets in the queue now, dropped because
    /// it was full, dropped because the socket was full, packets enqueued
    /// in all (`id_sequence`)), from /proc/net/netfilter/nfnetlink_queue.
    /// With the fail-open flag, a full queue passes packets uncounted.
    pub queues: Vec<(u16, u64, u64, u64, u64)>,
    /// `Drops` of the daemon's NETLINK_NETFILTER socket (/proc/net/netlink):
    /// messages the socket's receive buffer had no room for. On a fail-open
    /// queue each such packet was accepted without the daemon seeing it
    /// (kernel `__nfqnl_enqueue_packet`: `nfnetlink_unicast` failed, the
    /// packet is reinjected with NF_ACCEPT and counted nowhere else).
    pub socket_drops: u64,
    /// Packets that met a queue rule (NFQUEUE targets of the mangle
    /// `TANDEM` chain): enqueued, or passed by a full fail-open queue
    /// (which `id_sequence` does not count).
    pub rule_hits: u64,
}

impl QueueReport {
    /// Reads the counters in namespace `ns`.
    pub fn read(topo: &Topology, ns: &str) -> QueueReport {
        let cat = |f: &str| topo.exec(ns, &["cat", f]).unwrap_or_default();
        let mut r = QueueReport::default();
        // The rules' counters first: a packet counted there is enqueued (or
        // passed) before the queue's counters are read, so a packet still
        // in flight cannot look passed.
        let rules = topo
            .exec(
                ns,
                &[
                    "iptables", "-w", "-t", "mangle", "-L", "TANDEM", "-v", "-n", "-x",
                ],
            )
            .unwrap_or_default();
        let mut portids = Vec::new();
        for l in cat("/proc/net/netfilter/nfnetlink_queue").lines() {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [
                q,
                portid,
                total,
                _mode,
                _range,
                dropped,
                user_dropped,
                seq,
                ..,
            ] = f[..]
            {
                r.queues.push((q as u16, total, dropped, user_dropped, seq));
                portids.push(portid);
            }
        }
        portids.dedup();
        r.rule_hits = rules
            .lines()
            .filter(|l| l.contains("NFQUEUE"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        for l in cat("/proc/net/netlink").lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; Eth 12 = NETLINK_NETFILTER.
            if f.len() >= 9
                && f[1] == "12"
                && f[2].parse::<u64>().is_ok_and(|p| portids.contains(&p))
            {
                r.socket_drops += f[8].parse::<u64>().unwrap_or(0);
            }
        }
        r
    }

    /// Packets enqueued in all queues.
    pub fn enqueued(&self) -> u64 {
        self.queues.iter().map(|q| q.4).sum()
    }

    /// Packets waiting in the queues now.
    pub fn waiting(&self) -> u64 {
        self.queues.iter().map(|q| q.1).sum()
    }

    /// Packets that met a queue rule but never reached the daemon (full
    /// queue or full socket, both fail-open): rule hits − handled by the
    /// daemon (`handled`, its `queued` packet counter) − still waiting.
    /// Exact when no traffic flows while the counters are read.
    pub fn bypassed(&self, handled: u64) -> i64 {
        self.rule_hits as i64 - handled as i64 - self.waiting() as i64
    }
}

impl std::fmt::Display for QueueReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (q, total, dropped, user_dropped, seq) in &self.queues {
            write!(
                f,
                "queue {q}: {seq} enqueued, {total} waiting, {dropped} dropped (full), {user_dropped} dropped (socket); "
            )?;
        }
        write!(
            f,
            "socket receive-buffer drops {}; queue rules matched {} packets",
            self.socket_drops, self.rule_hits
        )
    }
}
