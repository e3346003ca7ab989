//! The daemon's TOML configuration: parsed, then validated into typed values.
//!
//! Every key is documented in `docs/configuration.md`. Parsing rejects unknown
//! keys (a typo must not silently fall back to a default), and validation
//! names the offending key in its message, e.g.
//! `peer[1].public_key: not 32 bytes of base64`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default NFQUEUE number.
pub const DEFAULT_QUEUE: u16 = 7;
/// Default peer-protocol port.
pub const DEFAULT_PEER_PORT: u16 = 7788;

/// A validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This router's identity.
    pub node: Node,
    /// NFQUEUE and firewall marks.
    #[serde(default)]
    pub queue: Queue,
    /// Which interfaces face clients and which face the internet.
    pub interfaces: Interfaces,
    /// This router's own uplink.
    pub uplink: Uplink,
    /// Which downloads are accelerated.
    #[serde(default)]
    pub eligibility: Eligibility,
    /// Piece planning.
    #[serde(default)]
    pub planner: Planner,
    /// Splice engine bounds.
    #[serde(default)]
    pub splice: Splice,
    /// Local status socket.
    #[serde(default)]
    pub status: Status,
    /// Neighbour routers.
    #[serde(default, rename = "peer")]
    pub peers: Vec<Peer>,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// A short name shown to peers and in logs.
    pub name: String,
    /// File holding this router's base64 private key (`tandem keygen`).
    pub private_key_file: PathBuf,
    /// Where the peer protocol listens (the mesh-facing address).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Treat the documentation address ranges (192.0.2.0/24,
    /// 198.51.100.0/24, 203.0.113.0/24) as public origins. Only for the
    /// namespace lab and tests; never on a real router.
    #[serde(default)]
    pub testbed: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::from([0, 0, 0, 0]), DEFAULT_PEER_PORT)
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// NFQUEUE number the firewall rules send packets to. The next number
    /// (`number + 1`) carries the client's conntrack-INVALID packets and is
    /// not fail-open (see [`Queue::invalid_number`]).
    #[serde(default = "default_queue")]
    pub number: u16,
    /// Kernel queue length; beyond it packets bypass the daemon (fail-open).
    #[serde(default = "default_queue_len")]
    pub max_len: u32,
    /// Firewall mark bits reserved for tandem (must be a contiguous mask of
    /// at least 4 bits that no other subsystem uses).
    #[serde(default = "default_mark_mask")]
    pub mark_mask: u32,
    /// TCP ports treated as HTTP.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// How many packets of a new flow (both directions) are queued before the
    /// kernel keeps it unless the daemon claimed it.
    #[serde(default = "default_first_packets")]
    pub first_packets: u32,
}

fn default_queue() -> u16 {
    DEFAULT_QUEUE
}
fn default_queue_len() -> u32 {
    4096
}
fn default_mark_mask() -> u32 {
    0x00f0_0000
}
fn default_ports() -> Vec<u16> {
    vec![80]
}
/// 40, not 12: a response head lost in the origin's initial window is
/// retransmitted after the rest of the window and the client's duplicate
/// ACKs have passed; in the lab (Linux origin, initial window 10) that
/// retransmission was packet 26 to 30 of the connection (13 runs of
/// `tests/passthrough.rs`), past 12 and 24, close to 32. A connection
/// leaves the queue as soon as its response head is decided, so traffic
/// the daemon passes through is hardly queued longer: measured in one run
/// of `first-packets-cost`, a 1 MiB download below the threshold put 7.4
/// packets through the daemon with 12 and 7.5 with 40 on the standard
/// testbed (time ratio to no daemon 1.0014 and 1.0004, TTFB added 0.29 and
/// 0.30 ms), 9.9 and 13.0 unshaped (the burst behind the head, before its
/// label takes effect; ratio 1.19 and 1.18, within that testbed's noise).
/// Connections that are never decided (not HTTP, never tracked, a head
/// later still) are queued for up to 40 packets instead of 12.
fn default_first_packets() -> u32 {
    40
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            number: default_queue(),
            max_len: default_queue_len(),
            mark_mask: default_mark_mask(),
            ports: default_ports(),
            first_packets: default_first_packets(),
        }
    }
}

/// The concrete mark values derived from `queue.mark_mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// The whole mask.
    pub mask: u32,
    /// Set on packets the daemon injects; never queued, never tracked when
    /// they go to the client.
    pub inject: u32,
    /// Connection state bits (inside `mask`): pass-through.
    pub pass: u32,
    /// Connection state bits: owned by the daemon (queue every packet).
    pub own: u32,
    /// Set on a packet the daemon re-queued (verdict REPEAT) so the rules
    /// save its state bits into the connmark and let it go.
    pub decided: u32,
}

impl Queue {
    /// The queue for the client's conntrack-INVALID packets (the ACKs of
    /// an injected stream): `number + 1`. Unlike `number` it is not
    /// fail-open: when the daemon falls behind, such a packet is dropped
    /// (TCP recovers) instead of passing unexamined to the WAN guard, which
    /// would reset the client. With no daemon bound it is bypassed like
    /// the other (`--queue-bypass`), so the guard still resets orphaned
    /// clients. Validated: `number` is below 65535.
    pub fn invalid_number(&self) -> u16 {
        self.number.saturating_add(1)
    }

    /// Derives the mark values from the mask (validated in [`Config::validate`]).
    pub fn marks(&self) -> Marks {
        let m = self.mark_mask;
        let low = m & m.wrapping_neg(); // lowest set bit
        Marks {
            mask: m,
            inject: low,
            pass: low << 1,
            own: low << 2,
            decided: low << 3,
        }
    }
}

/// `[interfaces]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    /// Client-facing interfaces (e.g. `br-lan`).
    pub lan: Vec<String>,
    /// Internet-facing interfaces (e.g. `wan`).
    pub wan: Vec<String>,
}

/// `[uplink]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// This router's download rate from the internet, Mbit/s (a seed for the
    /// measured rate).
    pub rate_mbit: f64,
    /// Share of the uplink given to neighbours' pieces, 0..=1. The router's
    /// own users come first.
    #[serde(default = "default_share")]
    pub neighbour_share: f64,
    /// Local address to fetch from (the uplink's source address); empty:
    /// the kernel chooses.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
}

fn default_share() -> f64 {
    0.5
}

/// `[eligibility]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eligibility {
    /// Smallest body (bytes) worth accelerating.
    #[serde(default = "default_min_size")]
    pub min_size: u64,
    /// Content-Type patterns (`video/*`, `application/octet-stream`).
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// Accelerate requests that carry a Cookie (pieces are fetched without it).
    #[serde(default)]
    pub allow_cookie: bool,
    /// Accelerate requests that carry Authorization.
    #[serde(default)]
    pub allow_authorization: bool,
}

fn default_min_size() -> u64 {
    4 * 1024 * 1024
}
fn default_content_types() -> Vec<String> {
    vec!["video/*".into(), "audio/*".into(), "application/*".into()]
}

impl Default for Eligibility {
    fn default() -> Self {
        Eligibility {
            min_size: default_min_size(),
            content_types: default_content_types(),
            allow_cookie: false,
            allow_authorization: false,
        }
    }
}

/// Planner policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Pieces pulled by each source as it frees up (default).
    Dynamic,
    /// The seed's bandwidth-proportional chunks.
    Proportional,
}

/// Rate advertisement rule for multi-hop neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdvertRule {
    /// min(link to the asker, own + sum of what the other neighbours bring).
    CappedSum,
    /// The seed's rule: average of own and neighbours' rates.
    Average,
}

/// `[planner]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Planner {
    /// `dynamic` or `proportional`.
    #[serde(default = "default_policy")]
    pub policy: Policy,
    /// `capped-sum` or `average`.
    #[serde(default = "default_advert")]
    pub advert_rule: AdvertRule,
    /// Bytes buffered ahead of the client's delivery cursor, per download.
    #[serde(default = "default_window")]
    pub window: u64,
    /// A piece should take about this long at its source's rate. Each piece
    /// costs its source one request round trip of idle uplink, so longer
    /// pieces waste less; shorter ones balance the end of a download better.
    #[serde(default = "default_piece_time")]
    pub piece_time_ms: u64,
    /// A source that delivers no byte for this long loses its pieces.
    #[serde(default = "default_stall")]
    pub stall_timeout_ms: u64,
    /// How many routers deep a download may be delegated.
    #[serde(default = "default_hops")]
    pub max_hops: u8,
}

fn default_policy() -> Policy {
    Policy::Dynamic
}
fn default_advert() -> AdvertRule {
    AdvertRule::CappedSum
}
fn default_window() -> u64 {
    8 * 1024 * 1024
}
fn default_piece_time() -> u64 {
    250
}
fn default_stall() -> u64 {
    4000
}
fn default_hops() -> u8 {
    2
}

impl Default for Planner {
    fn default() -> Self {
        Planner {
            policy: default_policy(),
            advert_rule: default_advert(),
            window: default_window(),
            piece_time_ms: default_piece_time(),
            stall_timeout_ms: default_stall(),
            max_hops: default_hops(),
        }
    }
}

/// `[splice]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Splice {
    /// Most TCP flows tracked at once; older idle ones are evicted first.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    /// Most downloads accelerated at once (each may buffer `planner.window`).
    #[serde(default = "default_max_downloads")]
    pub max_downloads: usize,
    /// Idle flows are forgotten after this long.
    #[serde(default = "default_idle")]
    pub idle_timeout_s: u64,
}

fn default_max_flows() -> usize {
    4096
}
fn default_max_downloads() -> usize {
    8
}
fn default_idle() -> u64 {
    120
}

impl Default for Splice {
    fn default() -> Self {
        Splice {
            max_flows: default_max_flows(),
            max_downloads: default_max_downloads(),
            idle_timeout_s: default_idle(),
        }
    }
}

/// `[status]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// Unix socket `tandem status` talks to.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

/// Default status socket path.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/var/run/tandem.sock")
}

impl Default for Status {
    fn default() -> Self {
        Status {
            socket: default_socket(),
        }
    }
}

/// `[[peer]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// A short name for logs and status.
    pub name: String,
    /// The peer's peer-protocol address.
    pub address: SocketAddr,
    /// The peer's base64 public key.
    pub public_key: String,
    /// Rate of the link to this peer, Mbit/s (caps what it can bring).
    pub link_mbit: f64,
    /// The peer's uplink rate, Mbit/s, before it advertises one.
    #[serde(default)]
    pub rate_mbit: Option<f64>,
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `peer[0].address`; empty for syntax errors.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Parses and validates a configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's message names the key and line; keep it whole.
            err("", e.to_string().trim_end().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text).map_err(|mut e| {
            e.problem = format!("{} (in {})", e.problem, path.display());
            e
        })
    }

    /// Checks every value a type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.name.is_empty() || self.node.name.len() > 64 {
            return Err(err("node.name", "must be 1 to 64 characters"));
        }
        let q = &self.queue;
        if q.max_len == 0 {
            return Err(err("queue.max_len", "must be at least 1"));
        }
        if q.number == u16::MAX {
            return Err(err(
                "queue.number",
                "must be below 65535 (the next number carries INVALID client packets)",
            ));
        }
        let m = q.mark_mask;
        let contiguous = m != 0 && {
            let shifted = m >> m.trailing_zeros();
            shifted & (shifted + 1) == 0
        };
        if !contiguous || m.count_ones() < 4 {
            return Err(err(
                "queue.mark_mask",
                "must be one contiguous run of at least 4 bits, e.g. 0x00f00000",
            ));
        }
        if q.ports.is_empty() || q.ports.contains(&0) {
            return Err(err("queue.ports", "must list at least one port, none 0"));
        }
        if !(3..=64).contains(&q.first_packets) {
            return Err(err("queue.first_packets", "must be between 3 and 64"));
        }
        for (name, list) in [
            ("interfaces.lan", &self.interfaces.lan),
            ("interfaces.wan", &self.interfaces.wan),
        ] {
            if list.is_empty() {
                return Err(err(name, "must name at least one interface"));
            }
            for i in list {
                if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
                    return Err(err(name, format!("`{i}` is not an interface name")));
                }
            }
        }
        if let Some(i) = self
            .interfaces
            .lan
            .iter()
            .find(|i| self.interfaces.wan.contains(i))
        {
            return Err(err(
                "interfaces.wan",
                format!("`{i}` is also listed as LAN"),
            ));
        }
        let u = &self.uplink;
        if !(u.rate_mbit.is_finite() && u.rate_mbit > 0.0 && u.rate_mbit <= 100_000.0) {
            return Err(err(
                "uplink.rate_mbit",
                "must be a rate in (0, 100000] Mbit/s",
            ));
        }
        if !(0.0..=1.0).contains(&u.neighbour_share) {
            return Err(err("uplink.neighbour_share", "must be between 0 and 1"));
        }
        let e = &self.eligibility;
        if e.content_types.is_empty() {
            return Err(err(
                "eligibility.content_types",
                "must list at least one pattern (e.g. \"video/*\")",
            ));
        }
        for p in &e.content_types {
            let ok = match p.split_once('/') {
                Some((t, s)) => {
                    !t.is_empty()
                        && !s.is_empty()
                        && t != "*"
                        && !t.contains('*')
                        && (s == "*" || !s.contains('*'))
                }
                None => false,
            };
            if !ok {
                return Err(err(
                    "eligibility.content_types",
                    format!("`{p}` is not `type/subtype` or `type/*`"),
                ));
            }
        }
        let p = &self.planner;
        if !(256 * 1024..=256 * 1024 * 1024).contains(&p.window) {
            return Err(err(
                "planner.window",
                "must be between 262144 (256 KiB) and 268435456 (256 MiB)",
            ));
        }
        if !(50..=10_000).contains(&p.piece_time_ms) {
            return Err(err("planner.piece_time_ms", "must be between 50 and 10000"));
        }
        if !(100..=600_000).contains(&p.stall_timeout_ms) {
            return Err(err(
                "planner.stall_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if p.max_hops > 8 {
            return Err(err("planner.max_hops", "must be at most 8"));
        }
        let s = &self.splice;
        if s.max_flows == 0 || s.max_flows > 1_000_000 {
            return Err(err("splice.max_flows", "must be between 1 and 1000000"));
        }
        if s.max_downloads == 0 || s.max_downloads > 1024 {
            return Err(err("splice.max_downloads", "must be between 1 and 1024"));
        }
        if s.idle_timeout_s == 0 {
            return Err(err("splice.idle_timeout_s", "must be at least 1"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = |k: &str| format!("peer[{i}].{k}");
            if peer.name.is_empty() || peer.name.len() > 64 {
                return Err(err(key("name"), "must be 1 to 64 characters"));
            }
            if !names.insert(peer.name.as_str()) {
                return Err(err(key("name"), format!("`{}` is used twice", peer.name)));
            }
            if peer.address.port() == 0 || peer.address.ip().is_unspecified() {
                return Err(err(key("address"), "must be a concrete address:port"));
            }
            if decode_key(&peer.public_key).is_none() {
                return Err(err(key("public_key"), "not 32 bytes of base64"));
            }
            if !(peer.link_mbit.is_finite() && peer.link_mbit > 0.0) {
                return Err(err(key("link_mbit"), "must be a positive rate in Mbit/s"));
            }
            if let Some(r) = peer.rate_mbit {
                if !(r.is_finite() && r > 0.0) {
                    return Err(err(key("rate_mbit"), "must be a positive rate in Mbit/s"));
                }
            }
        }
        Ok(())
    }
}

/// Decodes a base64 32-byte key, as written by `tandem keygen`.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn minimal() -> String {
        format!(
            r#"
[node]
name = "a"
private_key_file = "/etc/tandem/key"
[interfaces]
lan = ["br-lan"]
wan = ["wan"]
[uplink]
rate_mbit = 20
[[peer]]
name = "b"
address = "192.0.2.130:7788"
public_key = "{KEY}"
link_mbit = 54
"#
        )
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::parse(&minimal()).unwrap();
        assert_eq!(c.queue.number, DEFAULT_QUEUE);
        assert_eq!(c.planner.policy, Policy::Dynamic);
        assert_eq!(c.eligibility.min_size, 4 * 1024 * 1024);
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.node.listen.port(), DEFAULT_PEER_PORT);
    }

    /// `queue.first_packets` accepts 3..=64, as docs/configuration.md says:
    /// 3 is SYN, SYN-ACK and ACK (no request head could be seen with
    /// fewer), 64 bounds what an undecided connection costs.
    #[test]
    fn first_packets_range_matches_the_docs() {
        let with = |n: u32| {
            Config::parse(&minimal().replace(
                "[interfaces]",
                &format!("[queue]\nfirst_packets = {n}\n[interfaces]"),
            ))
        };
        assert_eq!(Config::parse(&minimal()).unwrap().queue.first_packets, 40);
        for ok in [3, 12, 64] {
            assert_eq!(with(ok).unwrap().queue.first_packets, ok);
        }
        for bad in [0, 2, 65] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("queue.first_packets"), "{e}");
        }
        let docs = include_str!("../../../docs/configuration.md");
        assert!(
            docs.lines()
                .any(|l| l.starts_with("| `first_packets` | 3–64 | `40` |")),
            "docs/configuration.md must state the range 3–64 and the default 40"
        );
    }

    #[test]
    fn example_config_in_docs_is_valid() {
        let text = include_str!("../../../docs/tandem.example.toml");
        let c = Config::parse(text).unwrap();
        assert!(!c.peers.is_empty());
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let text = minimal().replace("rate_mbit = 20", "rate_mbit = 20\nrate_mbps = 3");
        let e = Config::parse(&text).unwrap_err();
        assert!(e.to_string().contains("rate_mbps"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("rate_mbit = 20", "rate_mbit = 0", "uplink.rate_mbit"),
            (KEY, "Zm9v", "peer[0].public_key"),
            ("link_mbit = 54", "link_mbit = -1", "peer[0].link_mbit"),
            ("lan = [\"br-lan\"]", "lan = []", "interfaces.lan"),
            ("wan = [\"wan\"]", "wan = [\"br-lan\"]", "interfaces.wan"),
            (
                "[uplink]",
                "[queue]\nmark_mask = 0x5\n[uplink]",
                "queue.mark_mask",
            ),
            (
                "[uplink]",
                "[eligibility]\ncontent_types = [\"*/*\"]\n[uplink]",
                "eligibility.content_types",
            ),
            (
                "[uplink]",
                "[planner]\nwindow = 10\n[uplink]",
                "planner.window",
            ),
        ];
        for (from, to, key) in cases {
            let text = minimal().replace(from, to);
            let e = Config::parse(&text).unwrap_err();
            assert_eq!(e.key, key, "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn bad_policy_names_the_key() {
        let text = minimal().replace("[uplink]", "[planner]\npolicy = \"fastest\"\n[uplink]");
        let e = Config::parse(&text).unwrap_err();
        assert!(e.to_string().contains("policy"), "{e}");
    }

    #[test]
    fn marks_are_distinct_bits_inside_the_mask() {
        let q = Queue::default();
        let m = q.marks();
        let bits = [m.inject, m.pass, m.own, m.decided];
        for (i, a) in bits.iter().enumerate() {
            assert_eq!(a.count_ones(), 1);
            assert_eq!(a & m.mask, *a);
            for b in &bits[i + 1..] {
                assert_eq!(a & b, 0);
            }
        }
    }
}
