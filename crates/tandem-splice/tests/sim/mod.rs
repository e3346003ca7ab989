//! Deterministic simulation: a smoltcp client and a smoltcp origin (TCP
//! stacks we did not write) talk HTTP/1.1 through the splice engine, over
//! simulated links with loss, reordering, duplication and delay.
//!
//! ```text
//!  client iface <--link C--> [ Engine ] <--link O--> origin iface
//! ```
//!
//! The harness plays the daemon: on `ResponseHead` it accelerates at the
//! configured cut and feeds the body bytes after the cut in shuffled pieces
//! with delays (one piece can be withheld; the harness then calls `fail`).
//! It checks, on every packet delivered to the client, that checksums are
//! right (etherparse), that timestamps never go backwards (PAWS), that
//! injected segments fit the client's MSS, and at the end that the client
//! read exactly the body (or a prefix of it and a reset when a piece was
//! withheld) and that the origin was stopped, not left retransmitting.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};
use tandem_splice::{Destination, Direction, Engine, EngineConfig, Event, FlowId, Verdict};
use tandem_wire::{TcpFlags, TcpOption, TcpPacket, parse_ip_tcp};

thread_local! {
    static NOW_MS: Cell<u64> = const { Cell::new(0) };
}

fn client_tsval() -> u32 {
    NOW_MS.with(|c| c.get() as u32).wrapping_add(7)
}
/// The origin's clock starts close to the u32 wrap, so injected TSvals
/// must wrap correctly too.
fn origin_tsval() -> u32 {
    NOW_MS.with(|c| c.get() as u32).wrapping_add(u32::MAX - 300)
}

/// Body byte at `i`: a non-periodic pattern so that misplaced bytes show.
pub fn body_byte(i: u64) -> u8 {
    let mut z = (i / 8).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z.to_le_bytes()[(i % 8) as usize]
}

/// Knobs of one simulated download.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub ipv6: bool,
    pub body_len: u64,
    /// Requested cut (body offset); the engine may move it forward.
    pub cut: u64,
    /// The client's MSS (sets its MTU).
    pub client_mss: u16,
    /// The client's receive buffer (its window; > 64 KiB means scaled).
    pub client_rx: usize,
    pub timestamps: bool,
    pub sack: bool,
    /// Loss probability on each hop, each direction.
    pub loss: f64,
    /// Probability that a packet is held back (reordered).
    pub reorder: f64,
    /// Probability that a packet is duplicated.
    pub dup: f64,
    /// One-way delay of each hop.
    pub delay: Duration,
    /// Each packet's delay varies by up to a quarter of `delay` (which
    /// reorders back-to-back packets); `false` keeps every hop FIFO.
    pub jitter: bool,
    /// Serialization rate of the router -> client link in bytes per second
    /// (a FIFO: packets leave one after another); `None`: infinitely fast.
    pub client_link_rate: Option<u64>,
    /// Size of the pieces the harness pushes.
    pub piece: usize,
    /// Pieces arrive over this spread (shuffled within it).
    pub piece_jitter: Duration,
    /// Withhold the piece containing this body offset (expect a reset).
    pub withhold: Option<u64>,
    /// Virtual-time limit.
    pub limit: Duration,
    /// Pace the pieces like the daemon's planner: a piece is pushed only
    /// once it ends within this many bytes past the client's progress as
    /// the harness learnt it from `Event::Progress` (needs
    /// `engine.progress_step`). Without those events the download cannot
    /// finish.
    pub pace_window: Option<u64>,
    /// Delay spikes of the client's packets on their way into the router's
    /// queue (the NFQUEUE of a loaded router): see [`AckSpike`].
    pub ack_spikes: Vec<AckSpike>,
    /// Deterministic losses: at each `(time after the cut, n)`, the next
    /// `n` new data segments the engine injects towards the client are
    /// lost (retransmissions pass).
    pub drop_injected: Vec<(Duration, u32)>,
    /// Pick another origin seed when the origin's sequence numbers would
    /// wrap past 2^32 during the response: smoltcp 0.12 (the client) panics
    /// on an integer overflow when it builds SACK blocks for out-of-order
    /// data across the wrap (`AssemblerIter`, debug builds; its
    /// `TcpSeqNumber` is an `i32` cast to `usize`). Found by the property
    /// test; the engine is not involved (main's sender hits it too).
    pub avoid_seq_wrap: bool,
    /// The client takes RSTs as RFC 5961 section 3 says and Linux does: an
    /// RST resets it only when its sequence number is exactly the client's
    /// newest ACK (its rcv_nxt); one above it inside the receive window
    /// (`client_rx`) draws a challenge ACK (a copy of the client's last pure
    /// ACK, at most one per 500 ms as Linux's `tcp_invalid_ratelimit`, over
    /// the lossy link); any other is dropped before it reaches the client
    /// (smoltcp itself accepts any RST inside its window).
    pub strict_rst: bool,
    /// With `strict_rst`: every challenge ACK is lost (the engine must hit
    /// the exact number blind).
    pub challenges_lost: bool,
    pub engine: EngineConfig,
}

/// A delay spike of the client -> router path, as a loaded router's queue
/// produces it: every client packet that reaches the queue within
/// `[start, start + len)` (virtual time after `Event::CutDone`) waits
/// `extra` longer, and the queue stays FIFO (a packet that arrives later
/// waits behind the delayed ones). Nothing is lost.
#[derive(Debug, Clone, Copy)]
pub struct AckSpike {
    /// Start of the spike, after the cut was done.
    pub start: Duration,
    /// How long packets keep arriving into the spike.
    pub len: Duration,
    /// Extra delay of each packet that arrives within it.
    pub extra: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            ipv6: false,
            body_len: 256 * 1024,
            cut: 100_000,
            client_mss: 1460,
            client_rx: 256 * 1024,
            timestamps: true,
            sack: true,
            loss: 0.0,
            reorder: 0.0,
            dup: 0.0,
            delay: Duration::from_millis(2),
            jitter: true,
            client_link_rate: None,
            piece: 16 * 1024,
            piece_jitter: Duration::from_millis(20),
            withhold: None,
            limit: Duration::from_secs(900),
            pace_window: None,
            ack_spikes: Vec::new(),
            drop_injected: Vec::new(),
            avoid_seq_wrap: false,
            strict_rst: false,
            challenges_lost: false,
            engine: EngineConfig::default(),
        }
    }
}

/// What happened.
#[derive(Debug, Default)]
pub struct SimReport {
    /// Body bytes the client read.
    pub received: u64,
    /// The client's connection ended with a reset.
    pub client_reset: bool,
    /// The client saw a normal close (FIN after the body).
    pub client_clean_close: bool,
    /// The actual cut.
    pub cut: Option<u64>,
    pub cut_done: bool,
    pub finished: bool,
    pub failed: bool,
    /// Segments the origin sent after it received the engine's first
    /// zero-window ACK (the stop).
    pub origin_segments_after_cut: u64,
    /// The origin's socket state at the end.
    pub origin_state: String,
    /// Packets the engine injected.
    pub injected: u64,
    pub virtual_time: Duration,
    pub flow_closed: bool,
    /// End of the body bytes the origin delivered through the engine.
    pub origin_body_end: u64,
    /// `delivered` of every `Event::Progress`, in order.
    pub progress: Vec<u64>,
    /// Data segments the engine injected towards the client.
    pub data_segments: u64,
    /// Of those, segments starting below the highest byte injected before
    /// (retransmissions, whatever the reason).
    pub retransmitted_segments: u64,
    /// Client packets that went through an ACK delay spike.
    pub spiked_packets: u64,
    /// The engine's counters at the end of the run.
    pub stats: Option<tandem_splice::EngineStats>,
    /// Injected data segments lost by `drop_injected`.
    pub dropped_injected: u64,
    /// The flow's RTO right after each timeout the engine found spurious.
    pub rto_after_spurious: Vec<Duration>,
    /// The flow's largest RTO (backoff included) over the run.
    pub max_rto: Duration,
    /// Virtual time of `Event::Failed`.
    pub failed_at: Option<Duration>,
    /// Virtual time the client's socket was found reset (CLOSED without a
    /// close of its own).
    pub client_reset_at: Option<Duration>,
    /// RST segments the engine sent towards the client.
    pub rsts_to_client: u64,
    /// RSTs dropped by `strict_rst` (not at the client's rcv_nxt).
    pub rsts_not_exact: u64,
    /// Challenge ACKs `strict_rst` sent for them.
    pub challenge_acks: u64,
}

#[derive(PartialEq, Eq)]
struct InFlight {
    at: u64,
    order: u64,
    to: Hop,
    data: Vec<u8>,
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.order).cmp(&(self.at, self.order))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// Arrives at the engine, sent by the client.
    EngineFromClient,
    /// Arrives at the engine, sent by the origin.
    EngineFromOrigin,
    ToClient,
    ToOrigin,
    /// A packet the engine injected towards the origin.
    ToOriginInjected,
}

struct Dev {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct RxT(Vec<u8>);
struct TxT<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxT {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for TxT<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}
impl phy::Device for Dev {
    type RxToken<'a> = RxT;
    type TxToken<'a> = TxT<'a>;
    fn receive(&mut self, _t: smoltcp::time::Instant) -> Option<(RxT, TxT<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxT(p), TxT(&mut self.tx)))
    }
    fn transmit(&mut self, _t: smoltcp::time::Instant) -> Option<TxT<'_>> {
        Some(TxT(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

struct Host {
    iface: Interface,
    dev: Dev,
    sockets: SocketSet<'static>,
    sock: SocketHandle,
}

fn host(
    addr: IpAddress,
    mtu: usize,
    rx: usize,
    tx: usize,
    seed: u64,
    ts: bool,
    is_origin: bool,
) -> Host {
    let mut dev = Dev {
        rx: VecDeque::new(),
        tx: Vec::new(),
        mtu,
    };
    let mut cfg = Config::new(HardwareAddress::Ip);
    cfg.random_seed = seed;
    let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
    iface.update_ip_addrs(|a| {
        let prefix = if matches!(addr, IpAddress::Ipv4(_)) {
            24
        } else {
            64
        };
        a.push(IpCidr::new(addr, prefix)).unwrap();
    });
    // Everything else is "via the router": any gateway works on an IP medium.
    match addr {
        IpAddress::Ipv4(_) => {
            iface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::new(192, 0, 2, 254))
                .unwrap();
        }
        IpAddress::Ipv6(_) => {
            iface
                .routes_mut()
                .add_default_ipv6_route(Ipv6Address::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe))
                .unwrap();
        }
    }
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    );
    if ts {
        s.set_tsval_generator(Some(if is_origin {
            origin_tsval
        } else {
            client_tsval
        }));
    }
    s.set_nagle_enabled(false);
    let mut sockets = SocketSet::new(vec![]);
    let sock = sockets.add(s);
    Host {
        iface,
        dev,
        sockets,
        sock,
    }
}

/// Strips the SACK-permitted option (replaced by NOPs) from a SYN, fixing
/// the checksum: how the harness turns SACK off for both ends.
fn strip_sack_permitted(pkt: &mut [u8]) {
    let Ok(meta) = parse_ip_tcp(pkt) else { return };
    let Ok(mut tcp) = TcpPacket::new_checked(&mut pkt[meta.tcp_offset..meta.ip_len]) else {
        return;
    };
    if !tcp.flags().contains(TcpFlags::SYN) {
        return;
    }
    let mut it = tandem_wire::TcpOptions::new(tcp.options());
    let mut at = None;
    while let Some(Ok((o, opt))) = it.next_with_offset() {
        if opt == TcpOption::SackPermitted {
            at = Some(20 + o);
        }
    }
    if let Some(at) = at {
        tcp.replace_bytes(at, &[1, 1]);
    }
}

/// The sequence number of an RST, `None` for anything else.
fn rst_seq(pkt: &[u8]) -> Option<u32> {
    let meta = parse_ip_tcp(pkt).ok()?;
    let tcp = TcpPacket::new_checked(&pkt[meta.tcp_offset..meta.ip_len]).ok()?;
    tcp.flags().contains(TcpFlags::RST).then(|| tcp.seq().0)
}

/// False for an RST whose sequence number is not `rcv_nxt` (the client's
/// newest ACK); true for every other packet.
fn rst_exact(pkt: &[u8], rcv_nxt: Option<u32>) -> bool {
    let Ok(meta) = parse_ip_tcp(pkt) else {
        return true;
    };
    let Ok(tcp) = TcpPacket::new_checked(&pkt[meta.tcp_offset..meta.ip_len]) else {
        return true;
    };
    !tcp.flags().contains(TcpFlags::RST) || Some(tcp.seq().0) == rcv_nxt
}

fn is_zero_window_ack(pkt: &[u8]) -> bool {
    let Ok(meta) = parse_ip_tcp(pkt) else {
        return false;
    };
    let Ok(tcp) = TcpPacket::new_checked(&pkt[meta.tcp_offset..meta.ip_len]) else {
        return false;
    };
    tcp.window() == 0 && tcp.flags() == TcpFlags::ACK
}

/// Checks a packet about to be delivered to the client.
struct ClientMonitor {
    ts_recent: Option<u32>,
    last_ack_sent: Option<u32>,
    mss: usize,
    ts: bool,
}

impl ClientMonitor {
    fn check(&mut self, pkt: &[u8], from_engine: bool) {
        // Independent parser: both checksums.
        let p = etherparse::SlicedPacket::from_ip(pkt).expect("etherparse parses every packet");
        let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
            panic!("not tcp")
        };
        let want = match p.net.as_ref().unwrap() {
            etherparse::NetSlice::Ipv4(v4) => {
                let h = v4.header();
                assert_eq!(
                    h.to_header().calc_header_checksum(),
                    h.header_checksum(),
                    "IPv4 checksum"
                );
                t.calc_checksum_ipv4(h.source_addr().octets(), h.destination_addr().octets())
                    .unwrap()
            }
            etherparse::NetSlice::Ipv6(v6) => {
                let h = v6.header();
                t.calc_checksum_ipv6(h.source_addr().octets(), h.destination_addr().octets())
                    .unwrap()
            }
            _ => panic!("arp"),
        };
        assert_eq!(want, t.checksum(), "TCP checksum of a packet to the client");
        if from_engine {
            assert!(
                t.payload().len() <= self.mss,
                "segment {} > MSS {}",
                t.payload().len(),
                self.mss
            );
        }
        for o in t.options_iterator() {
            if let Ok(etherparse::TcpOptionElement::Timestamp(v, _)) = o {
                // PAWS as the client runs it (RFC 7323 5.3, with Linux's
                // one-tick tolerance): a segment older than TS.Recent is
                // dropped; TS.Recent follows in-order segments only.
                let carries_new = self.last_ack_sent.is_none_or(|a| {
                    let end = t
                        .sequence_number()
                        .wrapping_add(t.payload().len() as u32 + u32::from(t.fin()));
                    (end.wrapping_sub(a) as i32) > 0
                });
                if let Some(r) = self.ts_recent {
                    // Only the engine's segments are ours to answer for:
                    // the simulated network may delay the origin's own.
                    if from_engine && carries_new && !t.rst() {
                        assert!(
                            (v.wrapping_sub(r) as i32) >= -1,
                            "PAWS would drop: TSval {v} < TS.Recent {r}"
                        );
                    }
                }
                let in_order = self
                    .last_ack_sent
                    .is_none_or(|a| (t.sequence_number().wrapping_sub(a) as i32) <= 0);
                let newer = self
                    .ts_recent
                    .is_none_or(|r| (v.wrapping_sub(r) as i32) >= 0);
                if in_order && newer {
                    self.ts_recent = Some(v);
                }
            }
        }
        if self.ts && !t.rst() && !t.syn() {
            assert!(
                t.options_iterator()
                    .any(|o| matches!(o, Ok(etherparse::TcpOptionElement::Timestamp(..)))),
                "timestamps missing"
            );
        }
    }
}

fn trace(t: u64, what: &str, pkt: &[u8]) {
    let Ok(meta) = parse_ip_tcp(pkt) else { return };
    let Ok(tcp) = TcpPacket::new_checked(&pkt[meta.tcp_offset..meta.ip_len]) else {
        return;
    };
    eprintln!(
        "{:>10.3}ms {what:9} {:?} seq={} ack={} win={} len={} opts={:?}",
        t as f64 / 1000.0,
        tcp.flags(),
        tcp.seq().0,
        tcp.ack().0,
        tcp.window(),
        tcp.payload().len(),
        tcp.option_iter()
            .flatten()
            .filter(|o| *o != TcpOption::Nop)
            .collect::<Vec<_>>()
    );
}

/// Runs one simulated download (see [`SimConfig::avoid_seq_wrap`]).
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut salt = 0;
    loop {
        if let Some(r) = run_once(cfg, salt) {
            return r;
        }
        salt += 1;
    }
}

/// One run; `None` when the origin's sequence numbers would wrap during the
/// response and `cfg.avoid_seq_wrap` asks to avoid that (the caller runs
/// again with another origin seed).
fn run_once(cfg: &SimConfig, salt: u64) -> Option<SimReport> {
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let (client_ip, origin_ip): (IpAddress, IpAddress) = if cfg.ipv6 {
        (
            IpAddress::Ipv6(Ipv6Address::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10)),
            IpAddress::Ipv6(Ipv6Address::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 80)),
        )
    } else {
        (
            IpAddress::Ipv4(Ipv4Address::new(192, 0, 2, 10)),
            IpAddress::Ipv4(Ipv4Address::new(203, 0, 113, 80)),
        )
    };
    let hdr = if cfg.ipv6 { 60 } else { 40 };
    let client_mtu = usize::from(cfg.client_mss) + hdr; // the client only sends small segments
    let mut client = host(
        client_ip,
        client_mtu,
        cfg.client_rx,
        4096,
        cfg.seed ^ 1,
        cfg.timestamps,
        false,
    );
    // smoltcp sizes segments as MTU - headers without counting the
    // timestamp option, and drops what does not fit: give the origin slack.
    let mut origin = host(
        origin_ip,
        1500 + 32,
        4096,
        256 * 1024,
        (cfg.seed ^ 2).wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        cfg.timestamps,
        true,
    );
    let _ = (
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    );

    origin
        .sockets
        .get_mut::<tcp::Socket>(origin.sock)
        .listen(80)
        .unwrap();
    client
        .sockets
        .get_mut::<tcp::Socket>(client.sock)
        .connect(client.iface.context(), (origin_ip, 80), 49152)
        .unwrap();

    let base = Instant::now();
    let mut engine = Engine::new(cfg.engine.clone());
    let mut heap: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut order = 0u64;
    let mut t: u64 = 0; // virtual micros
    let mut report = SimReport::default();
    let mut monitor = ClientMonitor {
        ts_recent: None,
        last_ack_sent: None,
        mss: usize::from(cfg.client_mss),
        ts: cfg.timestamps,
    };

    // Application state.
    let request = b"GET /big.bin HTTP/1.1\r\nHost: origin.example\r\nUser-Agent: sim\r\n\r\n";
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"v1\"\r\nContent-Type: application/octet-stream\r\n\r\n",
        cfg.body_len
    );
    let mut req_sent = false;
    let mut origin_req = Vec::new();
    let mut origin_written: u64 = 0; // of head + body
    let origin_total = head.len() as u64 + cfg.body_len;
    let mut client_buf: Vec<u8> = Vec::new();
    let mut client_head_len: Option<usize> = None;
    let mut client_closed_sent = false;

    // Daemon state.
    let mut flow: Option<FlowId> = None;
    let mut pieces: Vec<(u64, u64, u64)> = Vec::new(); // (arrival micros, offset, len)
    let mut next_piece = 0usize;
    let mut pool: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut withheld_at: Option<u64> = None;
    let mut fail_called = false;
    let mut tx_buf = Vec::new();
    let mut last_delivered: (u64, u64) = (0, 0); // (delivered, time)

    let delay_us = cfg.delay.as_micros() as u64;
    let limit_us = cfg.limit.as_micros() as u64;

    let mut cut_done_at: Option<u64> = None;
    let mut queue_tail: u64 = 0;
    let mut client_link_free: u64 = 0;
    // Pending deterministic losses: (time, segments still to drop).
    let mut drops: Vec<(u64, u32)> = cfg
        .drop_injected
        .iter()
        .map(|(d, n)| (d.as_micros() as u64, *n))
        .collect();
    let mut spurious_seen = 0u64;
    let mut max_injected_end: Option<i64> = None;

    macro_rules! send_on_link {
        ($to:expr, $data:expr) => {{
            let data: Vec<u8> = $data;
            if !rng.random_bool(cfg.loss) {
                let jitter = rng.random_range(0..=delay_us / 4);
                let mut at = t + delay_us + if cfg.jitter { jitter } else { 0 };
                if rng.random_bool(cfg.reorder) {
                    at += rng.random_range(delay_us..=delay_us * 3);
                }
                if let (Hop::ToClient, Some(rate)) = ($to, cfg.client_link_rate) {
                    // Serialization on the LAN link: one packet after the other.
                    let tx_us = (data.len() as u64 * 1_000_000).div_ceil(rate.max(1));
                    let leaves = (t.max(client_link_free)) + tx_us;
                    client_link_free = leaves;
                    at = at.max(leaves + delay_us);
                }
                if $to == Hop::EngineFromClient {
                    if let Some(c) = cut_done_at {
                        let spiked = cfg.ack_spikes.iter().any(|s| {
                            let from = c + s.start.as_micros() as u64;
                            at >= from && at < from + s.len.as_micros() as u64
                        });
                        if spiked {
                            let extra = cfg
                                .ack_spikes
                                .iter()
                                .find(|s| {
                                    let from = c + s.start.as_micros() as u64;
                                    at >= from && at < from + s.len.as_micros() as u64
                                })
                                .map_or(0, |s| s.extra.as_micros() as u64);
                            at += extra;
                            report.spiked_packets += 1;
                        }
                        // The queue is FIFO: nothing overtakes a delayed packet.
                        if spiked || at < queue_tail {
                            at = at.max(queue_tail);
                            queue_tail = at;
                        }
                    }
                }
                if rng.random_bool(cfg.dup) {
                    order += 1;
                    heap.push(InFlight {
                        at: at + rng.random_range(0..=delay_us),
                        order,
                        to: $to,
                        data: data.clone(),
                    });
                }
                order += 1;
                heap.push(InFlight {
                    at,
                    order,
                    to: $to,
                    data,
                });
            } else if std::env::var_os("SIM_TRACE").is_some() {
                trace(t, "lost", &data);
            }
        }};
    }

    // The client's newest pure ACK and its last challenge ACK (strict_rst).
    let mut last_pure_ack: Option<Vec<u8>> = None;
    let mut last_challenge: Option<u64> = None;
    let mut steps: u64 = 0;
    let mut origin_isn: Option<tandem_wire::SeqNumber> = None;
    let mut stop_seen = false;
    loop {
        steps += 1;
        NOW_MS.with(|c| c.set(t / 1000));
        let snow = smoltcp::time::Instant::from_micros(t as i64);
        let now = base + Duration::from_micros(t);

        // 1. Deliver everything due.
        while heap.peek().is_some_and(|p| p.at <= t) {
            let p = heap.pop().unwrap();
            match p.to {
                Hop::ToClient => {
                    if cfg.strict_rst && !rst_exact(&p.data, monitor.last_ack_sent) {
                        report.rsts_not_exact += 1;
                        if std::env::var_os("SIM_TRACE").is_some() {
                            trace(t, "rst-ignored", &p.data);
                        }
                        let in_window = match (rst_seq(&p.data), monitor.last_ack_sent) {
                            (Some(seq), Some(nxt)) => {
                                let d = seq.wrapping_sub(nxt);
                                d > 0 && d as usize <= cfg.client_rx
                            }
                            _ => false,
                        };
                        let allowed = last_challenge.is_none_or(|c| t >= c + 500_000);
                        let sent = !cfg.challenges_lost;
                        if let (true, true, true, Some(ack)) =
                            (sent, in_window, allowed, last_pure_ack.clone())
                        {
                            last_challenge = Some(t);
                            report.challenge_acks += 1;
                            if std::env::var_os("SIM_TRACE").is_some() {
                                trace(t, "challenge", &ack);
                            }
                            send_on_link!(Hop::EngineFromClient, ack);
                        }
                        continue;
                    }
                    if std::env::var_os("SIM_TRACE").is_some() {
                        trace(t, "->client", &p.data);
                    }
                    client.dev.rx.push_back(p.data)
                }
                Hop::ToOrigin | Hop::ToOriginInjected => {
                    if p.to == Hop::ToOriginInjected && !stop_seen && is_zero_window_ack(&p.data) {
                        stop_seen = true;
                    }
                    if std::env::var_os("SIM_TRACE").is_some() {
                        trace(t, "->origin", &p.data);
                    }
                    origin.dev.rx.push_back(p.data)
                }
                Hop::EngineFromClient | Hop::EngineFromOrigin => {
                    let dir = if p.to == Hop::EngineFromClient {
                        Direction::FromClient
                    } else {
                        Direction::FromOrigin
                    };
                    let mut data = p.data;
                    if dir == Direction::FromClient && std::env::var_os("SIM_TRACE").is_some() {
                        trace(t, "->engine", &data);
                    }
                    if dir == Direction::FromClient && !cfg.sack {
                        strip_sack_permitted(&mut data);
                    }
                    match engine.handle_packet(now, dir, &mut data) {
                        Verdict::Accept => {}
                        Verdict::AcceptModified { len } => data.truncate(len),
                        Verdict::Drop => continue,
                    }
                    if dir == Direction::FromClient {
                        send_on_link!(Hop::ToOrigin, data);
                    } else {
                        monitor.check(&data, false);
                        // Body bytes the origin itself delivered through the
                        // engine (before the decision they may lie past the cut).
                        if let Ok(meta) = parse_ip_tcp(&data) {
                            if let Ok(tcp) =
                                TcpPacket::new_checked(&data[meta.tcp_offset..meta.ip_len])
                            {
                                if tcp.flags().contains(TcpFlags::SYN) {
                                    origin_isn = Some(tcp.seq());
                                    let end = u64::from(tcp.seq().0)
                                        + 1
                                        + head.len() as u64
                                        + cfg.body_len;
                                    if cfg.avoid_seq_wrap && end > u64::from(u32::MAX) {
                                        return None;
                                    }
                                } else if let Some(isn) = origin_isn {
                                    let start =
                                        i64::from(tcp.seq().delta(isn)) - 1 - head.len() as i64;
                                    let end = start + tcp.payload().len() as i64;
                                    report.origin_body_end =
                                        report.origin_body_end.max(end.max(0) as u64);
                                }
                            }
                        }
                        send_on_link!(Hop::ToClient, data);
                    }
                }
            }
        }

        // 2. Engine timers, events, pieces, output.
        if engine.poll_timeout().is_some_and(|d| d <= now) {
            engine.handle_timeout(now);
        }
        while let Some(ev) = engine.poll_event() {
            match ev {
                Event::ResponseHead {
                    flow: f,
                    request,
                    response,
                    body_len,
                    pipelined,
                    ..
                } => {
                    assert_eq!(request.method, "GET");
                    assert_eq!(response.status, 200);
                    assert_eq!(body_len, Some(cfg.body_len));
                    assert!(!pipelined);
                    let cut = engine.accelerate(now, f, cfg.cut).expect("accelerate");
                    assert!(cut >= cfg.cut.min(cfg.body_len));
                    report.cut = Some(cut);
                    flow = Some(f);
                    // Pieces after the cut, shuffled arrival times.
                    let mut off = cut;
                    let jitter = cfg.piece_jitter.as_micros() as u64;
                    let mut list = Vec::new();
                    let mut i = 0u64;
                    while off < cfg.body_len {
                        let len = (cfg.piece as u64).min(cfg.body_len - off);
                        let arrival = t + i * 200 + rng.random_range(0..=jitter);
                        if cfg.withhold.is_some_and(|w| w >= off && w < off + len) {
                            withheld_at = Some(off);
                        } else {
                            list.push((arrival, off, len));
                        }
                        off += len;
                        i += 1;
                    }
                    list.shuffle(&mut rng);
                    list.sort_by_key(|p| p.0);
                    pieces = list;
                }
                Event::CutDone { .. } => {
                    report.cut_done = true;
                    cut_done_at = Some(t);
                }
                Event::Progress { flow: f, delivered } => {
                    assert_eq!(Some(f), flow, "progress of an unknown flow");
                    report.progress.push(delivered);
                }
                Event::Finished { .. } => report.finished = true,
                Event::Failed { .. } => {
                    report.failed = true;
                    report.failed_at.get_or_insert(Duration::from_micros(t));
                }
                Event::FlowClosed { flow: f } => {
                    if Some(f) == flow {
                        report.flow_closed = true;
                    }
                }
            }
        }
        if let Some(f) = flow {
            // Pieces that arrived wait in a pool; push what the window
            // takes (a piece past the window waits for the client's ACKs).
            while next_piece < pieces.len() && pieces[next_piece].0 <= t {
                let (_, off, len) = pieces[next_piece];
                pool.push((off, (off..off + len).map(body_byte).collect::<Vec<u8>>()));
                next_piece += 1;
            }
            // Paced like the planner: only what ends within the window past
            // the progress the engine reported.
            let paced_limit = cfg.pace_window.map(|w| {
                let known = report.progress.last().copied().or(report.cut).unwrap_or(0);
                known.saturating_add(w)
            });
            let mut i = 0;
            while i < pool.len() {
                let (off, ref data) = pool[i];
                if paced_limit.is_some_and(|l| off + data.len() as u64 > l) {
                    i += 1;
                    continue;
                }
                match engine.push_piece(now, f, off, data) {
                    Ok(()) => {
                        pool.swap_remove(i);
                    }
                    Err(tandem_splice::SpliceError::PieceBeyondWindow { .. }) => i += 1,
                    Err(
                        tandem_splice::SpliceError::NotAccelerated
                        | tandem_splice::SpliceError::UnknownFlow,
                    ) => {
                        pool.clear();
                    }
                    Err(e) => panic!("push_piece: {e}"),
                }
            }
            // The withheld piece never comes: once nothing moves for 2 s
            // after all other pieces are in, give up.
            if withheld_at.is_some() && !fail_called {
                let delivered = engine.flow_info(f).and_then(|i| i.delivered).unwrap_or(0);
                if delivered != last_delivered.0 {
                    last_delivered = (delivered, t);
                } else if t - last_delivered.1 > 2_000_000
                    && next_piece >= pieces.len()
                    && pool.is_empty()
                {
                    engine.fail(now, f);
                    report.failed_at = Some(Duration::from_micros(t));
                    fail_called = true;
                }
            }
        }
        while let Some(tr) = engine.poll_transmit(now, &mut tx_buf) {
            assert_eq!(tr.len, tx_buf.len());
            report.injected += 1;
            match tr.to {
                Destination::ToClient => {
                    monitor.check(&tx_buf, true);
                    if let Ok(meta) = parse_ip_tcp(&tx_buf) {
                        if let Ok(tcp) =
                            TcpPacket::new_checked(&tx_buf[meta.tcp_offset..meta.ip_len])
                        {
                            if tcp.flags().contains(TcpFlags::RST) {
                                report.rsts_to_client += 1;
                            }
                        }
                    }
                    if let Some(isn) = origin_isn {
                        let meta = parse_ip_tcp(&tx_buf).unwrap();
                        let tcp =
                            TcpPacket::new_checked(&tx_buf[meta.tcp_offset..meta.ip_len]).unwrap();
                        let len = tcp.payload().len() as i64;
                        let due = cut_done_at
                            .and_then(|c| drops.iter_mut().find(|(at, n)| *n > 0 && c + *at <= t));
                        if len > 0 {
                            let start = i64::from(tcp.seq().delta(isn));
                            let fresh = max_injected_end.is_none_or(|m| start >= m);
                            if let (Some(d), true) = (due, fresh) {
                                d.1 -= 1;
                                report.dropped_injected += 1;
                                report.data_segments += 1;
                                max_injected_end = Some(
                                    max_injected_end.map_or(start + len, |m| m.max(start + len)),
                                );
                                continue;
                            }
                            let start = i64::from(tcp.seq().delta(isn));
                            report.data_segments += 1;
                            if max_injected_end.is_some_and(|m| start < m) {
                                report.retransmitted_segments += 1;
                            }
                            max_injected_end =
                                Some(max_injected_end.map_or(start + len, |m| m.max(start + len)));
                        }
                    }
                    // Never a byte the engine was not given: nothing injected
                    // inside the withheld piece.
                    if let (Some(w), Some(isn)) = (withheld_at, origin_isn) {
                        let meta = parse_ip_tcp(&tx_buf).unwrap();
                        let tcp =
                            TcpPacket::new_checked(&tx_buf[meta.tcp_offset..meta.ip_len]).unwrap();
                        let start = i64::from(tcp.seq().delta(isn)) - 1 - head.len() as i64;
                        let end = start + tcp.payload().len() as i64;
                        let w = w as i64;
                        assert!(
                            end == start || end <= w || start >= w + cfg.piece as i64,
                            "injected [{start}, {end}) overlaps the withheld piece at {w}"
                        );
                    }
                    send_on_link!(Hop::ToClient, tx_buf.clone());
                }
                Destination::ToOrigin => send_on_link!(Hop::ToOriginInjected, tx_buf.clone()),
            }
        }

        if let Some(info) = flow.and_then(|f| engine.flow_info(f)) {
            if let Some(rto) = info.rto {
                report.max_rto = report.max_rto.max(rto);
                if info.spurious_timeouts > spurious_seen {
                    spurious_seen = info.spurious_timeouts;
                    report.rto_after_spurious.push(rto);
                }
            }
        }

        // 3. Hosts.
        client
            .iface
            .poll(snow, &mut client.dev, &mut client.sockets);
        origin
            .iface
            .poll(snow, &mut origin.dev, &mut origin.sockets);

        // Client application.
        {
            let s = client.sockets.get_mut::<tcp::Socket>(client.sock);
            if s.may_send() && !req_sent {
                s.send_slice(request).unwrap();
                req_sent = true;
            }
            while s.can_recv() {
                s.recv(|b| {
                    client_buf.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if client_head_len.is_none() {
                if let Some(p) = client_buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    client_head_len = Some(p + 4);
                }
            }
            if req_sent && !s.may_recv() && !client_closed_sent && s.state() != tcp::State::Closed {
                // Normal close from the server side: EOF.
                report.client_clean_close = true;
                s.close();
                client_closed_sent = true;
            }
            if req_sent && s.state() == tcp::State::Closed && !client_closed_sent {
                report.client_reset = true;
                report.client_reset_at = Some(Duration::from_micros(t));
                client_closed_sent = true;
            }
        }
        // Origin application.
        {
            let s = origin.sockets.get_mut::<tcp::Socket>(origin.sock);
            if s.can_recv() {
                s.recv(|b| {
                    origin_req.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if origin_req.windows(4).any(|w| w == b"\r\n\r\n")
                && s.can_send()
                && origin_written < origin_total
            {
                let n = s
                    .send(|buf| {
                        let mut n = 0;
                        while n < buf.len() && origin_written + (n as u64) < origin_total {
                            let i = origin_written + n as u64;
                            buf[n] = if i < head.len() as u64 {
                                head.as_bytes()[i as usize]
                            } else {
                                body_byte(i - head.len() as u64)
                            };
                            n += 1;
                        }
                        (n, n)
                    })
                    .unwrap();
                origin_written += n as u64;
            }
        }
        for p in std::mem::take(&mut client.dev.tx) {
            if std::env::var_os("SIM_TRACE").is_some() {
                trace(t, "client->", &p);
            }
            if let Ok(meta) = parse_ip_tcp(&p) {
                if let Ok(tcp) = TcpPacket::new_checked(&p[meta.tcp_offset..meta.ip_len]) {
                    if tcp.flags().contains(TcpFlags::ACK) {
                        monitor.last_ack_sent = Some(tcp.ack().0);
                        let f = tcp.flags();
                        if tcp.payload().is_empty()
                            && !f.contains(TcpFlags::SYN)
                            && !f.contains(TcpFlags::FIN)
                            && !f.contains(TcpFlags::RST)
                        {
                            last_pure_ack = Some(p.clone());
                        }
                    }
                }
            }
            send_on_link!(Hop::EngineFromClient, p);
        }
        for p in std::mem::take(&mut origin.dev.tx) {
            if std::env::var_os("SIM_TRACE").is_some() {
                trace(t, "origin->", &p);
            }
            if stop_seen {
                report.origin_segments_after_cut += 1;
            }
            send_on_link!(Hop::EngineFromOrigin, p);
        }

        // 4. Done?
        let cstate = client.sockets.get::<tcp::Socket>(client.sock).state();
        let client_done =
            client_closed_sent && matches!(cstate, tcp::State::Closed | tcp::State::TimeWait);
        if client_done && (report.flow_closed || report.client_reset) && heap.is_empty() {
            break;
        }
        if t > limit_us {
            panic!(
                "simulation did not finish in {:?}: client {:?} read {} state {cstate}, engine {:?}, report {report:?}",
                cfg.limit,
                client_head_len,
                client_buf.len(),
                flow.and_then(|f| engine.flow_info(f))
            );
        }

        // 5. Advance virtual time to the next thing that happens.
        let mut next = u64::MAX;
        if let Some(p) = heap.peek() {
            next = next.min(p.at);
        }
        if let Some(d) = engine.poll_timeout() {
            next = next.min(d.saturating_duration_since(base).as_micros() as u64);
        }
        for h in [&mut client, &mut origin] {
            if let Some(d) = h.iface.poll_at(snow, &h.sockets) {
                next = next.min(d.total_micros() as u64);
            }
        }
        if next_piece < pieces.len() {
            next = next.min(pieces[next_piece].0);
        }
        if withheld_at.is_some() && !fail_called {
            next = next.min(t + 100_000);
        }
        if client_done {
            // Let the engine linger out and close the flow.
            next = next.min(t + 1_000_000);
        }
        t = if next == u64::MAX {
            t + 1_000_000
        } else {
            next.max(t + 1)
        };
    }
    let _ = steps;

    let head_len = client_head_len.expect("client saw the response head");
    let body = &client_buf[head_len..];
    report.received = body.len() as u64;
    for (i, b) in body.iter().enumerate() {
        assert_eq!(*b, body_byte(i as u64), "wrong byte at body offset {i}");
    }
    report.origin_state = origin
        .sockets
        .get::<tcp::Socket>(origin.sock)
        .state()
        .to_string();
    report.virtual_time = Duration::from_micros(t);
    report.stats = Some(engine.stats());
    Some(report)
}

/// Asserts the outcome of a download that must succeed.
#[track_caller]
pub fn assert_complete(cfg: &SimConfig, r: &SimReport) {
    assert!(!r.client_reset, "client was reset: {r:?}");
    assert_eq!(r.received, cfg.body_len, "{r:?}");
    assert!(r.client_clean_close, "{r:?}");
    assert!(r.cut_done && r.finished && !r.failed, "{r:?}");
    assert!(r.flow_closed, "{r:?}");
    // The origin was stopped: its connection ended by our RST (Closed),
    // and it did not keep retransmitting in a loop after the cut.
    assert_eq!(r.origin_state, "CLOSED", "{r:?}");
    assert!(
        r.origin_segments_after_cut < 20,
        "origin kept sending: {r:?}"
    );
}

/// How soon after `Event::Failed` the client must be reset: the engine's
/// last timed RST round goes out 1 s after the failure.
pub const RESET_WITHIN: Duration = Duration::from_millis(1500);

/// Asserts the outcome of a download whose piece was withheld.
#[track_caller]
pub fn assert_reset(cfg: &SimConfig, r: &SimReport) {
    assert!(r.client_reset, "client must be reset: {r:?}");
    assert!(r.failed, "{r:?}");
    // Within the engine's RST rounds (at the failure, then 200 ms, 600 ms
    // and 1 s after it), not by some later accident.
    let (Some(failed), Some(reset)) = (r.failed_at, r.client_reset_at) else {
        panic!("no failure or reset time: {r:?}");
    };
    assert!(
        reset <= failed + RESET_WITHIN,
        "client reset {:?} after the failure: {r:?}",
        reset.saturating_sub(failed)
    );
    let w = cfg.withhold.unwrap();
    // The client may hold origin bytes past the cut that passed before the
    // decision (all checked byte for byte), but nothing the engine was not
    // given: no injected byte past the missing piece. Unless the origin
    // delivered the whole missing piece before the decision: then the
    // engine goes on past it (and `run` checked that no injected byte lies
    // inside it).
    let cut = r.cut.unwrap_or(cfg.cut);
    let piece = cfg.piece.max(1) as u64;
    let piece_end = (cut + (w.saturating_sub(cut) / piece + 1) * piece).min(cfg.body_len);
    if r.origin_body_end < piece_end {
        assert!(
            r.received <= w.max(r.origin_body_end),
            "client got bytes past the missing piece: {r:?}"
        );
    }
}
