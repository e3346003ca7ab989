//! Platform layer: the NFQUEUE the firewall rules feed, and raw-socket
//! injection of the packets the splice engine emits.
//!
//! Choice (DESIGN.md asks to choose): the `nfq` crate, driven from one
//! dedicated blocking thread. It has no file descriptor to poll, so the queue
//! thread owns nothing but the socket; it hands each batch of waiting
//! packets to a handler (the runtime locks the engine once, asks for each
//! packet's verdict, and injects what the engine emitted for the whole
//! batch) and writes the verdicts back. Timers and piece data reach
//! the engine from the tokio side under the same lock. At the packet rates of
//! a home uplink (≈ 10^4 packets/s) one lock per packet would do; at LAN
//! rates (unshaped, 10^5 client ACKs/s) the queue thread is the bottleneck,
//! so packets already waiting are taken together ([`MAX_QUEUE_BATCH`]).
//! Batch verdicts (one `NFQNL_MSG_VERDICT_BATCH` for a run of accepts or
//! drops, written on the queue's socket found through /proc) were tried on
//! top of the batching and measured within the noise (unshaped 1 GiB: 1281
//! vs 1298 Mbit/s, A 5.68 vs 5.84 CPU s/GiB), so each packet keeps its own
//! verdict message.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What the queue handler decides for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueVerdict {
    /// Let it continue unchanged.
    Accept,
    /// Let it continue with the handler's edits (same length).
    AcceptModified,
    /// Let the first `n` bytes continue, with the handler's edits.
    AcceptTruncated(usize),
    /// Discard it.
    Drop,
    /// Re-run the hook with this fwmark (how a connection is labelled:
    /// the rules save the mark's state bits into the connmark).
    RepeatWithMark(u32),
}

/// Metadata of a queued packet.
#[derive(Debug, Clone, Copy)]
pub struct PacketMeta {
    /// Ingress interface index (0 if none).
    pub indev: u32,
    /// Egress interface index (0 if none).
    pub outdev: u32,
    /// The packet's fwmark.
    pub mark: u32,
}

/// Opens and configures the queues on one socket: `number` fail-open (a
/// daemon that falls behind lets those packets pass), `invalid` not
/// fail-open (the client's INVALID packets: dropped when the daemon falls
/// behind, never passed to the WAN guard); full copies, bounded.
pub fn open_queue(number: u16, invalid: u16, max_len: u32) -> io::Result<nfq::Queue> {
    let mut q = nfq::Queue::open()?;
    for (n, fail_open) in [(number, true), (invalid, false)] {
        q.bind(n)?;
        q.set_fail_open(n, fail_open)?;
        q.set_copy_range(n, 0xffff)?;
        q.set_queue_max_len(n, max_len)?;
    }
    // ENOBUFS under load: keep going rather than error (packets beyond the
    // socket buffer are lost to the kernel, which fails open for the queue).
    q.set_recv_enobufs(false)?;
    if let Err(e) = enlarge_queue_socket_buffer(QUEUE_SOCKET_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the NFQUEUE socket buffer; bursts may bypass the daemon");
    }
    Ok(q)
}

/// Receive buffer of the queue's netlink socket. The queue is fail-open: a
/// packet that does not fit into this buffer is accepted without the daemon
/// seeing it. A burst of client ACKs during injection (LAN speed) overflows
/// the default (~200 KiB) buffer; measured in the testbed, the ACKs that slip
/// past are conntrack-INVALID and meet the WAN guard.
pub const QUEUE_SOCKET_BUFFER: usize = 8 << 20;

/// An integer `SOL_SOCKET` option of descriptor `fd`, if it is a socket.
fn sockopt_int(fd: libc::c_int, opt: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt with an int out-param of the given size; a
    // descriptor that is not a socket just fails with ENOTSOCK.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Sets `SO_RCVBUFFORCE` on the NFQUEUE netlink socket. The `nfq` crate does
/// not expose its descriptor, so this finds it: the process's only
/// `AF_NETLINK` socket of protocol `NETLINK_NETFILTER` (called right after
/// the queue is opened, before anything else could open one).
fn enlarge_queue_socket_buffer(bytes: usize) -> io::Result<()> {
    let mut found = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = entry?.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        let ok = sockopt_int(fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
            && sockopt_int(fd, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER);
        if !ok {
            continue;
        }
        let size = bytes as libc::c_int;
        // SAFETY: setsockopt with a pointer to an int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        found += 1;
    }
    if found == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no NETLINK_NETFILTER socket",
        ));
    }
    Ok(())
}

/// Most packets one turn of the queue loop hands to the handler: after a
/// blocking `recv`, the loop takes every message already waiting (without
/// blocking) up to this many, so that a burst of client ACKs costs one
/// engine lock and one injection burst instead of one per ACK.
pub const MAX_QUEUE_BATCH: usize = 64;

/// One queued packet of a batch (see [`run_queue`]).
#[derive(Debug, Clone)]
pub struct QueuedPacket {
    /// A copy of the packet; the handler may edit it in place (the edits
    /// reach the kernel only with [`QueueVerdict::AcceptModified`] or
    /// [`QueueVerdict::AcceptTruncated`]).
    pub data: Vec<u8>,
    /// The packet's metadata.
    pub meta: PacketMeta,
    /// The handler's verdict for this packet (preset to
    /// [`QueueVerdict::Accept`]).
    pub verdict: QueueVerdict,
}

/// Runs the queue loop until `recv` fails (the socket is closed at process
/// exit). Each turn blocks for one packet, then takes the packets already
/// waiting (at most [`MAX_QUEUE_BATCH`] in all) and hands them, in arrival
/// order, to `handler` in one call; the handler sets each packet's
/// [`QueuedPacket::verdict`], and the loop writes the verdicts back in the
/// same order after the handler returns.
pub fn run_queue<F>(mut q: nfq::Queue, mut handler: F) -> io::Result<()>
where
    F: FnMut(&mut [QueuedPacket]),
{
    let mut msgs: Vec<nfq::Message> = Vec::with_capacity(MAX_QUEUE_BATCH);
    let mut pkts: Vec<QueuedPacket> = Vec::with_capacity(MAX_QUEUE_BATCH);
    loop {
        q.set_nonblocking(false);
        msgs.push(q.recv()?);
        q.set_nonblocking(true);
        while msgs.len() < MAX_QUEUE_BATCH {
            match q.recv() {
                Ok(m) => msgs.push(m),
                // Nothing more waiting (or any other error: the next
                // blocking `recv` reports a lasting one; the packets taken
                // so far still get their verdicts).
                Err(_) => break,
            }
        }
        while pkts.len() < msgs.len() {
            pkts.push(QueuedPacket {
                data: Vec::with_capacity(2048),
                meta: PacketMeta {
                    indev: 0,
                    outdev: 0,
                    mark: 0,
                },
                verdict: QueueVerdict::Accept,
            });
        }
        // The handler works on reused copies; a payload goes back to the
        // kernel only when the handler says it changed it.
        for (m, p) in msgs.iter().zip(pkts.iter_mut()) {
            p.meta = PacketMeta {
                indev: m.get_indev(),
                outdev: m.get_outdev(),
                mark: m.get_nfmark(),
            };
            p.data.clear();
            p.data.extend_from_slice(m.get_payload());
            p.verdict = QueueVerdict::Accept;
        }
        let n = msgs.len();
        handler(&mut pkts[..n]);
        for (mut m, p) in msgs.drain(..).zip(pkts.iter()) {
            apply_verdict(&mut m, &p.data, p.verdict);
            q.verdict(m)?;
        }
    }
}

/// Sets `msg`'s verdict (and payload or mark) from the handler's `verdict`
/// and its edited copy `edited` of the payload.
fn apply_verdict(msg: &mut nfq::Message, edited: &[u8], verdict: QueueVerdict) {
    match verdict {
        QueueVerdict::Accept => msg.set_verdict(nfq::Verdict::Accept),
        QueueVerdict::AcceptModified => {
            let payload = msg.get_payload_mut();
            if payload.len() == edited.len() {
                payload.copy_from_slice(edited);
                msg.set_verdict(nfq::Verdict::Accept);
            } else {
                // Cannot happen with an engine that edits in place; never
                // let a half-edited packet through.
                msg.set_verdict(nfq::Verdict::Drop);
            }
        }
        QueueVerdict::AcceptTruncated(n) if n <= edited.len() => {
            msg.set_payload(&edited[..n]);
            msg.set_verdict(nfq::Verdict::Accept);
        }
        QueueVerdict::AcceptTruncated(_) => msg.set_verdict(nfq::Verdict::Drop),
        QueueVerdict::Drop => msg.set_verdict(nfq::Verdict::Drop),
        QueueVerdict::RepeatWithMark(mark) => {
            msg.set_nfmark(mark);
            msg.set_verdict(nfq::Verdict::Repeat);
        }
    }
}

/// Raw IPv4/IPv6 sockets that send complete IP packets, with an fwmark so
/// the firewall rules recognise them (never re-queued; client-bound ones
/// are not tracked).
pub struct Injector {
    untracked: RawSockets,
    tracked: RawSockets,
}

/// One IPv4 and (optionally) one IPv6 raw socket with the same mark.
struct RawSockets {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
}

fn raw_socket(family: libc::c_int, mark: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mark = mark as libc::c_uint;
    // SAFETY: setsockopt with a pointer to a c_uint of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

impl Injector {
    /// Opens the sockets: `untracked_mark` for packets to the client (the
    /// rules exempt them from conntrack), `tracked_mark` for packets to the
    /// origin (tracked, so NAT rewrites them like the client's own). IPv6 is
    /// optional (a router without IPv6 still works).
    pub fn new(untracked_mark: u32, tracked_mark: u32) -> io::Result<Injector> {
        Ok(Injector {
            untracked: RawSockets::new(untracked_mark)?,
            tracked: RawSockets::new(tracked_mark)?,
        })
    }

    /// Sends a client-bound packet.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        self.untracked.send(packet)
    }

    /// Sends an origin-bound packet (it must traverse conntrack and NAT).
    pub fn send_tracked(&self, packet: &[u8]) -> io::Result<()> {
        self.tracked.send(packet)
    }

    /// Sends every packet of `batch` in its order, runs of packets for the
    /// same socket with one `sendmmsg(2)` each (a burst of injected
    /// segments costs one system call instead of one per segment). Returns
    /// how many packets could not be sent (the engine's retransmission
    /// covers a lost segment, as it covers loss on the LAN).
    pub fn send_batch(&self, batch: &InjectBatch) -> usize {
        let mut errors = 0;
        let mut i = 0;
        while i < batch.items.len() {
            let tracked = batch.items[i];
            let sockets = if tracked {
                &self.tracked
            } else {
                &self.untracked
            };
            let Some(first) = batch.packet(i) else {
                errors += 1;
                i += 1;
                continue;
            };
            let v6 = first.first().is_some_and(|b| b >> 4 == 6);
            // The run: same socket, same family, at most MAX_BATCH packets.
            let mut j = i + 1;
            while j < batch.items.len()
                && j - i < MAX_BATCH
                && batch.items[j] == tracked
                && batch
                    .packet(j)
                    .and_then(|p| p.first())
                    .is_some_and(|b| (b >> 4 == 6) == v6)
            {
                j += 1;
            }
            let (sent, failed) = sockets.send_many(batch, i..j, v6);
            errors += failed;
            i += sent + failed;
            if sent + failed == 0 {
                // Cannot happen (send_many always makes progress); never loop.
                errors += j - i;
                i = j;
            }
        }
        errors
    }
}

/// Most packets handed to one `sendmmsg(2)`, and the most an
/// [`InjectBatch`] should hold before it is sent ([`InjectBatch::is_full`]).
pub const MAX_BATCH: usize = 64;

/// Packets to inject (see [`Injector::send_batch`]): one reusable buffer
/// per packet, so the engine writes each packet straight into the batch
/// (no copy) and the memory stays bounded by the largest batch
/// (`MAX_BATCH` packets when the caller flushes at [`InjectBatch::is_full`]).
#[derive(Debug, Default)]
pub struct InjectBatch {
    bufs: Vec<Vec<u8>>,
    /// Whether each packet held is origin-bound (tracked).
    items: Vec<bool>,
}

impl InjectBatch {
    /// The buffer for the next packet (cleared). Write a packet into it,
    /// then [`InjectBatch::commit`] it; a buffer not committed is reused.
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        let i = self.items.len();
        if self.bufs.len() <= i {
            self.bufs.push(Vec::with_capacity(2048));
        }
        let b = &mut self.bufs[i];
        b.clear();
        b
    }

    /// Keeps the packet written into [`InjectBatch::next_buf`]: `tracked`
    /// for origin-bound packets (see [`Injector::send_tracked`]).
    pub fn commit(&mut self, tracked: bool) {
        if self.bufs.len() > self.items.len() {
            self.items.push(tracked);
        }
    }

    /// Forgets every packet (keeps the buffers).
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No packets.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Holds [`MAX_BATCH`] packets or more: time to send.
    pub fn is_full(&self) -> bool {
        self.items.len() >= MAX_BATCH
    }

    fn packet(&self, i: usize) -> Option<&[u8]> {
        if i < self.items.len() {
            self.bufs.get(i).map(Vec::as_slice)
        } else {
            None
        }
    }
}

/// A socket address for `sendmmsg`, either family.
#[repr(C)]
union SockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

fn sockaddr_of(dst: IpAddr) -> (SockAddr, libc::socklen_t) {
    match dst {
        IpAddr::V4(a) => {
            // SAFETY: zeroed sockaddr_in is a valid value.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            (
                SockAddr { v4: sa },
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        IpAddr::V6(a) => {
            // SAFETY: zeroed sockaddr_in6 is a valid value.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            (
                SockAddr { v6: sa },
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

impl RawSockets {
    fn new(mark: u32) -> io::Result<RawSockets> {
        let v4 = raw_socket(libc::AF_INET, mark)?;
        let v6 = raw_socket(libc::AF_INET6, mark).ok();
        Ok(RawSockets { v4, v6 })
    }

    /// Sends packets `range` of `batch` (all of one family) with one
    /// `sendmmsg`. Returns (sent, failed): the packets from the start of the
    /// range that went out, then 1 failed packet if the kernel refused the
    /// next one (0 if all went out); the caller continues after them.
    fn send_many(
        &self,
        batch: &InjectBatch,
        range: std::ops::Range<usize>,
        v6: bool,
    ) -> (usize, usize) {
        let fd = if v6 {
            match &self.v6 {
                Some(fd) => fd.as_raw_fd(),
                None => return (0, 1),
            }
        } else {
            self.v4.as_raw_fd()
        };
        let n = range.len();
        let mut addrs: Vec<(SockAddr, libc::socklen_t)> = Vec::with_capacity(n);
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
        for i in range {
            let Some(p) = batch.packet(i) else {
                break;
            };
            let Some(dst) = destination(p) else {
                break;
            };
            addrs.push(sockaddr_of(dst));
            iovs.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
        if iovs.is_empty() {
            return (0, 1);
        }
        // SAFETY: zeroed mmsghdr is a valid value; every pointer set below
        // points into `addrs` and `iovs`, which outlive the call.
        let mut msgs: Vec<libc::mmsghdr> = (0..iovs.len())
            .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
            .collect();
        for (k, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_name = (&mut addrs[k].0 as *mut SockAddr).cast();
            m.msg_hdr.msg_namelen = addrs[k].1;
            m.msg_hdr.msg_iov = &mut iovs[k];
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds `msgs.len()` initialised headers whose
        // buffers and addresses are valid for the call.
        let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0) };
        if rc < 0 {
            // The first packet failed (e.g. ENOBUFS): skip it.
            (0, 1)
        } else {
            let sent = rc as usize;
            (sent, usize::from(sent < iovs.len() && sent == 0))
        }
    }

    /// Sends one complete IP packet (header included) to its destination.
    fn send(&self, packet: &[u8]) -> io::Result<()> {
        let dst = destination(packet)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP packet"))?;
        let rc = match dst {
            IpAddr::V4(a) => {
                // SAFETY: zeroed sockaddr_in is a valid value.
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                // SAFETY: buffer and address are valid for the given lengths.
                unsafe {
                    libc::sendto(
                        self.v4.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
            }
            IpAddr::V6(a) => {
                let fd = self.v6.as_ref().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::Unsupported, "no IPv6 raw socket")
                })?;
                // SAFETY: zeroed sockaddr_in6 is a valid value.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = a.octets();
                // SAFETY: buffer and address are valid for the given lengths.
                unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The destination address of an IPv4 or IPv6 packet, if its header is there.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Interface index of a name (0 if unknown).
pub fn if_index(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends a copy of `packet` the way the runtime writes one.
    fn push(b: &mut InjectBatch, tracked: bool, packet: &[u8]) {
        b.next_buf().extend_from_slice(packet);
        b.commit(tracked);
    }

    #[test]
    fn inject_batch_keeps_packets_and_order() {
        let mut b = InjectBatch::default();
        assert!(b.is_empty());
        push(&mut b, false, &[0x45, 1, 2]);
        push(&mut b, true, &[0x60; 5]);
        push(&mut b, false, &[]);
        assert_eq!(b.len(), 3);
        assert_eq!(b.packet(0), Some(&[0x45, 1, 2][..]));
        assert_eq!(b.packet(1), Some(&[0x60; 5][..]));
        assert_eq!(b.packet(2), Some(&[][..]));
        assert_eq!(b.packet(3), None);
        assert!(b.items[1]);
        b.clear();
        assert!(b.is_empty() && b.packet(0).is_none());
        // Written in place; an uncommitted buffer is not a packet.
        b.next_buf().extend_from_slice(&[0x45; 4]);
        assert!(b.is_empty());
        b.commit(false);
        b.next_buf().extend_from_slice(&[9; 3]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.packet(0), Some(&[0x45; 4][..]));
        assert_eq!(b.packet(1), None);
        for _ in 0..MAX_BATCH {
            push(&mut b, false, &[0x45]);
        }
        assert!(b.is_full());
    }

    #[test]
    fn destination_of_v4_and_v6_and_garbage() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(destination(&v4), Some(IpAddr::from([192, 0, 2, 7])));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[39] = 1;
        assert_eq!(destination(&v6), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(destination(&[0x45, 0, 0]), None);
        assert_eq!(destination(&[]), None);
        assert_eq!(destination(&[0x10; 40]), None);
    }
}
