//! Teardown (root): a topology leaves no namespace and no process behind —
//! on Drop, when the test panics, on SIGTERM/SIGINT, and after SIGKILL (the
//! next run removes the leftovers).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use tandem_lab::netns;

fn exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let topo = standard();
    let names = topo.namespaces().to_vec();
    assert_eq!(
        names.len(),
        1 + 3 + 1 + 1,
        "inet, 3 routers, client, origin: {names:?}"
    );
    assert!(names.iter().all(|n| exists(n)));
    let p = topo
        .spawn(&topo.router_ns(1), "sleeper", &["sleep", "1000"])
        .unwrap();
    let dl = topo.delayline().unwrap().pid();
    let workdir = topo.workdir().to_path_buf();
    assert!(alive(p.pid()) && alive(dl));
    drop(topo);
    for n in &names {
        assert!(!exists(n), "{n} left behind");
    }
    assert!(!alive(p.pid()), "process left behind");
    assert!(!alive(dl), "delay line left behind");
    assert!(!workdir.exists(), "work dir left behind");
}

#[test]
fn panic_inside_a_test_still_tears_down() {
    require_root();
    let mut names = Vec::new();
    let mut workdir = std::path::PathBuf::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = pair();
        names = topo.namespaces().to_vec();
        workdir = topo.workdir().to_path_buf();
        panic!("deliberate panic while the topology is alive");
    }));
    assert!(r.is_err());
    assert!(!names.is_empty());
    for n in &names {
        assert!(!exists(n), "{n} left behind after a panic");
    }
    // By design the logs of a panicking test are kept for debugging.
    assert!(workdir.join("logs/delayline.log").exists());
    std::fs::remove_dir_all(&workdir).unwrap();
}

/// A process holding a topology is sent `sig`: its namespaces and the
/// processes in them disappear, and it exits with 128+sig.
fn signal_removes_everything(sig: &str, code: i32) {
    require_root();
    let mut child = Command::new(helper_exe())
        .arg("hold")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut names, mut pid) = (Vec::new(), 0u32);
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(n) = line.trim().strip_prefix("ns: ") {
            names = n.split(' ').map(String::from).collect();
        } else if let Some(p) = line.trim().strip_prefix("pid: ") {
            pid = p.parse().unwrap();
        } else if line.trim() == "ready" {
            break;
        }
        line.clear();
    }
    assert!(!names.is_empty() && pid > 0);
    assert!(names.iter().all(|n| exists(n)));
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(code), "{status}");
    for n in &names {
        assert!(!exists(n), "{n} left behind after {sig}");
    }
    assert!(!alive(pid), "process in the topology survived {sig}");
}

#[test]
fn sigterm_removes_everything() {
    signal_removes_everything("-TERM", 143);
}

#[test]
fn sigint_removes_everything() {
    signal_removes_everything("-INT", 130);
}

/// After a SIGKILL nothing can clean up; the next topology built removes
/// the dead run's namespaces (and only those).
#[test]
fn leftovers_of_a_killed_run_are_removed_by_the_next() {
    require_root();
    let mut child = Command::new(helper_exe())
        .arg("hold")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut names = Vec::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(n) = line.trim().strip_prefix("ns: ") {
            names = n.split(' ').map(String::from).collect();
        } else if line.trim() == "ready" {
            break;
        }
        line.clear();
    }
    let stale_workdir = std::env::temp_dir().join(format!("tdl{}-0", child.id()));
    child.kill().unwrap(); // SIGKILL: no cleanup possible
    child.wait().unwrap();
    assert!(
        names.iter().all(|n| exists(n)),
        "namespaces should survive SIGKILL"
    );
    // A namespace that merely looks like ours but belongs to a live process
    // (this one) must be left alone.
    let mine = format!("{}-unrelated", netns::new_run_id());
    netns::create(&mine).unwrap();
    let topo = pair();
    for n in &names {
        assert!(!exists(n), "stale {n} not removed");
    }
    assert!(exists(&mine), "a live process's namespace was removed");
    assert!(!stale_workdir.exists(), "stale work dir not removed");
    netns::destroy(&mine).unwrap();
    drop(topo);
}

/// `keep()` (`tandem lab --keep`): everything stays after the owner exits,
/// later runs do not sweep it as stale, and the printed command removes it.
#[test]
fn kept_topology_survives_and_its_removal_command_works() {
    require_root();
    let out = Command::new(helper_exe())
        .args(["hold", "--keep"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("ns: "))
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    let pid: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("pid: "))
        .unwrap()
        .parse()
        .unwrap();
    let remove = text
        .lines()
        .find_map(|l| l.strip_prefix("remove: "))
        .unwrap()
        .to_owned();
    assert!(names.iter().all(|n| exists(n)) && alive(pid));
    // Another run's stale sweep must leave the kept run alone.
    drop(pair());
    assert!(
        names.iter().all(|n| exists(n)),
        "kept namespaces were swept"
    );
    assert!(alive(pid), "kept process was killed");
    let st = Command::new("sh").args(["-c", &remove]).status().unwrap();
    assert!(st.success());
    for n in &names {
        assert!(!exists(n), "{n} left after the removal command");
    }
    tandem_lab::netns::wait_until(
        "kept process to exit",
        std::time::Duration::from_secs(5),
        || !alive(pid),
    )
    .unwrap();
}
