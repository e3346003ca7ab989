//! `tandem lab` end to end (root), through the helper binary: nginx origin,
//! a small file, and a "tandem" binary (the helper) that has no daemon, so
//! the second run must say honestly that no daemon ran.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn lab_runs_reports_and_cleans_up() {
    require_root();
    let out = std::env::temp_dir().join(format!("tandem-lab-test-{}", std::process::id()));
    let helper = helper_exe();
    let child = Command::new(&helper)
        .args(["lab", "--tandem"])
        .arg(&helper)
        .args([
            "--origin",
            "nginx",
            "--size-mib",
            "2",
            "--seed",
            "5",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("tdl{}-", child.id());
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "lab failed");
    assert!(stdout.contains("A alone"));
    assert!(stdout.contains("identical"));
    assert!(!stdout.contains("DIFFERS"));
    assert!(
        stdout.contains("daemons NOT running"),
        "the lab must not pretend"
    );
    let svg = std::fs::read_to_string(out.join("tandem-lab.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4, "2 runs × 2 sources");
    let csv = std::fs::read_to_string(out.join("tandem-lab.csv")).unwrap();
    assert!(csv.lines().count() > 4);
    let left: Vec<String> = tandem_lab::netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "the lab left {left:?}");
    assert!(
        !std::env::temp_dir().join(format!("{prefix}0")).exists(),
        "work dir left"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
