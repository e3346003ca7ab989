//! The command-line front: keys, config checks, rules (no root needed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tandem-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn keygen_writes_a_private_key_that_pubkey_reads_back() {
    let dir = scratch("key");
    let key = dir.join("key");
    let out = tandem()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 44, "{public}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = tandem()
        .args(["pubkey", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), public);
    // never overwrites
    let twice = tandem()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!twice.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_config_accepts_the_example_and_names_the_bad_key() {
    let dir = scratch("cfg");
    let good = dir.join("good.toml");
    std::fs::write(&good, include_str!("../../../docs/tandem.example.toml")).unwrap();
    let out = tandem()
        .args(["run", "--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 peer)"));

    let bad = dir.join("bad.toml");
    let text = include_str!("../../../docs/tandem.example.toml")
        .replace("neighbour_share = 0.5", "neighbour_share = 1.5");
    std::fs::write(&bad, text).unwrap();
    let out = tandem()
        .args(["run", "--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uplink.neighbour_share"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn status_without_a_daemon_fails_clearly() {
    let dir = scratch("status");
    let out = tandem()
        .args(["status", "--socket"])
        .arg(dir.join("none.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon answers"));
    let _ = std::fs::remove_dir_all(dir);
}
