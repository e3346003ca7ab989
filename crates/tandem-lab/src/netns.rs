//! Network namespaces: creation, running commands and closures inside them,
//! and the process-wide cleanup registry that removes every namespace this
//! process created on Drop, on SIGINT/SIGTERM/SIGHUP and on a panic when the
//! binary is built with `panic = "abort"`.
//!
//! Every namespace name starts with `tdl<pid>-`, so namespaces left behind by a
//! process that was SIGKILLed can be recognised and removed by the next run
//! ([`remove_stale`]): the owning pid no longer exists.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Directory where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Prefix of every namespace name this crate creates.
pub const NS_PREFIX: &str = "tdl";

static NEXT_RUN: AtomicU32 = AtomicU32::new(0);

/// A fresh, process-unique run id such as `tdl4242-3`; namespace names are
/// `<run id>-<role>`.
pub fn new_run_id() -> String {
    let n = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    format!("{NS_PREFIX}{}-{n}", std::process::id())
}

/// Fails with a clear message unless the process runs as root.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the tandem lab needs root (network namespaces, veth, tc, iptables); \
             run as root, e.g. `sudo -E cargo test -p tandem-integration` or `sudo tandem lab`"
        );
    }
    Ok(())
}

/// Runs a command to completion; errors (with its stderr) if it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `argv` (program and arguments) on the host.
pub fn host(argv: &[&str]) -> Result<String> {
    let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let out = run(Command::new(prog).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `Command` that runs `argv` inside namespace `ns` (`ip netns exec`).
pub fn ns_command<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    cmd.args(argv);
    cmd
}

/// Human-readable rendering of a command, for error messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Creates the named namespace and registers it for cleanup.
pub fn create(name: &str) -> Result<()> {
    ensure_cleanup_handlers();
    host(&["ip", "netns", "add", name])?;
    lock_registry().namespaces.insert(name.to_owned(), ());
    // Bring up loopback: many tools (and the daemons) expect it.
    host(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Stops tracking `name`: it is no longer removed on signals (`--keep`).
pub fn forget(name: &str) {
    lock_registry().namespaces.remove(name);
}

/// Kills every process inside `name`, deletes the namespace and unregisters it.
/// Idempotent; the namespace's veth ends disappear with it.
pub fn destroy(name: &str) -> Result<()> {
    kill_all_in(name);
    let path = format!("{NETNS_DIR}/{name}");
    let res = if std::path::Path::new(&path).exists() {
        host(&["ip", "netns", "del", name]).map(drop)
    } else {
        Ok(())
    };
    lock_registry().namespaces.remove(name);
    res
}

/// Sends SIGKILL to every process in the namespace (`ip netns pids`) and
/// waits briefly for them to go.
pub fn kill_all_in(name: &str) {
    for _round in 0..20 {
        let pids = pids_in(name);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of all namespaces in `/run/netns`.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Namespaces created by this crate in the current process that still exist.
pub fn ours() -> Vec<String> {
    let mine = format!("{NS_PREFIX}{}-", std::process::id());
    list()
        .into_iter()
        .filter(|n| n.starts_with(&mine))
        .collect()
}

/// Where lab runs keep their work directories (the origin's files, logs,
/// captures): `$TANDEM_LAB_DIR` if set, else `/dev/shm` when it is a tmpfs,
/// else the temp dir.
///
/// Not on disk by default: these machines reclaim idle page cache
/// proactively (DAMON `pageout`; a 64 MiB file lost 17 MiB of its cache
/// after 50 s unread), and the origin then reads the body from disk in the
/// middle of a measured download. Measured 2026-11-21 with the files in
/// /tmp: two of nine 8 MiB benchmark downloads stalled every source at once
/// (0.35 s and 2.2 s; efficiency 0.785 and 0.436 instead of 0.93).
pub fn lab_root() -> PathBuf {
    if let Some(d) = std::env::var_os("TANDEM_LAB_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    let tmpfs = nix::sys::statfs::statfs(shm)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if tmpfs && is_writable_dir(shm) {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

fn is_writable_dir(d: &Path) -> bool {
    nix::unistd::access(
        d,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok()
}

/// Removes namespaces named `tdl<pid>-…` whose owning process is gone (left
/// behind by a SIGKILLed run), and such runs' work directories in the temp
/// dir. Never touches anything else.
pub fn remove_stale() {
    for name in list() {
        if is_stale(&name) {
            tracing::info!(ns = %name, "removing stale namespace of a dead lab run");
            let _ = destroy(&name);
        }
    }
    if let Ok(dir) = std::fs::read_dir(lab_root()) {
        for e in dir.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_stale(&name) && e.path().join("logs").is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Name of the marker file that protects a kept run (`--keep`) from
/// [`remove_stale`].
pub const KEEP_MARKER: &str = "KEEP";

/// True for `tdl<pid>-…` names whose pid is not a running process and whose
/// run was not kept on purpose.
fn is_stale(name: &str) -> bool {
    // Run id = `tdl<pid>-<n>`: the name up to the second '-'.
    let run: String = name.splitn(3, '-').take(2).collect::<Vec<_>>().join("-");
    if lab_root().join(&run).join(KEEP_MARKER).exists() {
        return false;
    }
    dead_owner(name)
}

fn dead_owner(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(NS_PREFIX) else {
        return false;
    };
    let Some((pid, _)) = rest.split_once('-') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `f` on a helper thread that has entered namespace `ns`; sockets the
/// closure creates live in that namespace (and stay there when returned).
/// `/proc/thread-self/net/*` opened by the closure show that namespace.
pub fn in_ns<T: Send, F: FnOnce() -> Result<T> + Send>(ns: &str, f: F) -> Result<T> {
    let file =
        File::open(format!("{NETNS_DIR}/{ns}")).with_context(|| format!("no namespace {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {ns}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Byte counters of one interface, read from `/proc/net/dev` of its
/// namespace; cheap enough to sample many times a second.
pub struct IfCounters {
    file: File,
    iface: String,
}

/// One reading of an interface's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfStats {
    /// Bytes received (entering the namespace on this interface).
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
}

impl IfCounters {
    /// Opens the counters of `iface` in namespace `ns`.
    pub fn open(ns: &str, iface: &str) -> Result<Self> {
        let file = in_ns(ns, || Ok(File::open("/proc/thread-self/net/dev")?))?;
        let mut c = IfCounters {
            file,
            iface: iface.to_owned(),
        };
        c.read()?;
        Ok(c)
    }

    /// Reads the counters now.
    pub fn read(&mut self) -> Result<IfStats> {
        use std::io::Seek;
        self.file.rewind()?;
        let mut text = String::new();
        self.file.read_to_string(&mut text)?;
        parse_net_dev(&text, &self.iface)
            .ok_or_else(|| anyhow!("interface {} not in /proc/net/dev", self.iface))
    }
}

/// The kernel's counters of one NFQUEUE (from
/// `/proc/net/netfilter/nfnetlink_queue`) and of the netlink socket bound
/// to it (`/proc/net/netlink`).
///
/// On a fail-open queue two kinds of packets pass the listener unseen, and
/// the kernel counts neither as a drop: those that find the queue full
/// (not in `enqueued` either: compare with the queue rule's packet count)
/// and those whose message finds the socket's receive buffer full (in
/// `enqueued` and in `socket_drops`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NfqueueCounters {
    /// Queue number.
    pub queue: u16,
    /// Netlink port id of the listener.
    pub portid: u32,
    /// Packets waiting for a verdict now.
    pub waiting: u64,
    /// Dropped because the queue was full (queues without fail-open).
    pub dropped_full: u64,
    /// Dropped because the socket was full (queues without fail-open).
    pub dropped_socket: u64,
    /// Packets given an id (`id_sequence`): every packet enqueued,
    /// including those a full socket then passed or dropped.
    pub enqueued: u64,
    /// `Drops` of the listener's socket: messages its receive buffer had no
    /// room for.
    pub socket_drops: u64,
}

/// Parses `/proc/net/netfilter/nfnetlink_queue` (`socket_drops` left 0).
pub fn parse_nfqueue(text: &str) -> Vec<NfqueueCounters> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l.split_whitespace().map_while(|x| x.parse().ok()).collect();
            let [q, portid, waiting, _mode, _range, full, socket, seq, ..] = f[..] else {
                return None;
            };
            Some(NfqueueCounters {
                queue: u16::try_from(q).ok()?,
                portid: u32::try_from(portid).ok()?,
                waiting,
                dropped_full: full,
                dropped_socket: socket,
                enqueued: seq,
                socket_drops: 0,
            })
        })
        .collect()
}

/// `Drops` of the NETLINK_NETFILTER socket with port id `portid` in the
/// text of `/proc/net/netlink`.
pub fn parse_netlink_drops(text: &str, portid: u32) -> Option<u64> {
    text.lines().skip(1).find_map(|l| {
        // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 9 && f[1] == "12" && f[2].parse::<u32>().ok()? == portid)
            .then(|| f[8].parse().ok())?
    })
}

/// The counters of NFQUEUE `queue` in namespace `ns` (`None`: nobody is
/// bound to it).
pub fn nfqueue_counters(ns: &str, queue: u16) -> Result<Option<NfqueueCounters>> {
    let (queues, netlink) = in_ns(ns, || {
        let queues = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
            .unwrap_or_default();
        let netlink = std::fs::read_to_string("/proc/thread-self/net/netlink")
            .context("reading /proc/net/netlink")?;
        Ok((queues, netlink))
    })?;
    Ok(parse_nfqueue(&queues)
        .into_iter()
        .find(|c| c.queue == queue)
        .map(|mut c| {
            c.socket_drops = parse_netlink_drops(&netlink, c.portid).unwrap_or(0);
            c
        }))
}

/// Parses one interface's line of `/proc/net/dev`.
pub fn parse_net_dev(text: &str, iface: &str) -> Option<IfStats> {
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != iface {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() < 10 {
            return None;
        }
        return Some(IfStats {
            rx_bytes: f[0],
            rx_packets: f[1],
            tx_bytes: f[8],
            tx_packets: f[9],
        });
    }
    None
}

/// Waits until `cond` holds, polling every 20 ms, or fails after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Process-wide cleanup registry.

/// Registered namespaces (and, via [`register_path`], temp dirs).
struct Registry {
    namespaces: BTreeMap<String, ()>,
    paths: BTreeMap<String, ()>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: BTreeMap::new(),
    paths: BTreeMap::new(),
});

fn lock_registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a directory to delete when the process is interrupted.
pub fn register_path(path: &std::path::Path) {
    lock_registry()
        .paths
        .insert(path.to_string_lossy().into_owned(), ());
}

/// Forgets a directory registered with [`register_path`].
pub fn unregister_path(path: &std::path::Path) {
    lock_registry().paths.remove(&*path.to_string_lossy());
}

/// Deletes every registered namespace and path. Called on fatal signals.
pub fn cleanup_all() {
    let (names, paths): (Vec<String>, Vec<String>) = {
        let r = lock_registry();
        (
            r.namespaces.keys().cloned().collect(),
            r.paths.keys().cloned().collect(),
        )
    };
    for n in names {
        let _ = destroy(&n);
    }
    for p in paths {
        let _ = std::fs::remove_dir_all(&p);
    }
}

static SIGNAL_PIPE_WR: AtomicU32 = AtomicU32::new(u32::MAX);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE_WR.load(Ordering::Relaxed);
    if fd != u32::MAX {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local.
        unsafe {
            libc::write(fd as libc::c_int, (&b as *const u8).cast(), 1);
        }
    }
}

/// Installs (once per process) SIGINT/SIGTERM/SIGHUP handlers that remove
/// every registered namespace and then exit with 128+signal, and, when
/// panics abort, a panic hook that does the same before aborting.
pub fn ensure_cleanup_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = install_signal_cleanup() {
            tracing::warn!("cannot install signal cleanup: {e:#}");
        }
        if cfg!(panic = "abort") {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                prev(info);
                cleanup_all();
            }));
        }
    });
}

fn install_signal_cleanup() -> Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: pipe2 just returned these two fresh descriptors; we own them.
    let rd = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    SIGNAL_PIPE_WR.store(fds[1] as u32, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("lab-signal-cleanup".into())
        .spawn(move || {
            let mut f = File::from(rd);
            let mut b = [0u8; 1];
            if f.read_exact(&mut b).is_ok() {
                let sig = i32::from(b[0]);
                eprintln!("\ntandem-lab: signal {sig}: removing lab namespaces…");
                cleanup_all();
                std::process::exit(128 + sig);
            }
        })?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfqueue_and_netlink_counters_are_parsed() {
        let q = "    0  12345     3 2     0     0     0    98765  1\n    7   3566     0 2 65531     5     6     8133  1\n";
        let c = parse_nfqueue(q);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[1],
            NfqueueCounters {
                queue: 7,
                portid: 3566,
                waiting: 0,
                dropped_full: 5,
                dropped_socket: 6,
                enqueued: 8133,
                socket_drops: 0
            }
        );
        let nl = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n\
                  00000000e336ff26 0   0          00000000 0        0        0     2        0        4\n\
                  00000000fcbc1fbb 12  12345      00000000 0        0        0     2        417      560\n\
                  00000000fcbc1fbc 12  3566       00000000 0        0        0     2        0        561\n";
        assert_eq!(parse_netlink_drops(nl, 12345), Some(417));
        assert_eq!(parse_netlink_drops(nl, 3566), Some(0));
        assert_eq!(parse_netlink_drops(nl, 1), None);
    }

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  wan0: 1234567    890    0    0    0     0          0         0    55555     444    0    0    0     0       0          0
";
        let s = parse_net_dev(text, "wan0").unwrap();
        assert_eq!(s.rx_bytes, 1234567);
        assert_eq!(s.rx_packets, 890);
        assert_eq!(s.tx_bytes, 55555);
        assert_eq!(s.tx_packets, 444);
        assert!(parse_net_dev(text, "eth9").is_none());
    }

    #[test]
    fn run_ids_are_unique_and_prefixed() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{NS_PREFIX}{}-", std::process::id())));
    }
}
