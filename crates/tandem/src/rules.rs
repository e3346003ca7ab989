//! Firewall rules for a configuration: iptables (xtables NFQUEUE target) and
//! nftables (OpenWrt fw4).
//!
//! What the rules do, in the order a forwarded packet meets them (mangle
//! FORWARD, where both directions carry the client's LAN address and the
//! origin's address):
//!
//! 1. A packet the daemon gave back with verdict REPEAT and the `decided`
//!    mark bit: its state bits (`pass` or `own`) are saved into the connmark,
//!    and it goes on. This is how the daemon labels a connection without a
//!    conntrack netlink binding.
//! 2. A connection labelled `pass`: untouched, in the kernel fast path.
//! 3. A connection labelled `own` (the daemon accelerates it): every packet
//!    is queued.
//! 4. A client packet to an HTTP port that conntrack calls INVALID: queued,
//!    on the next queue number (`queue.number + 1`), which is not
//!    fail-open: an overloaded daemon drops such a packet (the client's
//!    TCP recovers) rather than let it reach the guard below unexamined
//!    (measured: at Gbit/s one such ACK reset the client).
//!    After the cut the client acknowledges bytes the origin never sent, so
//!    conntrack (tcp_be_liberal=0) marks its ACKs INVALID and they carry no
//!    connmark; without this rule they would leave the WAN un-NATed, with the
//!    client's LAN address.
//! 5. The first `queue.first_packets` packets of every HTTP-port connection,
//!    both directions: the handshake, request head and response head
//!    (iptables `connbytes 0:N`, nft `ct packets <= N`: conntrack has
//!    counted a packet before mangle FORWARD sees it, so both queue packets
//!    1..=N; nft's `< N` was one packet short).
//!
//! Every queue rule has `--queue-bypass` (and the daemon sets the queue's
//! fail-open flag), so a stopped daemon never blocks traffic. A guard in the
//! filter table answers INVALID client packets to HTTP ports on the WAN with
//! a TCP reset instead of forwarding them, so even with the daemon gone no
//! LAN-addressed packet of a handed-over flow leaves, and a client whose
//! half-spliced download lost its daemon (killed, crashed) gets a visible
//! failure at its next ACK or keepalive instead of hanging forever. Packets the daemon injects towards the client carry the `inject`
//! mark and are not tracked (raw OUTPUT notrack); packets it injects towards
//! the origin carry `inject|own` and stay tracked so they are NATed.

use std::fmt::Write as _;

use crate::config::{Config, Marks};

/// Which firewall front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// A POSIX sh script of iptables/ip6tables commands (`start` / `stop`).
    Iptables,
    /// An nftables ruleset (`nft -f`), for OpenWrt fw4.
    Nft,
}

/// Renders the rules for `cfg`.
pub fn render(cfg: &Config, flavor: Flavor) -> String {
    match flavor {
        Flavor::Iptables => iptables(cfg),
        Flavor::Nft => nft(cfg),
    }
}

fn ports_csv(cfg: &Config) -> String {
    cfg.queue
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn hex(v: u32) -> String {
    format!("0x{v:08x}")
}

/// The iptables rules as a sh script with `start` and `stop`.
pub fn iptables(cfg: &Config) -> String {
    let m: Marks = cfg.queue.marks();
    let q = cfg.queue.number;
    let n = cfg.queue.first_packets;
    let ports = ports_csv(cfg);
    let qi = cfg.queue.invalid_number();
    let queue = format!("NFQUEUE --queue-num {q} --queue-bypass");
    let invalid_queue = format!("NFQUEUE --queue-num {qi} --queue-bypass");
    let mut rules = String::new();
    let mut r = |line: String| {
        let _ = writeln!(rules, "  $T {line}");
    };
    for state in [m.pass, m.own] {
        r(format!(
            "-t mangle -A TANDEM -m mark --mark {ds}/{ds} -j CONNMARK --set-xmark {state}/{mask}",
            ds = hex(m.decided | state),
            state = hex(state),
            mask = hex(m.mask)
        ));
    }
    r(format!(
        "-t mangle -A TANDEM -m mark --mark {d}/{d} -j RETURN",
        d = hex(m.decided)
    ));
    r(format!(
        "-t mangle -A TANDEM -m connmark --mark {p}/{p} -j RETURN",
        p = hex(m.pass)
    ));
    r(format!(
        "-t mangle -A TANDEM -m connmark --mark {o}/{o} -j {queue}",
        o = hex(m.own)
    ));
    for lan in &cfg.interfaces.lan {
        r(format!(
            "-t mangle -A TANDEM -i {lan} -p tcp -m multiport --dports {ports} -m conntrack --ctstate INVALID -j {invalid_queue}"
        ));
        r(format!(
            "-t mangle -A TANDEM -i {lan} -p tcp -m multiport --dports {ports} -m connbytes --connbytes 0:{n} --connbytes-dir both --connbytes-mode packets -j {queue}"
        ));
        r(format!(
            "-t mangle -A TANDEM -o {lan} -p tcp -m multiport --sports {ports} -m connbytes --connbytes 0:{n} --connbytes-dir both --connbytes-mode packets -j {queue}"
        ));
    }
    for wan in &cfg.interfaces.wan {
        r(format!(
            "-t filter -A TANDEM_GUARD -o {wan} -p tcp -m multiport --dports {ports} -m conntrack --ctstate INVALID -j REJECT --reject-with tcp-reset"
        ));
    }
    r(format!(
        "-t raw -A TANDEM_RAW -m mark --mark {i}/{io} -j CT --notrack",
        i = hex(m.inject),
        io = hex(m.inject | m.own)
    ));

    format!(
        r#"#!/bin/sh
# tandem firewall rules (iptables), generated by `tandem rules iptables`.
# Usage: sh this-file start|stop     (IPv4 via iptables, IPv6 via ip6tables)
# queues {q} (fail-open) and {qi} (INVALID client packets, not fail-open), marks: mask {mask} inject {inject} pass {pass} own {own} decided {decided}
set -e

chains() {{
  $T -t mangle -N TANDEM 2>/dev/null || $T -t mangle -F TANDEM
  $T -t filter -N TANDEM_GUARD 2>/dev/null || $T -t filter -F TANDEM_GUARD
  $T -t raw -N TANDEM_RAW 2>/dev/null || $T -t raw -F TANDEM_RAW
}}

rules() {{
{rules}}}

hooks() {{
  $T -t mangle -C FORWARD -j TANDEM 2>/dev/null || $T -t mangle -I FORWARD 1 -j TANDEM
  $T -t filter -C FORWARD -j TANDEM_GUARD 2>/dev/null || $T -t filter -I FORWARD 1 -j TANDEM_GUARD
  $T -t raw -C OUTPUT -j TANDEM_RAW 2>/dev/null || $T -t raw -I OUTPUT 1 -j TANDEM_RAW
}}

unhook() {{
  while $T -t mangle -D FORWARD -j TANDEM 2>/dev/null; do :; done
  while $T -t filter -D FORWARD -j TANDEM_GUARD 2>/dev/null; do :; done
  while $T -t raw -D OUTPUT -j TANDEM_RAW 2>/dev/null; do :; done
  for c in "mangle TANDEM" "filter TANDEM_GUARD" "raw TANDEM_RAW"; do
    set -- $c
    $T -t "$1" -F "$2" 2>/dev/null || true
    $T -t "$1" -X "$2" 2>/dev/null || true
  done
}}

for T in "iptables -w" "ip6tables -w"; do
  command -v "${{T%% *}}" >/dev/null 2>&1 || continue
  case "${{1:-start}}" in
    start) chains; rules; hooks ;;
    stop) unhook ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
  esac
done
"#,
        mask = hex(m.mask),
        inject = hex(m.inject),
        pass = hex(m.pass),
        own = hex(m.own),
        decided = hex(m.decided),
    )
}

/// The nftables ruleset (one `inet` table, removed with `nft delete table inet tandem`).
pub fn nft(cfg: &Config) -> String {
    let m = cfg.queue.marks();
    let q = cfg.queue.number;
    let n = cfg.queue.first_packets;
    let ports = cfg
        .queue
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let set = |v: &[String]| {
        v.iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let lan = set(&cfg.interfaces.lan);
    let wan = set(&cfg.interfaces.wan);
    let keep = !m.mask;
    format!(
        r#"# tandem firewall rules (nftables), generated by `tandem rules nft`.
# Load: nft -f this-file      Remove: nft delete table inet tandem
# queues {q} (fail-open) and {qi} (INVALID client packets, not fail-open), marks: mask {mask} inject {inject} pass {pass} own {own} decided {decided}
table inet tandem
delete table inet tandem
table inet tandem {{
	chain forward_mangle {{
		type filter hook forward priority mangle; policy accept;
		meta mark & {dp} == {dp} ct mark set ct mark & {keep} | {pass} return
		meta mark & {dow} == {dow} ct mark set ct mark & {keep} | {own} return
		meta mark & {decided} == {decided} return
		ct mark & {pass} == {pass} return
		ct mark & {own} == {own} queue num {q} bypass
		iifname {{ {lan} }} tcp dport {{ {ports} }} ct state invalid queue num {qi} bypass
		iifname {{ {lan} }} tcp dport {{ {ports} }} ct packets <= {n} queue num {q} bypass
		oifname {{ {lan} }} tcp sport {{ {ports} }} ct packets <= {n} queue num {q} bypass
	}}
	chain forward_guard {{
		type filter hook forward priority filter - 1; policy accept;
		oifname {{ {wan} }} tcp dport {{ {ports} }} ct state invalid reject with tcp reset
	}}
	chain output_raw {{
		type filter hook output priority raw; policy accept;
		meta mark & {inject_own} == {inject} notrack
	}}
}}
"#,
        qi = cfg.queue.invalid_number(),
        mask = hex(m.mask),
        inject = hex(m.inject),
        inject_own = hex(m.inject | m.own),
        pass = hex(m.pass),
        own = hex(m.own),
        decided = hex(m.decided),
        keep = hex(keep),
        dp = hex(m.decided | m.pass),
        dow = hex(m.decided | m.own),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(include_str!("../../../docs/tandem.example.toml")).unwrap()
    }

    #[test]
    fn iptables_rules_queue_narrowly_with_bypass() {
        let s = iptables(&cfg());
        for line in s.lines().filter(|l| l.contains("NFQUEUE")) {
            assert!(line.contains("--queue-bypass"), "{line}");
        }
        assert!(s.contains("--ctstate INVALID -j NFQUEUE"));
        let n = cfg().queue.first_packets;
        assert!(s.contains(&format!("--connbytes 0:{n} ")));
        // The same packets in nft: conntrack counts a packet before mangle
        // FORWARD sees it, and connbytes' range is inclusive.
        assert!(nft(&cfg()).contains(&format!("ct packets <= {n} queue")));
        assert!(s.contains("CT --notrack"));
        assert!(s.contains("-j REJECT --reject-with tcp-reset"));
    }

    #[test]
    fn shipped_rule_files_match_the_example_config() {
        assert_eq!(
            iptables(&cfg()),
            include_str!("../../../iptables/tandem-rules.sh"),
            "regenerate: tandem rules iptables -c docs/tandem.example.toml > iptables/tandem-rules.sh"
        );
        assert_eq!(
            nft(&cfg()),
            include_str!("../../../iptables/tandem.nft"),
            "regenerate: tandem rules nft -c docs/tandem.example.toml > iptables/tandem.nft"
        );
    }
}
