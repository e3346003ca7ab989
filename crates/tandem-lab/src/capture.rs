//! Packet captures (`tcpdump -U --immediate-mode`) that are complete up to
//! the moment they are stopped, and checks on them with `tshark`: no packet
//! with a LAN (192.0.2.0/24) source address on a router's WAN, no bad IP/TCP
//! checksums, no segment beyond the receiver's advertised window.
//!
//! Checksum checks are meaningful because the topology disables checksum
//! offloads on its veths ([`crate::TopologySpec::no_offloads`]).
//!
//! # Completeness
//!
//! tcpdump stops at SIGINT without reading what is still in its packet
//! ring: its "packets received by filter" then exceeds "packets captured"
//! by whatever arrived in the last moment (or, under load, by everything it
//! had not got round to). Comparing those two counters therefore fails
//! whenever traffic is still flowing at the stop — the origin's FIN-ACK of
//! a download that just ended, say (measured: "25117 captured, 25118
//! received by filter" with the last frame a client FIN) — and says nothing
//! about *which* packets are missing.
//!
//! [`Capture::stop`] instead sends a stop marker out of the captured
//! interface (one Ethernet frame of a local-experimental EtherType, which
//! no stack in the lab answers or forwards) and waits until tcpdump has
//! written it to the file. tcpdump reads its ring in order, so every
//! packet that crossed the interface before the marker is then in the file;
//! only then does it send SIGINT. It fails if the marker never arrives, or
//! if the kernel dropped packets (ring full). The marker frames are removed
//! from the file before it is returned, so the checks never see them.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;

use crate::netns;
use crate::topology::{Proc, Topology};

/// Display filter matching any packet with a documentation-LAN source.
pub const LAN_SOURCE_FILTER: &str = "ip.src == 192.0.2.0/24";

/// Display filter matching packets tshark flags as malformed (IP/TCP; the
/// check runs with the HTTP dissector off) or with a bad IP/TCP checksum (tshark 4.0 has no "window exceeded" analysis; see
/// [`window_violations`] for that).
pub const EXPERT_PROBLEM_FILTER: &str =
    "ip.checksum.status == 0 || tcp.checksum.status == 0 || _ws.malformed";

/// EtherType of the stop marker: IEEE 802 "local experimental 1", which
/// no protocol stack handles (the peer veth drops it unanswered).
pub const MARKER_ETHERTYPE: u16 = 0x88b5;

/// Payload prefix of every stop marker; a per-stop nonce follows.
const MARKER_TAG: &[u8] = b"tandem-lab capture stop marker ";

/// Destination MAC of the marker: locally administered unicast that no lab
/// interface has (the kernel gives veths random addresses; a clash would
/// only make the peer see and drop an unknown EtherType).
const MARKER_DST: [u8; 6] = [0x02, 0x74, 0x64, 0x6c, 0x61, 0x62];

/// How long [`Capture::stop`] waits for tcpdump to write the marker. It
/// returns as soon as it is written (milliseconds); this only bounds how
/// long a capture that lost it is waited for.
const MARKER_WAIT: Duration = Duration::from_secs(30);

/// pcap link type of Ethernet captures.
const LINKTYPE_ETHERNET: u32 = 1;

/// A running capture on one interface.
pub struct Capture {
    proc: Proc,
    path: PathBuf,
    ns: String,
    iface: String,
}

impl Capture {
    /// Starts `tcpdump -U --immediate-mode` on `iface` in `ns`, writing
    /// `<workdir>/<name>.pcap`, optionally with a BPF `filter` (stop markers
    /// pass it too); waits until it listens.
    ///
    /// `--immediate-mode` besides `-U`: without it libpcap hands packets
    /// over in TPACKET_V3 blocks that retire only when full or after a 1 s
    /// timeout (measured: a reset that ended a download 1.4 s after the
    /// last data was missing from the file).
    pub fn start(
        topo: &Topology,
        ns: &str,
        iface: &str,
        name: &str,
        filter: Option<&str>,
    ) -> Result<Capture> {
        let path = topo.workdir().join(format!("{name}.pcap"));
        let path_s = path.to_string_lossy().into_owned();
        let filter = filter.map(|f| format!("({f}) or ether proto {MARKER_ETHERTYPE:#06x}"));
        let mut argv = vec![
            "tcpdump",
            "-U",
            "--immediate-mode",
            "-n",
            "-i",
            iface,
            "-w",
            &path_s,
        ];
        if let Some(f) = &filter {
            argv.push(f);
        }
        let proc = topo.spawn(ns, &format!("tcpdump-{name}"), &argv)?;
        proc.wait_for_log("listening on", Duration::from_secs(10))?;
        Ok(Capture {
            proc,
            path,
            ns: ns.to_owned(),
            iface: iface.to_owned(),
        })
    }

    /// Stops the capture once it holds every packet that crossed the
    /// interface before this call (see the module doc), removes the stop
    /// marker from the file and returns its path.
    ///
    /// Fails if tcpdump did not write the marker within 30 s, exited early,
    /// or reports packets dropped by the kernel; the error names the file
    /// and tcpdump's counters.
    pub fn stop(self) -> Result<PathBuf> {
        self.stop_with_stats().map(|(path, _)| path)
    }

    /// [`Capture::stop`], also returning tcpdump's closing statistics
    /// (`None` if it had to be killed). Its counters include the stop
    /// marker, and "received by filter" also the packets that arrived
    /// after the marker while tcpdump stopped.
    pub fn stop_with_stats(self) -> Result<(PathBuf, Option<TcpdumpStats>)> {
        let nonce = marker_nonce();
        let waited = Instant::now();
        let seen =
            send_marker(&self.ns, &self.iface, &nonce).and_then(|()| self.wait_for_marker(&nonce));
        self.proc.signal(Signal::SIGINT);
        if self.proc.wait_timeout(Duration::from_secs(5))?.is_none() {
            self.proc.kill();
        }
        let stats = TcpdumpStats::parse(&self.proc.log());
        let path = self.path.display();
        if let Err(e) = seen {
            bail!(
                "{path}: capture incomplete: the stop marker sent out of {} was not in the file \
                 after {:.1} s ({e:#}); tcpdump: {}",
                self.iface,
                waited.elapsed().as_secs_f64(),
                stats.map_or_else(|| "no statistics".to_string(), |s| s.to_string()),
            );
        }
        if let Some(s) = stats {
            if s.dropped > 0 {
                bail!("{path}: capture incomplete: the kernel dropped packets; tcpdump: {s}");
            }
        }
        let bytes = std::fs::read(&self.path).with_context(|| format!("reading {path}"))?;
        let kept = strip_markers(&bytes).with_context(|| format!("{path}"))?;
        let tmp = self.path.with_extension("pcap.tmp");
        std::fs::write(&tmp, kept).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("replacing {path}"))?;
        Ok((self.path, stats))
    }

    /// Path of the pcap file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Polls the growing file (only the new records each time) until a
    /// marker with `nonce` is in it.
    fn wait_for_marker(&self, nonce: &[u8]) -> Result<()> {
        let start = Instant::now();
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        let mut scan = PcapScan::default();
        let mut chunk = Vec::new();
        loop {
            chunk.clear();
            file.seek(SeekFrom::Start(scan.consumed))?;
            file.read_to_end(&mut chunk)?;
            if scan.feed(&chunk, |frame| is_marker(frame, Some(nonce)))? {
                return Ok(());
            }
            if let Some(status) = self.proc.try_wait()? {
                bail!("tcpdump exited ({status}) before writing the marker");
            }
            if start.elapsed() > MARKER_WAIT {
                bail!("not written within {MARKER_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A nonce unique to this stop (process, time, counter), so a marker from
/// another capture's stop seen on the same link is not taken for ours.
fn marker_nonce() -> Vec<u8> {
    // 32 bits: the router build targets include ones without 64-bit
    // atomics (the CI checks one).
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:08x}{:016x}{:04x}",
        std::process::id(),
        nanos,
        COUNT.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
    .into_bytes()
}

/// The marker frame: Ethernet header, [`MARKER_TAG`], the nonce, padding to
/// the 60-byte Ethernet minimum.
pub fn marker_frame(nonce: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&MARKER_DST);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&MARKER_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MARKER_TAG);
    f.extend_from_slice(nonce);
    f.resize(f.len().max(60), 0);
    f
}

/// Whether an Ethernet `frame` is a stop marker (with `nonce`, if given).
pub fn is_marker(frame: &[u8], nonce: Option<&[u8]>) -> bool {
    let Some(payload) = frame.get(14..) else {
        return false;
    };
    frame[12..14] == MARKER_ETHERTYPE.to_be_bytes()
        && payload.starts_with(MARKER_TAG)
        && nonce.is_none_or(|n| payload[MARKER_TAG.len()..].starts_with(n))
}

/// Sends one marker frame out of `iface` in namespace `ns` (AF_PACKET).
fn send_marker(ns: &str, iface: &str, nonce: &[u8]) -> Result<()> {
    let frame = marker_frame(nonce);
    let name = std::ffi::CString::new(iface).context("interface name")?;
    netns::in_ns(ns, move || {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            bail!("no interface {name:?}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: plain socket(2); the descriptor is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = MARKER_ETHERTYPE.to_be();
        addr.sll_ifindex = index as libc::c_int;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&MARKER_DST);
        // SAFETY: frame and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending the stop marker on {name:?}"));
        }
        Ok(())
    })
}

/// tcpdump's closing statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpdumpStats {
    /// "packets captured": written to the file.
    pub captured: u64,
    /// "packets received by filter": put in its ring by the kernel.
    pub received: u64,
    /// "packets dropped by kernel": the ring was full.
    pub dropped: u64,
}

impl TcpdumpStats {
    /// Parses the three counter lines of a tcpdump log; `None` if one is
    /// missing (tcpdump was killed).
    pub fn parse(log: &str) -> Option<TcpdumpStats> {
        let count = |what: &str| -> Option<u64> {
            log.lines()
                .find(|l| l.trim_end().ends_with(what))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some(TcpdumpStats {
            captured: count("packets captured")?,
            received: count("packets received by filter")?,
            dropped: count("packets dropped by kernel")?,
        })
    }
}

impl std::fmt::Display for TcpdumpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} captured, {} received by filter, {} dropped by kernel",
            self.captured, self.received, self.dropped
        )
    }
}

/// Incremental reader of a pcap file that is still being written: feed it
/// the bytes from [`PcapScan::consumed`] on; it walks the complete records
/// (a record cut short by the writer waits for the next feed).
#[derive(Debug, Default)]
pub struct PcapScan {
    /// Bytes of the file walked so far (global header and whole records).
    pub consumed: u64,
    big_endian: Option<bool>,
}

/// Largest record a pcap written by tcpdump (snaplen 262144) can hold.
const MAX_RECORD: usize = 262_144;

impl PcapScan {
    /// Walks the complete records in `bytes` (the file from `consumed` on),
    /// calling `hit` on each frame; stops and returns `true` at the first
    /// frame `hit` accepts.
    pub fn feed(&mut self, bytes: &[u8], mut hit: impl FnMut(&[u8]) -> bool) -> Result<bool> {
        let mut at = 0;
        let big = match self.big_endian {
            Some(b) => b,
            None => {
                let Some(h) = bytes.get(..24) else {
                    return Ok(false);
                };
                let big = pcap_header(h)?;
                self.big_endian = Some(big);
                at = 24;
                self.consumed = 24;
                big
            }
        };
        let u32_at = |b: &[u8], i: usize| {
            let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
            if big {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        while let Some(rec) = bytes.get(at..at + 16) {
            let len = u32_at(rec, 8) as usize;
            if len > MAX_RECORD {
                bail!(
                    "corrupt pcap: a record of {len} bytes at offset {}",
                    self.consumed
                );
            }
            let Some(frame) = bytes.get(at + 16..at + 16 + len) else {
                break;
            };
            at += 16 + len;
            self.consumed += (16 + len) as u64;
            if hit(frame) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Checks a pcap global header; returns whether the file is big-endian.
fn pcap_header(h: &[u8]) -> Result<bool> {
    let magic = [h[0], h[1], h[2], h[3]];
    let big = match u32::from_le_bytes(magic) {
        0xa1b2_c3d4 | 0xa1b2_3c4d => false,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => true,
        m => bail!("not a pcap file (magic {m:#010x})"),
    };
    let lt = [h[20], h[21], h[22], h[23]];
    let linktype = if big {
        u32::from_be_bytes(lt)
    } else {
        u32::from_le_bytes(lt)
    } & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        bail!("pcap link type {linktype}, not Ethernet: no stop marker possible");
    }
    Ok(big)
}

/// `pcap` without its stop-marker frames (any nonce).
pub fn strip_markers(pcap: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(pcap.len());
    let Some(h) = pcap.get(..24) else {
        bail!("truncated pcap header ({} bytes)", pcap.len());
    };
    out.extend_from_slice(h);
    let mut scan = PcapScan::default();
    let mut at = 24;
    scan.feed(pcap, |frame| {
        if !is_marker(frame, None) {
            out.extend_from_slice(&pcap[at..at + 16 + frame.len()]);
        }
        at += 16 + frame.len();
        false
    })?;
    Ok(out)
}

/// Frames of `pcap` matching the display filter, as one summary line each.
pub fn matching(pcap: &Path, filter: &str) -> Result<Vec<String>> {
    matching_with(pcap, filter, false)
}

/// Like [`matching`]; `transport_only` disables the HTTP dissector, so
/// `_ws.malformed` only reports IP/TCP problems (tshark's media dissectors
/// call a 206 piece of an MP4 "malformed", which says nothing about tandem).
pub fn matching_with(pcap: &Path, filter: &str, transport_only: bool) -> Result<Vec<String>> {
    let mut cmd = Command::new("tshark");
    if transport_only {
        cmd.args(["--disable-protocol", "http"]);
    }
    let out = netns::run(cmd.args(["-n", "-r"]).arg(pcap).args([
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-Y",
        filter,
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Number of frames in `pcap`.
pub fn frame_count(pcap: &Path) -> Result<usize> {
    Ok(matching(pcap, "frame")?.len())
}

/// Fails (listing up to 10 offenders) if `pcap` has any packet whose source
/// is in the LAN/mesh documentation prefix.
pub fn check_no_lan_source(pcap: &Path) -> Result<()> {
    fail_if_any(pcap, LAN_SOURCE_FILTER, "packets with a LAN source address")
}

/// Fails if tshark flags bad checksums or malformed packets, or if any TCP
/// segment carries data beyond the receiver's advertised window.
pub fn check_expert(pcap: &Path) -> Result<()> {
    fail_if_any(
        pcap,
        EXPERT_PROBLEM_FILTER,
        "bad checksums or malformed packets",
    )?;
    let v = window_violations(pcap)?.violations;
    if !v.is_empty() {
        bail!(
            "{}: {} segments beyond the receive window, e.g.:\n{}",
            pcap.display(),
            v.len(),
            v.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Data segments whose last byte lies beyond the highest right window edge
/// (ACK + scaled window) the receiver had advertised before, as seen at the
/// capture point. Valid anywhere on the path: an advertisement reaches the
/// sender only after passing the capture point. Streams whose window scale
/// tshark cannot know (SYN not captured) are skipped.
pub fn window_violations(pcap: &Path) -> Result<WindowReport> {
    let out = netns::run(Command::new("tshark").args(["-n", "-r"]).arg(pcap).args([
        "-Y",
        "tcp",
        "-T",
        "fields",
        "-E",
        "separator=,",
        "-e",
        "frame.number",
        "-e",
        "tcp.stream",
        "-e",
        "ip.src",
        "-e",
        "tcp.srcport",
        "-e",
        "tcp.seq_raw",
        "-e",
        "tcp.len",
        "-e",
        "tcp.ack_raw",
        "-e",
        "tcp.flags.ack",
        "-e",
        "tcp.window_size",
        "-e",
        "tcp.window_size_scalefactor",
    ]))?;
    Ok(analyse_windows(&String::from_utf8_lossy(&out.stdout)))
}

/// Result of the receive-window analysis.
#[derive(Clone, Debug, Default)]
pub struct WindowReport {
    /// Data segments checked against a known window edge.
    pub judged: usize,
    /// One line per segment beyond the edge.
    pub violations: Vec<String>,
}

/// The pure part of [`window_violations`]: input is tshark's CSV fields
/// `frame,stream,src,sport,seq_raw,len,ack_raw,ack_flag,window,scalefactor`.
pub fn analyse_windows(csv: &str) -> WindowReport {
    use std::collections::HashMap;
    // (stream, advertising endpoint) -> highest right edge it advertised.
    let mut edge: HashMap<(u64, String), u32> = HashMap::new();
    // Endpoints per stream, to find "the other side".
    let mut ends: HashMap<u64, Vec<String>> = HashMap::new();
    let mut bad = Vec::new();
    let mut judged = 0;
    for line in csv.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 10 {
            continue;
        }
        let (Ok(stream), Ok(seq), Ok(len), Ok(ack)) = (
            f[1].parse::<u64>(),
            f[4].parse::<u32>(),
            f[5].parse::<u32>(),
            f[6].parse::<u32>(),
        ) else {
            continue;
        };
        let me = format!("{}:{}", f[2], f[3]);
        let e = ends.entry(stream).or_default();
        if !e.contains(&me) {
            e.push(me.clone());
        }
        // Data check: against what the other side advertised.
        let peer = e.iter().find(|x| **x != me).cloned();
        if let (true, Some(peer)) = (len > 0, peer) {
            if let Some(&right) = edge.get(&(stream, peer)) {
                judged += 1;
                let end = seq.wrapping_add(len);
                if (end.wrapping_sub(right) as i32) > 0 {
                    bad.push(format!(
                        "frame {}: {me} sends up to {end} beyond window edge {right} (by {})",
                        f[0],
                        end.wrapping_sub(right)
                    ));
                }
            }
        }
        // Advertisement: needs a known scale (-2 = no scaling, -1 = unknown).
        let scale_known = f[9] != "-1" && !f[9].is_empty();
        if f[7] == "1" && scale_known {
            if let Ok(win) = f[8].parse::<u64>() {
                let right = ack.wrapping_add(win.min(u64::from(u32::MAX >> 1)) as u32);
                let slot = edge.entry((stream, me)).or_insert(right);
                if (right.wrapping_sub(*slot) as i32) > 0 {
                    *slot = right;
                }
            }
        }
    }
    WindowReport {
        judged,
        violations: bad,
    }
}

fn fail_if_any(pcap: &Path, filter: &str, what: &str) -> Result<()> {
    let hits = matching_with(pcap, filter, true)?;
    if !hits.is_empty() {
        bail!(
            "{}: {} {what} ({filter}), e.g.:\n{}",
            pcap.display(),
            hits.len(),
            hits.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap file (Ethernet, microsecond magic) holding `frames`.
    fn pcap(frames: &[Vec<u8>], big: bool) -> Vec<u8> {
        let w = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(&w(0xa1b2_c3d4));
        out.extend_from_slice(&w16(2));
        out.extend_from_slice(&w16(4));
        out.extend_from_slice(&w(0));
        out.extend_from_slice(&w(0));
        out.extend_from_slice(&w(262_144));
        out.extend_from_slice(&w(LINKTYPE_ETHERNET));
        for (i, f) in frames.iter().enumerate() {
            out.extend_from_slice(&w(1_700_000_000 + i as u32));
            out.extend_from_slice(&w(0));
            out.extend_from_slice(&w(f.len() as u32));
            out.extend_from_slice(&w(f.len() as u32));
            out.extend_from_slice(f);
        }
        out
    }

    /// An Ethernet/IPv4 frame with some payload byte `b`.
    fn ip_frame(b: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[b; 46]);
        f
    }

    #[test]
    fn marker_frames_are_recognised_by_tag_and_nonce() {
        let m = marker_frame(b"0123abcd");
        assert_eq!(m.len(), 60);
        assert!(is_marker(&m, None));
        assert!(is_marker(&m, Some(b"0123abcd")));
        assert!(!is_marker(&m, Some(b"0123abce")));
        assert!(!is_marker(&ip_frame(0x88), None));
        assert!(!is_marker(&m[..13], None));
        // Right EtherType, other payload: not ours.
        let mut other = m.clone();
        other[14] ^= 1;
        assert!(!is_marker(&other, None));
    }

    #[test]
    fn scan_finds_the_marker_only_in_complete_records_fed_in_pieces() {
        for big in [false, true] {
            let frames = vec![ip_frame(1), ip_frame(2), marker_frame(b"n1"), ip_frame(3)];
            let file = pcap(&frames, big);
            let mut scan = PcapScan::default();
            // Byte by byte: the marker is seen exactly when its record is complete.
            let marker_end = 24 + 3 * 16 + 60 + 60 + 60;
            let mut seen_at = None;
            for end in 1..=file.len() {
                let from = scan.consumed as usize;
                if scan
                    .feed(&file[from..end], |f| is_marker(f, Some(b"n1")))
                    .unwrap()
                {
                    seen_at = Some(end);
                    break;
                }
            }
            assert_eq!(seen_at, Some(marker_end), "big-endian {big}");
            assert_eq!(scan.consumed as usize, marker_end);
            // Another nonce is never matched.
            let mut scan = PcapScan::default();
            assert!(!scan.feed(&file, |f| is_marker(f, Some(b"n2"))).unwrap());
            assert_eq!(scan.consumed as usize, file.len());
        }
    }

    #[test]
    fn strip_removes_every_marker_and_keeps_the_rest_byte_for_byte() {
        let frames = vec![
            marker_frame(b"old"),
            ip_frame(1),
            marker_frame(b"n1"),
            ip_frame(2),
        ];
        for big in [false, true] {
            let file = pcap(&frames, big);
            // Header, then records of 16 + 60 bytes: keep the 2nd and 4th.
            let rec = |i: usize| &file[24 + 76 * i..24 + 76 * (i + 1)];
            let want = [&file[..24], rec(1), rec(3)].concat();
            assert_eq!(strip_markers(&file).unwrap(), want, "big-endian {big}");
            // A record cut short at the end (writer killed) is dropped.
            let mut cut = file.clone();
            cut.extend_from_slice(&pcap(&[ip_frame(9)], big)[24..40]);
            assert_eq!(strip_markers(&cut).unwrap(), want);
        }
        assert!(strip_markers(b"not a pcap file at all, no").is_err());
        assert!(strip_markers(&[0xd4, 0xc3]).is_err());
    }

    #[test]
    fn tcpdump_statistics_are_parsed_from_its_log() {
        let log = "tcpdump: listening on wan0, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                   25117 packets captured\n25118 packets received by filter\n0 packets dropped by kernel\n";
        assert_eq!(
            TcpdumpStats::parse(log),
            Some(TcpdumpStats {
                captured: 25117,
                received: 25118,
                dropped: 0
            })
        );
        assert_eq!(TcpdumpStats::parse("tcpdump: listening on wan0\n"), None);
    }

    #[test]
    fn window_analysis_flags_only_data_beyond_the_edge() {
        // Client 1.1.1.1:5000 advertises ack 1000 + win 500 => edge 1500.
        let ok = "1,0,1.1.1.1,5000,1,0,1000,1,500,-2\n\
                  2,0,2.2.2.2,80,1000,500,1,1,65535,-2\n";
        let r = analyse_windows(ok);
        assert!(r.violations.is_empty());
        assert_eq!(r.judged, 1);
        let bad = "1,0,1.1.1.1,5000,1,0,1000,1,500,-2\n\
                   2,0,2.2.2.2,80,1000,501,1,1,65535,-2\n";
        let v = analyse_windows(bad).violations;
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("by 1"));
        // Edges only move forward: a later smaller offer does not shrink it.
        let shrink = "1,0,1.1.1.1,5000,1,0,1000,1,500,-2\n\
                      2,0,1.1.1.1,5000,1,0,1000,1,100,-2\n\
                      3,0,2.2.2.2,80,1000,500,1,1,65535,-2\n";
        assert!(analyse_windows(shrink).violations.is_empty());
        // Unknown scale factor: not judged.
        let unknown = "1,0,1.1.1.1,5000,1,0,1000,1,5,-1\n\
                       2,0,2.2.2.2,80,1000,5000,1,1,65535,-1\n";
        let r = analyse_windows(unknown);
        assert!(r.violations.is_empty());
        assert_eq!(r.judged, 0);
        // Sequence wrap-around.
        let wrap = "1,0,1.1.1.1,5000,1,0,4294967000,1,1000,-2\n\
                    2,0,2.2.2.2,80,4294967000,1000,1,1,65535,-2\n";
        assert!(analyse_windows(wrap).violations.is_empty());
    }
}
