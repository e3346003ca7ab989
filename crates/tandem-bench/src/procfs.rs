//! CPU time and memory of a process from `/proc` (parsers are pure and
//! tested; the readers touch `/proc/<pid>`).

use anyhow::{Context, Result};

/// CPU seconds (user + system) from the text of `/proc/<pid>/stat`, given
/// the clock-tick rate.
pub fn parse_cpu_s(stat: &str, ticks_per_s: f64) -> Option<f64> {
    // The command name (field 2) is in parentheses and may contain spaces
    // and parentheses: the fields after it start after the LAST ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is f[0]; utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_s.max(1.0))
}

/// A `kB` field (e.g. `VmHWM`) of `/proc/<pid>/status`, in bytes.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds used so far by process `pid` (not its children).
pub fn cpu_s(pid: u32) -> Result<f64> {
    let p = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    parse_cpu_s(&text, ticks_per_s()).with_context(|| format!("parsing {p}: {text:?}"))
}

/// Peak resident set size (`VmHWM`) of `pid`, bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    status_field(pid, "VmHWM")
}

/// Current resident set size (`VmRSS`) of `pid`, bytes.
pub fn rss(pid: u32) -> Result<u64> {
    status_field(pid, "VmRSS")
}

fn status_field(pid: u32, key: &str) -> Result<u64> {
    let p = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    parse_status_kb(&text, key).with_context(|| format!("no {key} in {p}"))
}

/// Resets the peak RSS of `pid` to its current RSS (`echo 5 > clear_refs`),
/// so the next [`peak_rss`] covers only what follows.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let p = format!("/proc/{pid}/clear_refs");
    std::fs::write(&p, "5").with_context(|| format!("writing {p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_survives_odd_command_names() {
        let stat = "1234 (tandem (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 4 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_cpu_s(stat, 100.0), Some(3.0));
        assert_eq!(parse_cpu_s("garbage", 100.0), None);
        assert_eq!(parse_cpu_s("1 (x) S 1 2", 100.0), None);
    }

    #[test]
    fn status_fields_are_bytes() {
        let s = "Name:\ttandem\nVmPeak:\t  100 kB\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n";
        assert_eq!(parse_status_kb(s, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_kb(s, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_kb(s, "VmSwap"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(cpu_s(me).unwrap() >= 0.0);
        assert!(rss(me).unwrap() > 0);
        assert!(peak_rss(me).unwrap() >= rss(me).unwrap() / 2);
    }
}
