//! The status socket: the daemon answers each connection on a Unix socket
//! with one JSON [`Snapshot`] and closes it; `tandem status` prints it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most bytes a status answer may have (the client refuses more).
pub const MAX_SNAPSHOT: u64 = 4 * 1024 * 1024;

/// Everything `tandem status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// This router's name.
    pub node: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Configured neighbours.
    pub peers: Vec<PeerStatus>,
    /// Downloads being accelerated now.
    pub downloads: Vec<DownloadStatus>,
    /// Decisions on response heads: `accelerated` and each pass-through reason.
    pub decisions: BTreeMap<String, u64>,
    /// Packet and flow counters since the daemon started. Always present:
    /// `queued` (packets the daemon examined), `unparsed`, `table_full`
    /// (connections not tracked: `splice.max_flows` reached), `dropped`,
    /// `modified`, `injected`, `retransmitted` (injected data segments
    /// sent again), `rto_timeouts`, `rto_spurious`, and
    /// `undecided_expired`: HTTP-port connections whose handshake the
    /// daemon saw but whose response head it never saw, forgotten after
    /// `splice.idle_timeout_s` without a packet. With the firewall rules
    /// that is mostly a response head that came after the first
    /// `queue.first_packets` packets of the connection (lost and
    /// retransmitted in a burst, or a slow origin): the kernel had stopped
    /// queueing the connection and it was not accelerated. A connection
    /// that closes or stays idle within those packets without a response
    /// (an unused preconnection) counts too. Counted when the flow expires,
    /// so up to 1.5 × `idle_timeout_s` after the connection left the
    /// queue. Present once they happened: `downloads_finished`,
    /// `downloads_failed`, `inject_errors`.
    pub packets: BTreeMap<String, u64>,
}

/// One neighbour.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// Configured name.
    pub name: String,
    /// Configured address.
    pub address: String,
    /// `unknown` (no download yet), `committed` (it helped in the latest
    /// download), `refused: REASON` or `down: REASON`.
    pub state: String,
    /// Body bytes it delivered since the daemon started.
    pub bytes: u64,
    /// Rate of pieces from it in the latest download, bit/s (0 if none).
    pub rate_bps: f64,
    /// Rate it advertises, bit/s.
    pub advertised_bps: f64,
}

/// One accelerated download.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DownloadStatus {
    /// `http://host/target`.
    pub url: String,
    /// Client address:port.
    pub client: String,
    /// Body length.
    pub size: u64,
    /// Body bytes the client acknowledged.
    pub delivered: u64,
    /// Bytes received per source (`origin-flow`, `local`, peer names).
    pub bytes_by_source: BTreeMap<String, u64>,
    /// Delivery rate over the last seconds, bit/s.
    pub rate_bps: f64,
    /// Seconds since the download was accelerated.
    pub age_s: f64,
}

/// Asks the daemon on `socket` for a snapshot.
pub fn query(socket: &Path) -> anyhow::Result<Snapshot> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    stream.take(MAX_SNAPSHOT).read_to_string(&mut text)?;
    Ok(serde_json::from_str(&text)?)
}

/// Serves snapshots on `socket` until the task is dropped: each connection
/// gets `snapshot()` as JSON and is closed. A stale socket file is replaced;
/// the socket is made owner-only (it reveals URLs being downloaded).
pub async fn serve<F>(socket: &Path, snapshot: F) -> std::io::Result<()>
where
    F: Fn() -> Snapshot + Send + Sync + 'static,
{
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::AsyncWriteExt as _;

    if socket.exists() {
        std::fs::remove_file(socket)?;
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let text = match serde_json::to_vec(&snapshot()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "status snapshot not serialisable");
                continue;
            }
        };
        tokio::spawn(async move {
            let write = stream.write_all(&text);
            if tokio::time::timeout(Duration::from_secs(5), write)
                .await
                .is_err()
            {
                tracing::debug!("status client too slow; dropped");
            }
        });
    }
}

fn mbit(bps: f64) -> String {
    format!("{:.1} Mbit/s", bps / 1e6)
}

/// A human-readable rendering of a snapshot.
pub fn render_table(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tandem on {} (up {} s)", s.node, s.uptime_s);
    let _ = writeln!(out, "\npeers:");
    if s.peers.is_empty() {
        let _ = writeln!(out, "  (none configured)");
    }
    for p in &s.peers {
        let _ = writeln!(
            out,
            "  {:<16} {:<22} {:<24} {:>12} bytes, last {:>14}",
            p.name,
            p.address,
            p.state,
            p.bytes,
            mbit(p.rate_bps)
        );
    }
    let _ = writeln!(out, "\ndownloads:");
    if s.downloads.is_empty() {
        let _ = writeln!(out, "  (none in progress)");
    }
    for d in &s.downloads {
        let pct = if d.size > 0 {
            100.0 * d.delivered as f64 / d.size as f64
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "  {} for {}: {}/{} bytes ({pct:.0}%), {}",
            d.url,
            d.client,
            d.delivered,
            d.size,
            mbit(d.rate_bps)
        );
        for (src, bytes) in &d.bytes_by_source {
            let _ = writeln!(out, "    {src:<16} {bytes:>12} bytes");
        }
    }
    let _ = writeln!(out, "\ndecisions:");
    for (k, v) in &s.decisions {
        let _ = writeln!(out, "  {k:<24} {v}");
    }
    let _ = writeln!(out, "\npackets:");
    for (k, v) in &s.packets {
        let _ = writeln!(out, "  {k:<24} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn served_snapshot_reaches_query() {
        let dir = std::env::temp_dir().join(format!("tandem-status-{}", std::process::id()));
        let sock = dir.join("s.sock");
        let path = sock.clone();
        let server = tokio::spawn(async move {
            serve(&path, || Snapshot {
                node: "served".into(),
                ..Default::default()
            })
            .await
        });
        let mut got = None;
        for _ in 0..100 {
            let p = sock.clone();
            if let Ok(s) = tokio::task::spawn_blocking(move || query(&p))
                .await
                .unwrap()
            {
                got = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.abort();
        assert_eq!(got.expect("daemon answered").node, "served");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn snapshot_round_trips_through_json_and_renders() {
        let mut s = Snapshot {
            node: "a".into(),
            uptime_s: 3,
            ..Default::default()
        };
        s.decisions.insert("accelerated".into(), 2);
        s.downloads.push(DownloadStatus {
            url: "http://o/f.mp4".into(),
            client: "192.0.2.2:40000".into(),
            size: 100,
            delivered: 50,
            ..Default::default()
        });
        let text = serde_json::to_string(&s).unwrap();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        let table = render_table(&s);
        assert!(table.contains("50/100 bytes (50%)"), "{table}");
        assert!(table.contains("accelerated"), "{table}");
    }
}
