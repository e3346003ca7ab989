//! Setting up and tearing down the compared systems inside a built
//! topology: tandem daemons (with the bench's config knobs), the MPTCP
//! bonding anchor, or nothing (plain routing).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tandem_lab::Topology;
use tandem_lab::daemon::{self, DAEMON_QUEUE};
use tandem_lab::topology::{ORIGIN_IP, Proc, router_letter};

use crate::scenario::System;

/// Port of the MPTCP proxy on A (transparent, via REDIRECT).
pub const MPTCP_PROXY_PORT: u16 = 1080;
/// Port of the MPTCP aggregator next to the origin.
pub const MPTCP_AGGREGATOR_PORT: u16 = 1081;
/// Socket buffer size socat uses per read/write in the anchor.
const SOCAT_BLOCK: &str = "262144";

/// Settings the benchmark gives every daemon on top of the lab's config.
#[derive(Clone, Debug)]
pub struct TandemSettings {
    /// `[planner] policy`.
    pub policy: &'static str,
    /// `[eligibility] min_size`, bytes.
    pub min_size: u64,
    /// `[uplink] neighbour_share` (the default 0.5 caps what B gives A).
    pub neighbour_share: f64,
}

/// The config text for the bench: the lab's [`daemon::daemon_config`] with
/// `[node] testbed = true` (documentation-range origins count as public),
/// `[uplink] neighbour_share` and `[planner] policy` set (replaced if the
/// lab's text already has them, added otherwise).
pub fn bench_config(base: &str, s: &TandemSettings) -> Result<String> {
    let mut out = set_key(base, "node", "testbed", "true")?;
    out = set_key(
        &out,
        "uplink",
        "neighbour_share",
        &format!("{:.3}", s.neighbour_share),
    )?;
    if !out.contains("\n[planner]\n") {
        out.push_str("\n[planner]\n");
    }
    set_key(&out, "planner", "policy", &format!("{:?}", s.policy))
}

/// Sets `key = value` in TOML section `[section]` of `text`: replaces the
/// key's line inside the section, or inserts it right after the header.
fn set_key(text: &str, section: &str, key: &str, value: &str) -> Result<String> {
    let header = format!("[{section}]\n");
    let at = if text.starts_with(&header) {
        0
    } else {
        text.find(&format!("\n{header}"))
            .with_context(|| format!("no [{section}] section in the lab's daemon config"))?
            + 1
    };
    let body_start = at + header.len();
    let body_end = text[body_start..]
        .find("\n[")
        .map(|i| body_start + i + 1)
        .unwrap_or(text.len());
    let line = format!("{key} = {value}\n");
    let mut pos = body_start;
    for l in text[body_start..body_end].split_inclusive('\n') {
        let name = l.split('=').next().unwrap_or("").trim();
        if name == key && l.contains('=') {
            return Ok(format!("{}{line}{}", &text[..pos], &text[pos + l.len()..]));
        }
        pos += l.len();
    }
    Ok(format!(
        "{}{line}{}",
        &text[..body_start],
        &text[body_start..]
    ))
}

/// A system that is set up; [`Active::stop`] undoes it.
pub struct Active {
    /// Daemon processes by router index.
    pub daemons: Vec<(usize, Proc)>,
    /// Status socket of each daemon by router index.
    pub status_sockets: Vec<(usize, PathBuf)>,
    procs: Vec<Proc>,
    /// Commands that undo the setup, run in reverse order: (namespace, argv).
    undo: Vec<(String, Vec<String>)>,
}

impl Active {
    fn new() -> Self {
        Active {
            daemons: Vec::new(),
            status_sockets: Vec::new(),
            procs: Vec::new(),
            undo: Vec::new(),
        }
    }

    /// Process id of router `i`'s daemon.
    pub fn daemon_pid(&self, i: usize) -> Option<u32> {
        self.daemons
            .iter()
            .find(|(r, _)| *r == i)
            .map(|(_, p)| p.pid())
    }

    /// `tandem status --json` of router `i`'s daemon.
    pub fn status_json(&self, exe: &Path, i: usize) -> Result<String> {
        let sock = self
            .status_sockets
            .iter()
            .find(|(r, _)| *r == i)
            .map(|(_, s)| s.clone())
            .context("no daemon on that router")?;
        let out = std::process::Command::new(exe)
            .args(["status", "--json", "--socket"])
            .arg(&sock)
            .output()?;
        if !out.status.success() {
            bail!("tandem status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Fails with the log of the first daemon or helper that died.
    pub fn check_alive(&self) -> Result<()> {
        for p in self.daemons.iter().map(|(_, p)| p).chain(&self.procs) {
            if let Some(st) = p.try_wait()? {
                bail!("{} exited ({st}): {}", p.name(), tail(&p.log(), 800));
            }
        }
        Ok(())
    }

    /// Stops the processes and undoes the configuration.
    pub fn stop(self, topo: &Topology) {
        for (_, p) in &self.daemons {
            p.kill();
        }
        for p in &self.procs {
            p.kill();
        }
        for (ns, argv) in self.undo.iter().rev() {
            let _ = topo.exec(ns, argv);
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let t = s.trim();
    let start = t.char_indices().rev().nth(n).map(|(i, _)| i).unwrap_or(0);
    t[start..].to_owned()
}

/// Sets up `system` in `topo`. `rates` are each router's download rates
/// (Mbit/s) for the daemons' configs.
pub fn start(
    topo: &Topology,
    exe: &Path,
    system: System,
    rates: &[u64],
    min_size: u64,
) -> Result<Active> {
    match system {
        System::Plain => Ok(Active::new()),
        System::Mptcp => start_mptcp(topo),
        System::TandemProportional | System::TandemDynamic => {
            let s = TandemSettings {
                policy: system.policy().unwrap_or("dynamic"),
                min_size,
                neighbour_share: 1.0,
            };
            start_tandem(topo, exe, rates, &s)
        }
    }
}

fn start_tandem(topo: &Topology, exe: &Path, rates: &[u64], s: &TandemSettings) -> Result<Active> {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let n = topo.spec().routers;
    let dir = topo.workdir().join(format!("daemons-{k}"));
    std::fs::create_dir_all(&dir)?;
    let mut pubkeys = Vec::new();
    for i in 0..n {
        let key = dir.join(format!("key-{}", router_letter(i)));
        pubkeys.push(daemon::keygen(exe, &key)?);
    }
    let mut act = Active::new();
    for i in 0..n {
        let me = router_letter(i);
        let opts = daemon::DaemonOptions {
            min_size: s.min_size,
            neighbour_share: Some(s.neighbour_share),
            ..Default::default()
        };
        let mut spec = daemon::lab_spec(topo, i, &dir, &pubkeys, &opts);
        spec.queue = DAEMON_QUEUE;
        spec.testbed = true;
        if let Some(&r) = rates.get(i) {
            spec.uplink_mbit = r as f64;
        }
        for p in &mut spec.peers {
            let j = p.name.bytes().next().map(|b| (b - b'a') as usize);
            if let Some(&r) = j.and_then(|j| rates.get(j)) {
                p.rate_mbit = Some(r as f64);
            }
        }
        let text = bench_config(&daemon::daemon_config(&spec), s)?;
        let conf = dir.join(format!("tandem-{me}.toml"));
        std::fs::write(&conf, text)?;
        let check = std::process::Command::new(exe)
            .args(["run", "--check-config", "--config"])
            .arg(&conf)
            .output()?;
        if !check.status.success() {
            bail!(
                "config of {me} rejected: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        daemon::install_rules(topo, exe, i, &conf)?;
        let rules = dir.join(format!("rules-{me}.sh"));
        act.undo.push((
            topo.router_ns(i),
            vec!["sh".into(), rules.display().to_string(), "stop".into()],
        ));
        let p = topo.spawn(
            &topo.router_ns(i),
            &format!("daemon-{me}-{k}"),
            &[
                exe.as_os_str(),
                std::ffi::OsStr::new("run"),
                std::ffi::OsStr::new("--config"),
                conf.as_os_str(),
            ],
        )?;
        act.daemons.push((i, p));
        act.status_sockets.push((i, spec.status_socket.clone()));
    }
    // Wait for every status socket (the daemon is up), at most 10 s.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Err(e) = act.check_alive() {
            act.stop(topo);
            return Err(e);
        }
        if act.status_sockets.iter().all(|(_, s)| s.exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the peer links come up.
    std::thread::sleep(Duration::from_millis(1500));
    if let Err(e) = act.check_alive() {
        act.stop(topo);
        return Err(e);
    }
    Ok(act)
}

/// The MPTCP anchor, as an OpenMPTCProuter user has it: A transparently
/// redirects the client's port-80 connections to a local proxy that speaks
/// MPTCP (`mptcpize run socat`) to an aggregator "VPS" next to the origin,
/// which connects to the origin. A's first subflow leaves over A's own
/// uplink; A has one MPTCP `subflow` endpoint per direct mesh neighbour,
/// policy-routed over the mesh to that neighbour, which NATs it onto its own
/// uplink. Both path-manager limits are raised to 8 subflows.
fn start_mptcp(topo: &Topology) -> Result<Active> {
    let mut act = Active::new();
    let a = topo.router_ns(0);
    let origin = topo.origin_ns();
    let r = |act: &mut Active, ns: &str, argv: &[&str], undo: Option<&[&str]>| -> Result<()> {
        topo.exec(ns, argv)
            .with_context(|| format!("MPTCP setup: {}", argv.join(" ")))?;
        if let Some(u) = undo {
            act.undo
                .push((ns.to_owned(), u.iter().map(|s| s.to_string()).collect()));
        }
        Ok(())
    };
    let result = (|| -> Result<()> {
        for ns in [&a, &origin] {
            r(
                &mut act,
                ns,
                &[
                    "ip",
                    "mptcp",
                    "limits",
                    "set",
                    "subflow",
                    "8",
                    "add_addr_accepted",
                    "8",
                ],
                None,
            )?;
        }
        let n = topo.spec().routers;
        for j in 1..n {
            let (Some(mine), Some(theirs)) = (topo.mesh_ip(0, j), topo.mesh_ip(j, 0)) else {
                continue;
            };
            let (mine, theirs) = (mine.to_string(), theirs.to_string());
            let table = (100 + j).to_string();
            let pref = (1000 + j).to_string();
            let dev = topo.mesh_iface(j);
            r(
                &mut act,
                &a,
                &[
                    "ip", "rule", "add", "from", &mine, "table", &table, "pref", &pref,
                ],
                Some(&["ip", "rule", "del", "pref", &pref]),
            )?;
            r(
                &mut act,
                &a,
                &[
                    "ip", "route", "add", "default", "via", &theirs, "dev", &dev, "table", &table,
                ],
                Some(&["ip", "route", "flush", "table", &table]),
            )?;
            r(
                &mut act,
                &a,
                &[
                    "ip", "mptcp", "endpoint", "add", &mine, "dev", &dev, "subflow",
                ],
                Some(&["ip", "mptcp", "endpoint", "flush"]),
            )?;
            let src = format!("{mine}/32");
            let nat = |op: &str| -> Vec<String> {
                [
                    "iptables",
                    "-w",
                    "-t",
                    "nat",
                    op,
                    "POSTROUTING",
                    "-s",
                    &src,
                    "-o",
                    "wan0",
                    "-j",
                    "MASQUERADE",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            };
            let add = nat("-A");
            let del = nat("-D");
            let add_ref: Vec<&str> = add.iter().map(String::as_str).collect();
            let del_ref: Vec<&str> = del.iter().map(String::as_str).collect();
            r(&mut act, &topo.router_ns(j), &add_ref, Some(&del_ref))?;
        }
        let port = MPTCP_PROXY_PORT.to_string();
        let redirect = |op: &str| -> Vec<String> {
            [
                "iptables",
                "-w",
                "-t",
                "nat",
                op,
                "PREROUTING",
                "-i",
                "lan0",
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "REDIRECT",
                "--to-ports",
                &port,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let add = redirect("-I");
        let del = redirect("-D");
        let add_ref: Vec<&str> = add.iter().map(String::as_str).collect();
        let del_ref: Vec<&str> = del.iter().map(String::as_str).collect();
        r(&mut act, &a, &add_ref, Some(&del_ref))?;
        let agg = topo.spawn(
            &origin,
            "mptcp-aggregator",
            &[
                "mptcpize",
                "run",
                "socat",
                "-b",
                SOCAT_BLOCK,
                &format!("TCP-LISTEN:{MPTCP_AGGREGATOR_PORT},bind={ORIGIN_IP},fork,reuseaddr"),
                &format!("TCP:{ORIGIN_IP}:80"),
            ],
        )?;
        act.procs.push(agg);
        let proxy = topo.spawn(
            &a,
            "mptcp-proxy",
            &[
                "mptcpize",
                "run",
                "socat",
                "-b",
                SOCAT_BLOCK,
                &format!("TCP-LISTEN:{MPTCP_PROXY_PORT},fork,reuseaddr"),
                &format!("TCP:{ORIGIN_IP}:{MPTCP_AGGREGATOR_PORT}"),
            ],
        )?;
        act.procs.push(proxy);
        for (ns, port) in [(&origin, MPTCP_AGGREGATOR_PORT), (&a, MPTCP_PROXY_PORT)] {
            let filter = format!("sport = :{port}");
            tandem_lab::netns::wait_until("MPTCP socat listening", Duration::from_secs(5), || {
                topo.exec(ns, &["ss", "-ltnH", &filter])
                    .map(|o| !o.trim().is_empty())
                    .unwrap_or(false)
            })?;
        }
        act.check_alive()
    })();
    match result {
        Ok(()) => Ok(act),
        Err(e) => {
            act.stop(topo);
            Err(e)
        }
    }
}

/// Copies a topology's process logs (daemons, origin, curl, …) into a
/// directory when dropped; declare it after the topology so it runs first.
pub struct KeepLogs {
    from: PathBuf,
    to: PathBuf,
}

impl KeepLogs {
    /// Keeps `topo`'s logs in `to`.
    pub fn new(topo: &Topology, to: &Path) -> Self {
        KeepLogs {
            from: topo.workdir().join("logs"),
            to: to.to_path_buf(),
        }
    }
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let _ = std::fs::create_dir_all(&self.to);
        if let Ok(dir) = std::fs::read_dir(&self.from) {
            for e in dir.filter_map(|e| e.ok()) {
                let name = e.file_name();
                // curl logs are many and say little once parsed.
                if !name.to_string_lossy().starts_with("curl-") {
                    let _ = std::fs::copy(e.path(), self.to.join(name));
                }
            }
        }
    }
}

/// MPTCP counters (`nstat -az MPTcpExt*`) of a namespace: name → value.
pub fn mptcp_counters(topo: &Topology, ns: &str) -> Vec<(String, u64)> {
    let Ok(out) = topo.exec(ns, &["nstat", "-az", "--json"]) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return Vec::new();
    };
    let mut r = Vec::new();
    if let Some(obj) = v.get("kernel").and_then(|k| k.as_object()) {
        for (k, val) in obj {
            if k.starts_with("MPTcpExt")
                && let Some(n) = val.as_u64()
            {
                r.push((k.clone(), n));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_config_sets_testbed_share_and_policy() {
        let base = "# c\n\n[node]\nname = \"b\"\nlisten = \"0.0.0.0:7788\"\n\n[uplink]\nrate_mbit = 20.0\n\n[status]\nsocket = \"/tmp/s\"\n";
        let s = TandemSettings {
            policy: "proportional",
            min_size: 1 << 20,
            neighbour_share: 1.0,
        };
        let c = bench_config(base, &s).unwrap();
        assert!(c.contains("[node]\ntestbed = true\nname = \"b\""), "{c}");
        assert!(
            c.contains("[uplink]\nneighbour_share = 1.000\nrate_mbit = 20.0"),
            "{c}"
        );
        assert!(
            c.ends_with("\n[planner]\npolicy = \"proportional\"\n"),
            "{c}"
        );
        // Keys already present are replaced, never duplicated.
        let base2 = base.replace("[node]\n", "[node]\ntestbed = false\n");
        let c2 = bench_config(&bench_config(&base2, &s).unwrap(), &s).unwrap();
        assert_eq!(c2.matches("testbed").count(), 1, "{c2}");
        assert!(c2.contains("testbed = true"));
        assert_eq!(c2.matches("neighbour_share").count(), 1);
        assert_eq!(c2.matches("[planner]").count(), 1);
        assert_eq!(c2.matches("policy").count(), 1);
        assert!(bench_config("nothing", &s).is_err());
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abcdef", 3), "cdef");
        assert_eq!(tail("ab", 10), "ab");
        assert_eq!(tail("  héllo ", 2), "llo");
    }
}
