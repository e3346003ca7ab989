//! Packet captures (`tcpdump -U`, packet-buffered so the last packets of a
//! short test are not lost) and checks on them with `tshark`: no packet with
//! a LAN (192.0.2.0/24) source address on a router's WAN, no bad IP/TCP
//! checksums, no segment beyond the receiver's advertised window.
//!
//! Checksum checks are meaningful because the topology disables checksum
//! offloads on its veths ([`crate::TopologySpec::no_offloads`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
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

/// A running capture on one interface.
pub struct Capture {
    proc: Proc,
    path: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -U` on `iface` in `ns`, writing `<workdir>/<name>.pcap`,
    /// optionally with a BPF `filter`; waits until it listens.
    pub fn start(
        topo: &Topology,
        ns: &str,
        iface: &str,
        name: &str,
        filter: Option<&str>,
    ) -> Result<Capture> {
        let path = topo.workdir().join(format!("{name}.pcap"));
        let path_s = path.to_string_lossy().into_owned();
        let mut argv = vec!["tcpdump", "-U", "-n", "-i", iface, "-w", &path_s];
        if let Some(f) = filter {
            argv.push(f);
        }
        let proc = topo.spawn(ns, &format!("tcpdump-{name}"), &argv)?;
        proc.wait_for_log("listening on", Duration::from_secs(10))?;
        Ok(Capture { proc, path })
    }

    /// Stops the capture (SIGINT, so tcpdump writes everything) and returns the file.
    pub fn stop(self) -> Result<PathBuf> {
        self.proc.signal(Signal::SIGINT);
        if self.proc.wait_timeout(Duration::from_secs(5))?.is_none() {
            self.proc.kill();
        }
        Ok(self.path)
    }

    /// Path of the pcap file.
    pub fn path(&self) -> &Path {
        &self.path
    }
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
