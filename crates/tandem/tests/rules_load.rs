//! The generated firewall rules load into a real kernel (root: a scratch
//! network namespace per test), and unload without a trace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs")
}

/// A scratch namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces): run scripts/test.sh as root"
        );
        let name = format!("tdr{}{tag}", std::process::id());
        let out = sh(&format!("ip netns add {name}"));
        assert!(out.status.success(), "ip netns add: {out:?}");
        Netns(name)
    }
    fn run(&self, cmd: &str) -> std::process::Output {
        sh(&format!("ip netns exec {} sh -c '{}'", self.0, cmd))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.0));
    }
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = include_str!("../../../docs/tandem.example.toml")
        .replace("\"br-lan\"", "\"lan0\"")
        .replace("[\"wan\"]", "[\"wan0\"]");
    let path = dir.join("tandem.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tandem-rules-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn iptables_rules_load_and_unload_cleanly() {
    let dir = scratch("ipt");
    let cfg = config(&dir);
    let out = tandem()
        .args(["rules", "iptables", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let script = dir.join("rules.sh");
    std::fs::write(&script, &out.stdout).unwrap();

    let ns = Netns::new("i");
    for _ in 0..2 {
        // twice: start is idempotent
        let o = ns.run(&format!("sh {} start", script.display()));
        assert!(
            o.status.success(),
            "start: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let saved = ns.run("iptables-save");
    let text = String::from_utf8_lossy(&saved.stdout);
    let queue_rules = text.lines().filter(|l| l.contains("NFQUEUE")).count();
    assert_eq!(queue_rules, 4, "{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains("NFQUEUE"))
            .all(|l| l.contains("--queue-bypass"))
    );
    assert_eq!(
        text.matches("-A FORWARD -j TANDEM\n").count(),
        1,
        "hooked once: {text}"
    );
    assert!(text.contains("-j CT --notrack"), "{text}");
    let text6 = String::from_utf8_lossy(&ns.run("ip6tables-save").stdout).into_owned();
    assert!(text6.contains("NFQUEUE"), "IPv6 rules too: {text6}");

    let o = ns.run(&format!("sh {} stop", script.display()));
    assert!(
        o.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for cmd in ["iptables-save", "ip6tables-save"] {
        let after = String::from_utf8_lossy(&ns.run(cmd).stdout).into_owned();
        assert!(!after.contains("TANDEM"), "{cmd} after stop: {after}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nft_ruleset_is_accepted_except_for_the_queue_statement_this_kernel_lacks() {
    let dir = scratch("nft");
    let cfg = config(&dir);
    let out = tandem()
        .args(["rules", "nft", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ruleset = String::from_utf8(out.stdout).unwrap();
    let full = dir.join("full.nft");
    std::fs::write(&full, &ruleset).unwrap();
    // This kernel has no nft queue (TESTBED.md): every error must be on a
    // line with a queue statement, and with queue swapped for accept the
    // whole ruleset must load.
    let ns = Netns::new("n");
    let o = ns.run(&format!("nft -c -f {}", full.display()));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    for line in err
        .lines()
        .filter(|l| l.starts_with(full.to_str().unwrap()))
    {
        let n: usize = line.split(':').nth(1).unwrap().parse().unwrap();
        let src = ruleset.lines().nth(n - 1).unwrap();
        assert!(
            src.contains("queue num"),
            "non-queue error at line {n}: {src}\n{err}"
        );
    }
    let swapped = ruleset
        .lines()
        .map(|l| match l.find("queue num") {
            Some(i) => format!("{}accept", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let alt = dir.join("swapped.nft");
    std::fs::write(&alt, swapped).unwrap();
    let o = ns.run(&format!(
        "nft -f {} && nft list table inet tandem",
        alt.display()
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(listed.contains("notrack"), "{listed}");
    assert!(listed.contains("ct state invalid"), "{listed}");
    let _ = std::fs::remove_dir_all(dir);
}
