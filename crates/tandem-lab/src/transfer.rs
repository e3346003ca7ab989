//! Test files and downloads: deterministic pseudo-random content, HTTP
//! clients (curl, wget, aria2c with one connection) run in a client
//! namespace, and byte-exact comparison of what arrived.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::{Proc, Topology};

/// Writes `size` bytes of seeded pseudo-random data (xorshift64*) to `path`.
/// The same seed always gives the same bytes.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut state = seed | 1;
    let mut left = size;
    let mut buf = [0u8; 8];
    while left > 0 {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        buf.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        let n = left.min(8) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(())
}

/// Offset of the first byte where the two files differ (a length difference
/// counts at the shorter length), or `None` if they are identical.
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<u64>> {
    let mut fa = File::open(a).with_context(|| format!("opening {}", a.display()))?;
    let mut fb = File::open(b).with_context(|| format!("opening {}", b.display()))?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(off + i as u64));
        }
        if na != nb {
            return Ok(Some(off + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        off += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// Fails with a precise message unless `got` is byte-identical to `want`.
pub fn assert_same_bytes(want: &Path, got: &Path) -> Result<()> {
    if let Some(off) = first_difference(want, got)? {
        let lw = std::fs::metadata(want)?.len();
        let lg = std::fs::metadata(got)?.len();
        bail!(
            "{} differs from {} at byte {off} (sizes {lg} vs {lw})",
            got.display(),
            want.display()
        );
    }
    Ok(())
}

/// An HTTP client program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    /// curl.
    Curl,
    /// wget.
    Wget,
    /// aria2c restricted to a single connection.
    Aria2,
}

impl Tool {
    /// Command line downloading `url` to `out`.
    pub fn argv(self, url: &str, out: &Path) -> Vec<String> {
        let out_s = out.to_string_lossy().into_owned();
        let v: Vec<&str> = match self {
            Tool::Curl => vec![
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "900",
                "-o",
                &out_s,
                url,
            ],
            Tool::Wget => vec!["wget", "-q", "--tries=1", "--timeout=60", "-O", &out_s, url],
            Tool::Aria2 => {
                let dir = out.parent().map(|p| p.to_string_lossy().into_owned());
                let name = out.file_name().map(|p| p.to_string_lossy().into_owned());
                return [
                    "aria2c",
                    "--quiet=true",
                    "--split=1",
                    "--max-connection-per-server=1",
                    "--min-split-size=1M",
                    "--allow-overwrite=true",
                    "--auto-file-renaming=false",
                    "--file-allocation=none",
                    "--max-tries=1",
                    "-d",
                    dir.as_deref().unwrap_or("."),
                    "-o",
                    name.as_deref().unwrap_or("download"),
                    url,
                ]
                .map(String::from)
                .to_vec();
            }
        };
        v.into_iter().map(String::from).collect()
    }
}

/// Result of a finished download.
#[derive(Clone, Debug)]
pub struct Download {
    /// Where it was written.
    pub path: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// Wall-clock duration from start to exit.
    pub elapsed: Duration,
}

impl Download {
    /// Average goodput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Starts `tool` in the client namespace behind router `router`.
pub fn spawn_download(
    topo: &Topology,
    router: usize,
    tool: Tool,
    url: &str,
    out: &Path,
) -> Result<Proc> {
    let name = format!(
        "{}-{}",
        format!("{tool:?}").to_lowercase(),
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    topo.spawn(&topo.client_ns(router), &name, &tool.argv(url, out))
}

/// Downloads `url` to `out` with `tool` from the client behind `router`,
/// waiting up to `timeout`; fails if the tool fails.
pub fn download(
    topo: &Topology,
    router: usize,
    tool: Tool,
    url: &str,
    out: &Path,
    timeout: Duration,
) -> Result<Download> {
    let start = Instant::now();
    let p = spawn_download(topo, router, tool, url, out)?;
    finish(&p, start, out, timeout)
}

/// Waits for a download started with [`spawn_download`] at `start`.
pub fn finish(p: &Proc, start: Instant, out: &Path, timeout: Duration) -> Result<Download> {
    let remaining = timeout.saturating_sub(start.elapsed());
    let Some(status) = p.wait_timeout(remaining)? else {
        p.kill();
        bail!("{} did not finish within {timeout:?}", p.name());
    };
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("{} failed ({status}): {}", p.name(), p.log().trim());
    }
    let bytes = std::fs::metadata(out)
        .with_context(|| format!("{} wrote no {}", p.name(), out.display()))?
        .len();
    Ok(Download {
        path: out.to_path_buf(),
        bytes,
        elapsed,
    })
}

/// Sends `file` over one TCP connection from namespace `from_ns` to a
/// `socat` receiver listening on `to_ip:port` in `to_ns`, which writes it to
/// `out`. Timed from the sender's start until the receiver exits, i.e. until
/// the last byte has arrived (a sender-side time would include bytes still
/// sitting in socket buffers).
#[allow(clippy::too_many_arguments)]
pub fn socat_transfer(
    topo: &Topology,
    from_ns: &str,
    to_ns: &str,
    to_ip: std::net::Ipv4Addr,
    port: u16,
    file: &Path,
    out: &Path,
    timeout: Duration,
) -> Result<Download> {
    let sink = topo.spawn(
        to_ns,
        &format!("socat-sink-{port}"),
        &[
            "socat".to_string(),
            "-u".into(),
            format!("TCP-LISTEN:{port},bind={to_ip},reuseaddr"),
            format!("CREATE:{}", out.display()),
        ],
    )?;
    let filter = format!("sport = :{port}");
    crate::netns::wait_until("socat listening", Duration::from_secs(5), || {
        topo.exec(to_ns, &["ss", "-ltnH", &filter])
            .map(|o| !o.trim().is_empty())
            .unwrap_or(false)
    })?;
    let start = Instant::now();
    topo.exec(
        from_ns,
        &[
            "socat".to_string(),
            "-u".into(),
            format!("FILE:{}", file.display()),
            format!("TCP:{to_ip}:{port}"),
        ],
    )?;
    finish(&sink, start, out, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-lab-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn random_files_are_seeded_and_compared_exactly() {
        let (a, b, c) = (tmp("a"), tmp("b"), tmp("c"));
        write_random_file(&a, 100_003, 7).unwrap();
        write_random_file(&b, 100_003, 7).unwrap();
        write_random_file(&c, 100_003, 8).unwrap();
        assert_eq!(std::fs::metadata(&a).unwrap().len(), 100_003);
        assert_eq!(first_difference(&a, &b).unwrap(), None);
        assert!(assert_same_bytes(&a, &b).is_ok());
        assert!(first_difference(&a, &c).unwrap().is_some());
        // Flip one byte deep inside: found at its exact offset.
        let mut bytes = std::fs::read(&b).unwrap();
        bytes[70_000] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        assert_eq!(first_difference(&a, &b).unwrap(), Some(70_000));
        // Truncated: differs at the shorter length.
        std::fs::write(&b, &bytes[..1000]).unwrap();
        assert_eq!(first_difference(&a, &b).unwrap(), Some(1000));
        assert!(assert_same_bytes(&a, &b).is_err());
    }

    #[test]
    fn tools_use_one_connection() {
        let v = Tool::Aria2.argv("http://203.0.113.10/f", Path::new("/tmp/x/f.out"));
        assert!(v.contains(&"--split=1".to_string()));
        assert!(v.contains(&"--max-connection-per-server=1".to_string()));
        assert_eq!(v.last().unwrap(), "http://203.0.113.10/f");
        let v = Tool::Curl.argv("http://203.0.113.10/f", Path::new("/tmp/o"));
        assert_eq!(v[0], "curl");
    }
}
