//! The lab topology: clients behind routers, routers with shaped uplinks into
//! an "internet" namespace (with the delay line), a neighbour mesh between
//! routers, and an origin server behind the internet.
//!
//! ```text
//!  [client-a]──lan0 [A] wan0══up-a ─┐
//!                  mesh-b            │
//!                    │               ├─ [inet] (delay line) ── origin0 ── [origin]
//!                  mesh-a            │                                    203.0.113.10
//!                   [B] wan0══up-b ─┤
//!                  mesh-c            │
//!                    │               │
//!                  mesh-b            │
//!                   [C] wan0══up-c ─┘      ══ HTB-shaped uplink, both ways
//! ```
//!
//! See docs/lab.md for the addressing plan. Everything the topology creates
//! (namespaces, veths, qdiscs, iptables rules, processes, its work directory)
//! is removed when it is dropped, also during a panic's unwinding and on
//! SIGINT/SIGTERM.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::netns::{self, IfCounters};

/// Most routers a topology supports (the LAN plan splits 192.0.2.0/25 in /28s).
pub const MAX_ROUTERS: usize = 8;

/// The origin server's address.
pub const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The internet namespace's address on the origin's link.
pub const ORIGIN_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// All router LANs (clients) lie in this prefix: `192.0.2.0/25`.
pub const LAN_PREFIX: &str = "192.0.2.0/25";
/// All mesh links lie in this prefix: `192.0.2.128/25`.
pub const MESH_PREFIX: &str = "192.0.2.128/25";
/// NFQUEUE number of the delay line in the internet namespace.
pub const DELAY_QUEUE: u16 = 0;

/// A rate in bits per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

impl Rate {
    /// `n` Mbit/s (10^6 bit/s, as tc counts).
    pub const fn mbit(n: u64) -> Rate {
        Rate(n * 1_000_000)
    }
    /// Bytes per second.
    pub fn bytes_per_sec(self) -> f64 {
        self.0 as f64 / 8.0
    }
    /// Mbit/s as a float.
    pub fn as_mbit(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// Direction of traffic on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Leaving the namespace through the interface.
    Egress,
    /// Entering the namespace through the interface.
    Ingress,
}

/// Which way on a router's uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Internet → router.
    Down,
    /// Router → internet.
    Up,
}

/// What to build. Start from [`TopologySpec::standard`] or
/// [`TopologySpec::pair`] and adjust the public fields.
#[derive(Clone, Debug)]
pub struct TopologySpec {
    /// Number of routers (A, B, C, …), 1..=[`MAX_ROUTERS`].
    pub routers: usize,
    /// Mesh links between routers, by index (0 = A).
    pub mesh: Vec<(usize, usize)>,
    /// Routers that have a client namespace on their LAN.
    pub clients: Vec<usize>,
    /// Download rate of each router's uplink (same for all), `None` = unshaped.
    pub down: Option<Rate>,
    /// Upload rate of each router's uplink, `None` = unshaped.
    pub up: Option<Rate>,
    /// Per-router override of the download rate.
    pub down_per_router: Vec<(usize, Rate)>,
    /// Rate of every mesh link (both ways), `None` = unshaped.
    pub mesh_rate: Option<Rate>,
    /// One-way delay added by the delay line in the internet namespace.
    pub delay_ms: u32,
    /// Program and leading arguments that run the delay line
    /// (e.g. `[tandem, "delayline"]`); `--queue` and `--delay-ms` are appended.
    /// Required when `delay_ms > 0`.
    pub delay_command: Vec<OsString>,
    /// Put the origin in its own namespace behind the internet (true) or give
    /// the internet namespace the origin address itself (false).
    pub origin_own_ns: bool,
    /// Disable checksum/segmentation offloads on every veth, so captures show
    /// real checksums and MSS-sized segments like on a real router.
    pub no_offloads: bool,
}

impl TopologySpec {
    /// The project's standard testbed: client behind A, routers A, B, C with
    /// mesh A–B and B–C (C is a 2-hop neighbour of A), 20 Mbit/s uplinks both
    /// ways, 54 Mbit/s mesh links, 10 ms one-way internet delay.
    pub fn standard(delay_command: Vec<OsString>) -> Self {
        TopologySpec {
            routers: 3,
            mesh: vec![(0, 1), (1, 2)],
            ..Self::pair(delay_command)
        }
    }

    /// Client behind A, routers A and B, mesh A–B; rates as in [`Self::standard`].
    pub fn pair(delay_command: Vec<OsString>) -> Self {
        TopologySpec {
            routers: 2,
            mesh: vec![(0, 1)],
            clients: vec![0],
            down: Some(Rate::mbit(20)),
            up: Some(Rate::mbit(20)),
            down_per_router: Vec::new(),
            mesh_rate: Some(Rate::mbit(54)),
            delay_ms: 10,
            delay_command,
            origin_own_ns: true,
            no_offloads: true,
        }
    }

    /// A chain mesh A–B–C–… over `n` routers.
    pub fn chain(n: usize) -> Vec<(usize, usize)> {
        (1..n).map(|i| (i - 1, i)).collect()
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            (1..=MAX_ROUTERS).contains(&self.routers),
            "routers must be 1..={MAX_ROUTERS}, not {}",
            self.routers
        );
        ensure!(self.mesh.len() <= 32, "at most 32 mesh links");
        for &(a, b) in &self.mesh {
            ensure!(
                a < self.routers && b < self.routers && a != b,
                "bad mesh link {a}–{b}"
            );
        }
        for &c in &self.clients {
            ensure!(
                c < self.routers,
                "client behind router {c} which does not exist"
            );
        }
        ensure!(
            self.delay_ms == 0 || !self.delay_command.is_empty(),
            "delay_ms > 0 needs a delay_command"
        );
        Ok(())
    }
}

/// Letter of router `i` (0 → `a`).
pub fn router_letter(i: usize) -> char {
    (b'a' + i as u8) as char
}

/// Router `i`'s LAN address (`192.0.2.(16i+1)`).
pub fn router_lan_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (16 * i + 1) as u8)
}
/// The client behind router `i` (`192.0.2.(16i+2)`).
pub fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (16 * i + 2) as u8)
}
/// Router `i`'s LAN prefix (`192.0.2.16i/28`).
pub fn lan_cidr(i: usize) -> String {
    format!("192.0.2.{}/28", 16 * i)
}
/// Router `i`'s public WAN address (`198.51.100.(4i+2)`).
pub fn router_wan_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, (4 * i + 2) as u8)
}
/// The internet side of router `i`'s uplink (`198.51.100.(4i+1)`).
pub fn uplink_gw_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, (4 * i + 1) as u8)
}
/// Addresses of mesh link `k` (`192.0.2.(128+4k)/30`): (lower router, higher router).
pub fn mesh_ips(k: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = 128 + 4 * k as u8;
    (
        Ipv4Addr::new(192, 0, 2, base + 1),
        Ipv4Addr::new(192, 0, 2, base + 2),
    )
}

/// A process started inside a namespace; killed (with its process group)
/// when the topology is torn down, or earlier with [`Proc::kill`].
#[derive(Clone)]
pub struct Proc {
    name: String,
    pid: u32,
    child: Arc<Mutex<Child>>,
    log: PathBuf,
}

impl Proc {
    /// A short name, also the log file's stem.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Process id (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// File that receives the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// The log's content so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Exit status if it has exited.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        Ok(c.try_wait()?)
    }
    /// True while it runs.
    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }
    /// Waits for exit up to `timeout`; `None` if still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    /// Sends `sig` to the process group.
    pub fn signal(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.pid as i32), sig);
    }
    /// SIGTERM, then SIGKILL after 1 s; reaps it.
    pub fn kill(&self) {
        if !self.is_running() {
            return;
        }
        self.signal(Signal::SIGTERM);
        if matches!(self.wait_timeout(Duration::from_secs(1)), Ok(None)) {
            self.signal(Signal::SIGKILL);
            let _ = self.wait_timeout(Duration::from_secs(2));
        }
    }
    /// Waits (up to `timeout`) for `needle` to appear in the log, failing early
    /// if the process exits first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(s) = self.try_wait()? {
                bail!(
                    "{} exited ({s}) before printing {needle:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A built topology. Dropping it removes everything it created.
pub struct Topology {
    spec: TopologySpec,
    run_id: String,
    workdir: PathBuf,
    namespaces: Vec<String>,
    procs: Mutex<Vec<Proc>>,
    keep: bool,
    delayline: Option<Proc>,
}

impl Topology {
    /// Builds the topology described by `spec`. On error, whatever was
    /// already created is removed.
    pub fn build(spec: TopologySpec) -> Result<Topology> {
        netns::require_root()?;
        spec.validate()?;
        netns::ensure_cleanup_handlers();
        netns::remove_stale();
        let run_id = netns::new_run_id();
        let workdir = netns::lab_root().join(&run_id);
        std::fs::create_dir_all(workdir.join("logs"))
            .with_context(|| format!("creating {}", workdir.display()))?;
        netns::register_path(&workdir);
        let mut topo = Topology {
            spec,
            run_id,
            workdir,
            namespaces: Vec::new(),
            procs: Mutex::new(Vec::new()),
            keep: false,
            delayline: None,
        };
        topo.construct()?; // on error `topo` is dropped: teardown
        Ok(topo)
    }

    /// Per-run id, the prefix of every namespace name.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }
    /// The spec it was built from.
    pub fn spec(&self) -> &TopologySpec {
        &self.spec
    }
    /// A directory for this run's files (logs, downloads); removed on teardown.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }
    /// All namespace names of this topology.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
    /// Namespace of router `i`.
    pub fn router_ns(&self, i: usize) -> String {
        format!("{}-{}", self.run_id, router_letter(i))
    }
    /// Namespace of the client behind router `i`.
    pub fn client_ns(&self, i: usize) -> String {
        format!("{}-client-{}", self.run_id, router_letter(i))
    }
    /// The internet namespace.
    pub fn internet_ns(&self) -> String {
        format!("{}-inet", self.run_id)
    }
    /// The namespace the origin server runs in.
    pub fn origin_ns(&self) -> String {
        if self.spec.origin_own_ns {
            format!("{}-origin", self.run_id)
        } else {
            self.internet_ns()
        }
    }
    /// Interface on router `i` towards its mesh neighbour `j`.
    pub fn mesh_iface(&self, j: usize) -> String {
        format!("mesh-{}", router_letter(j))
    }
    /// Internet-namespace interface of router `i`'s uplink.
    pub fn uplink_iface(&self, i: usize) -> String {
        format!("up-{}", router_letter(i))
    }
    /// Router `i`'s address on the mesh link to `j`, if that link exists.
    pub fn mesh_ip(&self, i: usize, j: usize) -> Option<Ipv4Addr> {
        let k = self
            .spec
            .mesh
            .iter()
            .position(|&(a, b)| (a, b) == (i, j) || (a, b) == (j, i))?;
        let (lo, hi) = mesh_ips(k);
        let (a, _) = self.spec.mesh[k];
        Some(if a == i { lo } else { hi })
    }
    /// Don't tear down on Drop (for `tandem lab --keep`); the namespaces,
    /// their processes and the work dir stay until removed by hand with
    /// [`Self::removal_command`], and later runs do not sweep them.
    pub fn keep(&mut self) {
        self.keep = true;
        for n in &self.namespaces {
            netns::forget(n);
        }
        netns::unregister_path(&self.workdir);
        // Later runs' stale-namespace sweep leaves a kept run alone.
        let _ = std::fs::write(
            self.workdir.join(netns::KEEP_MARKER),
            "kept on purpose; remove with the command printed by the lab\n",
        );
    }

    /// A shell command that removes this topology by hand (after [`Self::keep`]).
    pub fn removal_command(&self) -> String {
        format!(
            "for n in {}; do ip netns pids $n | xargs -r kill; ip netns del $n; done; rm -rf {}",
            self.namespaces.join(" "),
            self.workdir.display()
        )
    }

    /// Runs `argv` in namespace `ns` to completion; stdout on success.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: &str, argv: &[S]) -> Result<String> {
        let out = netns::run(&mut netns::ns_command(ns, argv))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `argv` in namespace `ns` in its own process group, output to
    /// `<workdir>/logs/<name>.log`; killed on teardown.
    pub fn spawn<S: AsRef<OsStr>>(&self, ns: &str, name: &str, argv: &[S]) -> Result<Proc> {
        let cmd = netns::ns_command(ns, argv);
        self.spawn_command(name, cmd)
    }

    /// Like [`Self::spawn`] for a prepared command (e.g. with env vars set);
    /// wrap it with [`netns::ns_command`] to run it inside a namespace.
    pub fn spawn_command(&self, name: &str, mut cmd: Command) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        // No PR_SET_PDEATHSIG: with `--keep` the processes must outlive us.
        // Processes of a run that was SIGKILLed die with its namespaces when the
        // next run calls `netns::remove_stale`.
        let log = self.workdir.join("logs").join(format!("{name}.log"));
        let f = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", netns::show(&cmd)))?;
        let p = Proc {
            name: name.to_owned(),
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
            log,
        };
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.clone());
        Ok(p)
    }

    /// Byte counters of `iface` in `ns`.
    pub fn counters(&self, ns: &str, iface: &str) -> Result<IfCounters> {
        IfCounters::open(ns, iface)
    }

    /// Drops a random fraction `p` (0..1) of the packets passing `iface` in
    /// `ns` in direction `dir` (iptables statistic match in the mangle table).
    pub fn add_loss(&self, ns: &str, iface: &str, dir: Dir, p: f64) -> Result<()> {
        ensure!((0.0..=1.0).contains(&p), "loss probability {p} not in 0..1");
        let (chain, flag) = match dir {
            Dir::Egress => ("POSTROUTING", "-o"),
            Dir::Ingress => ("PREROUTING", "-i"),
        };
        let prob = format!("{p:.6}");
        self.exec(
            ns,
            &[
                "iptables",
                "-w",
                "-t",
                "mangle",
                "-I",
                chain,
                flag,
                iface,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &prob,
                "-j",
                "DROP",
            ],
        )?;
        Ok(())
    }

    /// Random loss `p` on router `i`'s uplink, one way (applied in the
    /// internet namespace).
    pub fn add_uplink_loss(&self, i: usize, way: Way, p: f64) -> Result<()> {
        let dir = match way {
            Way::Down => Dir::Egress,
            Way::Up => Dir::Ingress,
        };
        self.add_loss(&self.internet_ns(), &self.uplink_iface(i), dir, p)
    }

    /// (Re)shapes router `i`'s uplink in direction `way` to `rate`.
    pub fn shape_uplink(&self, i: usize, way: Way, rate: Rate) -> Result<()> {
        match way {
            Way::Down => shape(
                &self.internet_ns(),
                &self.uplink_iface(i),
                rate,
                self.spec.delay_ms,
            ),
            Way::Up => shape(&self.router_ns(i), "wan0", rate, self.spec.delay_ms),
        }
    }

    /// The delay-line process, if one runs.
    pub fn delayline(&self) -> Option<&Proc> {
        self.delayline.as_ref()
    }

    /// What the delay line let through undelayed so far, with its
    /// counters, or `None` without a delay line. Its queue is fail-open: a
    /// packet that finds the queue or the delay line's socket full passes
    /// at once, overtaking the packets held before it — the testbed then
    /// reorders (a response head overtaken by enough later segments of its
    /// flow misses the daemon's first-packets queue window, for instance).
    pub fn delayline_bypass(&self) -> Result<Option<DelayLineBypass>> {
        if self.delayline.is_none() {
            return Ok(None);
        }
        let inet = self.internet_ns();
        // The rule's counter first: a packet counted there is enqueued (or
        // passed) before the queue's counters are read, so traffic still
        // flowing cannot make an enqueued packet look passed.
        let rules = self.exec(
            &inet,
            &["iptables", "-w", "-L", "FORWARD", "-v", "-n", "-x"],
        )?;
        let Some(c) = netns::nfqueue_counters(&inet, DELAY_QUEUE)? else {
            return Ok(None);
        };
        let rule_hits: u64 = rules
            .lines()
            .filter(|l| l.contains("NFQUEUE"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Ok(Some(DelayLineBypass {
            rule_hits,
            counters: c,
        }))
    }

    /// Removes everything now (also done by Drop). Errors are collected.
    pub fn teardown(&mut self) -> Result<()> {
        let procs: Vec<Proc> =
            std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for p in procs.iter().rev() {
            p.kill();
        }
        let mut errors = String::new();
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = netns::destroy(&ns) {
                let _ = writeln!(errors, "{e:#}");
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "tandem-lab: test panicked; logs kept in {}",
                self.workdir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
        netns::unregister_path(&self.workdir);
        if !errors.is_empty() {
            bail!("teardown: {errors}");
        }
        Ok(())
    }

    // -----------------------------------------------------------------------

    fn add_ns(&mut self, name: String) -> Result<()> {
        netns::create(&name)?;
        self.namespaces.push(name);
        Ok(())
    }

    fn construct(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        let inet = self.internet_ns();
        self.add_ns(inet.clone())?;
        for i in 0..spec.routers {
            self.add_ns(self.router_ns(i))?;
        }
        for &c in &spec.clients {
            self.add_ns(self.client_ns(c))?;
        }
        if spec.origin_own_ns {
            self.add_ns(self.origin_ns())?;
        }
        for ns in self.namespaces.clone() {
            // No IPv6 chatter (RS, MLD, DAD) in captures; forwarding where needed.
            netns::host(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.ip_forward=1",
            ])?;
        }

        // Uplinks: router wan0 <-> inet up-x.
        for i in 0..spec.routers {
            let r = self.router_ns(i);
            let up = self.uplink_iface(i);
            veth(&r, "wan0", &inet, &up)?;
            addr(&r, "wan0", router_wan_ip(i), 30)?;
            addr(&inet, &up, uplink_gw_ip(i), 30)?;
            route(&r, "default", uplink_gw_ip(i))?;
            // Documentation-range packets with no better route never go to the WAN.
            ip(&r, &["route", "add", "unreachable", "192.0.2.0/24"])?;
            // NAT like a home router: the LAN is masqueraded on the WAN.
            self.exec(
                &r,
                &[
                    "iptables",
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-s",
                    &lan_cidr(i),
                    "-o",
                    "wan0",
                    "-j",
                    "MASQUERADE",
                ],
            )?;
        }
        // Clients.
        for &c in &spec.clients {
            let cn = self.client_ns(c);
            let r = self.router_ns(c);
            veth(&cn, "eth0", &r, "lan0")?;
            addr(&cn, "eth0", client_ip(c), 28)?;
            addr(&r, "lan0", router_lan_ip(c), 28)?;
            route(&cn, "default", router_lan_ip(c))?;
        }
        // Routers without a client still have a LAN (`lan0`, a veth whose
        // peer `lan0-stub` stays in the router; the kernel has no dummy
        // device), as real routers do; daemons and firewall rules can name it.
        for i in (0..spec.routers).filter(|i| !spec.clients.contains(i)) {
            let r = self.router_ns(i);
            veth(&r, "lan0", &r, "lan0-stub")?;
            addr(&r, "lan0", router_lan_ip(i), 28)?;
        }
        // Mesh.
        for (k, &(a, b)) in spec.mesh.iter().enumerate() {
            let (ra, rb) = (self.router_ns(a), self.router_ns(b));
            let (ia, ib) = (self.mesh_iface(b), self.mesh_iface(a));
            veth(&ra, &ia, &rb, &ib)?;
            let (lo, hi) = mesh_ips(k);
            addr(&ra, &ia, lo, 30)?;
            addr(&rb, &ib, hi, 30)?;
        }
        // Origin.
        if spec.origin_own_ns {
            let o = self.origin_ns();
            veth(&inet, "origin0", &o, "eth0")?;
            addr(&inet, "origin0", ORIGIN_GW, 24)?;
            addr(&o, "eth0", ORIGIN_IP, 24)?;
            route(&o, "default", ORIGIN_GW)?;
        } else {
            veth(&inet, "origin0", &inet, "origin0-stub")?;
            addr(&inet, "origin0", ORIGIN_IP, 24)?;
        }
        if spec.no_offloads {
            self.disable_offloads()?;
        }
        // Shaping.
        for i in 0..spec.routers {
            let down = spec
                .down_per_router
                .iter()
                .find(|(r, _)| *r == i)
                .map(|(_, rate)| *rate)
                .or(spec.down);
            if let Some(rate) = down {
                self.shape_uplink(i, Way::Down, rate)?;
            }
            if let Some(rate) = spec.up {
                self.shape_uplink(i, Way::Up, rate)?;
            }
        }
        if let Some(rate) = spec.mesh_rate {
            for &(a, b) in &spec.mesh {
                shape(&self.router_ns(a), &self.mesh_iface(b), rate, 0)?;
                shape(&self.router_ns(b), &self.mesh_iface(a), rate, 0)?;
            }
        }
        // Delay line.
        if spec.delay_ms > 0 {
            let mut argv = spec.delay_command.clone();
            argv.extend(
                [
                    "--queue".to_owned(),
                    DELAY_QUEUE.to_string(),
                    "--delay-ms".to_owned(),
                    spec.delay_ms.to_string(),
                ]
                .map(OsString::from),
            );
            let p = self.spawn(&inet, "delayline", &argv)?;
            p.wait_for_log(crate::delayline::READY_LINE, Duration::from_secs(10))?;
            self.exec(
                &inet,
                &[
                    "iptables",
                    "-w",
                    "-A",
                    "FORWARD",
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &DELAY_QUEUE.to_string(),
                    "--queue-bypass",
                ],
            )?;
            self.delayline = Some(p);
        }
        Ok(())
    }

    fn disable_offloads(&self) -> Result<()> {
        let mut ifaces: Vec<(String, String)> = Vec::new();
        let inet = self.internet_ns();
        for i in 0..self.spec.routers {
            ifaces.push((self.router_ns(i), "wan0".into()));
            ifaces.push((inet.clone(), self.uplink_iface(i)));
        }
        for &c in &self.spec.clients {
            ifaces.push((self.client_ns(c), "eth0".into()));
            ifaces.push((self.router_ns(c), "lan0".into()));
        }
        for &(a, b) in &self.spec.mesh {
            ifaces.push((self.router_ns(a), self.mesh_iface(b)));
            ifaces.push((self.router_ns(b), self.mesh_iface(a)));
        }
        if self.spec.origin_own_ns {
            ifaces.push((self.origin_ns(), "eth0".into()));
            ifaces.push((inet.clone(), "origin0".into()));
        }
        for (ns, i) in ifaces {
            self.exec(
                &ns,
                &[
                    "ethtool", "-K", &i, "tx", "off", "rx", "off", "tso", "off", "gso", "off",
                    "gro", "off",
                ],
            )
            .context("disabling offloads (is ethtool installed?)")?;
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("tandem-lab: {e:#}");
        }
    }
}

/// Shapes egress of `iface` in `ns`: HTB at `rate` with a short byte FIFO
/// (about 50 ms at the rate, at least 32 KiB, plus one RTT of the delay) so
/// queueing delay stays bounded.
pub fn shape(ns: &str, iface: &str, rate: Rate, delay_ms: u32) -> Result<()> {
    let bits = rate.0.to_string();
    let limit = fifo_limit(rate, delay_ms);
    let _ = ip_tc(ns, &["qdisc", "del", "dev", iface, "root"]);
    tc(
        ns,
        &[
            "qdisc", "add", "dev", iface, "root", "handle", "1:", "htb", "default", "10",
        ],
    )?;
    tc(
        ns,
        &[
            "class",
            "add",
            "dev",
            iface,
            "parent",
            "1:",
            "classid",
            "1:10",
            "htb",
            "rate",
            &format!("{bits}bit"),
            "ceil",
            &format!("{bits}bit"),
            "quantum",
            "1514",
        ],
    )?;
    tc(
        ns,
        &[
            "qdisc",
            "add",
            "dev",
            iface,
            "parent",
            "1:10",
            "handle",
            "10:",
            "bfifo",
            "limit",
            &limit.to_string(),
        ],
    )?;
    Ok(())
}

/// Byte limit of the FIFO under an HTB class at `rate`.
pub fn fifo_limit(rate: Rate, delay_ms: u32) -> u64 {
    let per_ms = rate.0 / 8 / 1000;
    (per_ms * (50 + 2 * u64::from(delay_ms))).max(32 * 1024)
}

fn tc(ns: &str, args: &[&str]) -> Result<()> {
    ip_tc(ns, args).map(drop)
}

fn ip_tc(ns: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["tc", "-n", ns];
    v.extend_from_slice(args);
    netns::host(&v)
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    netns::host(&v).map(drop)
}

fn veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
    netns::host(&[
        "ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns",
        ns_b,
    ])?;
    ip(ns_a, &["link", "set", if_a, "up"])?;
    ip(ns_b, &["link", "set", if_b, "up"])?;
    Ok(())
}

fn addr(ns: &str, iface: &str, a: Ipv4Addr, len: u8) -> Result<()> {
    ip(ns, &["addr", "add", &format!("{a}/{len}"), "dev", iface])
}

fn route(ns: &str, dst: &str, via: Ipv4Addr) -> Result<()> {
    ip(ns, &["route", "add", dst, "via", &via.to_string()])
}

/// The delay line's kernel counters (see [`Topology::delayline_bypass`]).
#[derive(Clone, Copy, Debug)]
pub struct DelayLineBypass {
    /// Packets that met the delay line's queue rule.
    pub rule_hits: u64,
    /// Its queue's and socket's counters.
    pub counters: netns::NfqueueCounters,
}

impl DelayLineBypass {
    /// Packets that passed undelayed: a full queue (rule hits not
    /// enqueued) or a full socket.
    pub fn undelayed(&self) -> u64 {
        self.rule_hits.saturating_sub(self.counters.enqueued) + self.counters.socket_drops
    }
}

impl std::fmt::Display for DelayLineBypass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "delay line: {} packets met its queue rule, {} enqueued, {} passed undelayed \
             ({} by a full queue, {} by a full socket)",
            self.rule_hits,
            self.counters.enqueued,
            self.undelayed(),
            self.rule_hits.saturating_sub(self.counters.enqueued),
            self.counters.socket_drops
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing_plan_is_disjoint() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..MAX_ROUTERS {
            for a in [
                router_lan_ip(i),
                client_ip(i),
                router_wan_ip(i),
                uplink_gw_ip(i),
            ] {
                assert!(seen.insert(a), "{a} used twice");
            }
        }
        for k in 0..32 {
            let (a, b) = mesh_ips(k);
            assert!(seen.insert(a) && seen.insert(b));
            assert!(a.octets()[3] >= 128, "mesh outside the LAN prefix");
        }
        for i in 0..MAX_ROUTERS {
            assert!(client_ip(i).octets()[3] < 128, "LAN inside 192.0.2.0/25");
        }
        assert_eq!(lan_cidr(1), "192.0.2.16/28");
    }

    #[test]
    fn fifo_limits_are_short() {
        // 20 Mbit/s = 2500 bytes/ms; 10 ms delay: 70 ms worth.
        assert_eq!(fifo_limit(Rate::mbit(20), 10), 2500 * 70);
        assert_eq!(fifo_limit(Rate::mbit(1), 0), 32 * 1024);
    }

    #[test]
    fn spec_validation() {
        let mut s = TopologySpec::standard(vec!["x".into()]);
        assert!(s.validate().is_ok());
        s.mesh.push((0, 9));
        assert!(s.validate().is_err());
        let mut s = TopologySpec::pair(Vec::new());
        assert!(s.validate().is_err(), "delay without a delay command");
        s.delay_ms = 0;
        assert!(s.validate().is_ok());
        assert_eq!(TopologySpec::chain(3), vec![(0, 1), (1, 2)]);
    }
}
