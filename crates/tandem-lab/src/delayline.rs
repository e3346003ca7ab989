//! The delay line: netem is not available on the project's kernels, so a
//! one-way delay is made in user space. An iptables rule sends packets to an
//! NFQUEUE (`-j NFQUEUE --queue-num Q --queue-bypass`); [`run_delayline`]
//! holds every packet `delay` in FIFO order and then accepts it.
//!
//! Calling contract: run it (as the hidden subcommand `tandem delayline`)
//! inside the namespace whose FORWARD chain has the queue rule; it prints
//! [`READY_LINE`] once bound, runs until SIGTERM/SIGINT, then accepts every
//! held packet and unbinds. It never blackholes: the queue is fail-open (a
//! full kernel queue accepts instead of dropping), the rule uses
//! `--queue-bypass` (no listener → accept), and more than `--max-held`
//! packets in flight are accepted without delay.
//!
//! A packet accepted without delay overtakes the packets held before it:
//! the testbed then reorders. The netlink socket therefore gets a large
//! receive buffer (`--socket-buffer`): with the kernel's default (208 KiB,
//! a few hundred queue messages) 52 to 790 packets per run passed
//! undelayed when the delay line was stopped 20–40 ms at a time while
//! twenty downloads started (measured 2026-11-21; 0 with 16 MiB).
//! [`crate::Topology::delayline_bypass`] reports what passed undelayed.
//!
//! The timing core, [`DelayFifo`], is sans-IO: time is an explicit argument.

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Printed on stdout once the queue is bound.
pub const READY_LINE: &str = "delayline: ready";

/// Options of `tandem delayline`.
#[derive(clap::Args, Clone, Debug)]
pub struct DelayArgs {
    /// NFQUEUE number to bind (the iptables rule's `--queue-num`).
    #[arg(long, default_value_t = 0)]
    pub queue: u16,
    /// One-way delay added to every queued packet, in milliseconds.
    #[arg(long)]
    pub delay_ms: u32,
    /// Packets held at most; beyond this they are accepted at once.
    #[arg(long, default_value_t = 100_000)]
    pub max_held: usize,
    /// Kernel queue length (packets waiting for us to read them).
    #[arg(long, default_value_t = 65_536)]
    pub kernel_queue_len: u32,
    /// Drop (instead of accept) packets when the kernel queue is full.
    #[arg(long)]
    pub no_fail_open: bool,
    /// Receive buffer of the queue's netlink socket, bytes
    /// (`SO_RCVBUFFORCE`; the kernel doubles it): messages that do not fit
    /// pass undelayed (the queue is fail-open).
    #[arg(long, default_value_t = SOCKET_BUFFER)]
    pub socket_buffer: usize,
}

/// Default of `--socket-buffer`: 16 MiB (32 MiB of accounted memory), some
/// 40 000 metadata-only messages, seconds of traffic at the lab's rates.
pub const SOCKET_BUFFER: usize = 16 << 20;

/// FIFO of items each released `delay` after it was pushed. Pushes must come
/// with non-decreasing `now`, which makes release order = arrival order.
#[derive(Debug)]
pub struct DelayFifo<T> {
    delay: Duration,
    held: VecDeque<(Instant, T)>,
    max_held: usize,
}

/// What [`DelayFifo::push`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Push<T> {
    /// Held; it will come out of [`DelayFifo::pop_due`].
    Held,
    /// The FIFO is full: release this item now.
    Overflow(T),
}

impl<T> DelayFifo<T> {
    /// A FIFO adding `delay`, holding at most `max_held` items.
    pub fn new(delay: Duration, max_held: usize) -> Self {
        DelayFifo {
            delay,
            held: VecDeque::new(),
            max_held,
        }
    }

    /// Adds an item that arrived at `now`.
    pub fn push(&mut self, now: Instant, item: T) -> Push<T> {
        if self.held.len() >= self.max_held {
            return Push::Overflow(item);
        }
        // Clamp so a non-monotonic `now` can never reorder the FIFO.
        let due = now + self.delay;
        let due = match self.held.back() {
            Some((last, _)) if *last > due => *last,
            _ => due,
        };
        self.held.push_back((due, item));
        Push::Held
    }

    /// The next item whose time has come at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.held.front() {
            Some((due, _)) if *due <= now => self.held.pop_front().map(|(_, t)| t),
            _ => None,
        }
    }

    /// When the next item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(d, _)| *d)
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Removes all items, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.held.drain(..).map(|(_, t)| t)
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Serves the delay line until SIGTERM/SIGINT (see the module docs).
pub fn run_delayline(args: DelayArgs) -> Result<()> {
    let delay = Duration::from_millis(u64::from(args.delay_ms));
    let before = socket_fds();
    let mut queue = nfq::Queue::open().context("opening the netfilter queue socket")?;
    let fd = find_new_netlink_fd(&before);
    queue
        .bind(args.queue)
        .with_context(|| format!("binding NFQUEUE {}", args.queue))?;
    // Metadata only: we never look at or change the payload.
    queue.set_copy_range(args.queue, 0)?;
    queue.set_fail_open(args.queue, !args.no_fail_open)?;
    queue.set_queue_max_len(args.queue, args.kernel_queue_len)?;
    queue.set_nonblocking(true);
    match fd {
        Some(fd) => set_receive_buffer(fd, args.socket_buffer).with_context(|| {
            format!("SO_RCVBUFFORCE {} on the queue socket", args.socket_buffer)
        })?,
        None => tracing::warn!(
            "cannot identify the NFQUEUE socket; its receive buffer stays at the kernel default (bursts pass undelayed)"
        ),
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic. No SA_RESTART, so
        // ppoll returns EINTR and the loop sees STOP.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    println!("{READY_LINE} (queue {}, delay {delay:?})", args.queue);
    let _ = std::io::stdout().flush();

    let mut fifo = DelayFifo::new(delay, args.max_held);
    let (mut delayed, mut overflowed, mut max_held) = (0u64, 0u64, 0usize);
    while !STOP.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(msg) = fifo.pop_due(now) {
            queue.verdict(msg)?;
        }
        let timeout = fifo
            .next_due()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(200));
        match fd {
            Some(fd) => wait_readable(fd, timeout),
            None => std::thread::sleep(timeout.min(Duration::from_micros(500))),
        }
        loop {
            match queue.recv() {
                Ok(msg) => match fifo.push(Instant::now(), msg) {
                    Push::Held => {
                        delayed += 1;
                        max_held = max_held.max(fifo.len());
                    }
                    Push::Overflow(msg) => {
                        overflowed += 1;
                        queue.verdict(msg)?;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => bail!("reading NFQUEUE {}: {e}", args.queue),
            }
        }
    }
    for msg in fifo.drain().collect::<Vec<_>>() {
        queue.verdict(msg)?;
    }
    let _ = queue.unbind(args.queue);
    println!(
        "delayline: stopped; {delayed} packets delayed, {overflowed} passed undelayed (full), at most {max_held} held"
    );
    Ok(())
}

/// Waits up to `timeout` for `fd` to become readable (or a signal).
fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
    unsafe {
        libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
    }
}

/// Open socket descriptors of this process.
fn socket_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .starts_with("socket:")
                .then_some(fd)
        })
        .collect()
}

/// The netfilter netlink socket `nfq::Queue::open` just created. nfq 0.2.5
/// does not expose its descriptor; we find it to sleep in poll(2) until a
/// packet arrives or the next one is due, instead of spinning. `None` (fall
/// back to short sleeps) if it cannot be identified with certainty.
fn find_new_netlink_fd(before: &[RawFd]) -> Option<RawFd> {
    let new: Vec<RawFd> = socket_fds()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .filter(|&fd| {
            sockopt(fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
                && sockopt(fd, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
        })
        .collect();
    match new[..] {
        [fd] => Some(fd),
        _ => {
            tracing::warn!("cannot identify the NFQUEUE socket; polling every 0.5 ms");
            None
        }
    }
}

/// Sets `SO_RCVBUFFORCE` (root) on `fd`.
fn set_receive_buffer(fd: RawFd, bytes: usize) -> std::io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
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
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_for_the_delay_in_fifo_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = DelayFifo::new(ms(10), 100);
        assert_eq!(f.push(t0, 1), Push::Held);
        assert_eq!(f.push(t0 + ms(3), 2), Push::Held);
        assert_eq!(f.pop_due(t0 + ms(9)), None);
        assert_eq!(f.next_due(), Some(t0 + ms(10)));
        assert_eq!(f.pop_due(t0 + ms(10)), Some(1));
        assert_eq!(f.pop_due(t0 + ms(12)), None);
        assert_eq!(f.pop_due(t0 + ms(13)), Some(2));
        assert!(f.is_empty());
    }

    #[test]
    fn overflow_releases_immediately_and_never_reorders() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = DelayFifo::new(ms(10), 2);
        assert_eq!(f.push(t0 + ms(5), 1), Push::Held);
        // A clock step backwards must not put 2 before 1.
        assert_eq!(f.push(t0, 2), Push::Held);
        assert_eq!(f.push(t0, 3), Push::Overflow(3));
        assert_eq!(f.pop_due(t0 + ms(15)), Some(1));
        assert_eq!(f.pop_due(t0 + ms(15)), Some(2));
        f.push(t0, 4);
        assert_eq!(f.drain().collect::<Vec<_>>(), vec![4]);
    }
}
