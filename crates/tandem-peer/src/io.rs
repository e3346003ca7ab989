//! Thin tokio adapter: a [`Connection`] driven over a [`TcpStream`].
//!
//! One task owns a [`PeerConnection`]. [`PeerConnection::recv`] is
//! cancel-safe (use it in `tokio::select!`); while it waits it also writes
//! queued output and runs the keepalive and idle timers. [`PeerConnection::send`]
//! returns once the sealed frame has been handed to the kernel; if it is
//! cancelled half-way the frame stays queued and the next `send`/`recv`/
//! `flush` finishes writing it, so the stream is never corrupted.
//!
//! Any protocol error (garbage, oversized or out-of-order frame, failed
//! authentication, timeout) is logged with `tracing::warn!`, closes this
//! connection's socket at once, and is returned; other connections are not
//! affected.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::connection::{Config, Connection, ConnectionError, Event, PeerInfo, SendError, Sent};
use crate::keys::{KeyPair, PeerSet, PublicKey};
use crate::message::{Hello, Message};

/// Bytes read from the socket per `handle_input` call.
const READ_CHUNK: usize = 64 * 1024;

/// Errors of the tokio adapter.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The protocol failed; the connection is closed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A message could not be sent (the connection stays open unless the
    /// error is [`SendError::Closed`]).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The remote closed the TCP connection.
    #[error("connection closed by peer")]
    Eof,
}

impl PeerError {
    /// Whether the connection is unusable after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            PeerError::Send(SendError::Violation(_) | SendError::Message(_))
        )
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// An authenticated peer connection over TCP.
pub struct PeerConnection {
    io: Driver,
    peer: PeerInfo,
}

/// Socket, core and timer: everything but the authenticated identity.
struct Driver {
    stream: Option<TcpStream>,
    core: Connection,
    read_buf: Box<[u8]>,
    sleep: Pin<Box<Sleep>>,
    remote_addr: SocketAddr,
    peer_key: Option<PublicKey>,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("remote_addr", &self.io.remote_addr)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl PeerConnection {
    /// Connects to `addr`, expecting the router there to hold the static key
    /// `remote`, and completes the handshake.
    pub async fn connect(
        addr: SocketAddr,
        local: &KeyPair,
        remote: &PublicKey,
        hello: Hello,
        config: Config,
    ) -> Result<Self, PeerError> {
        let handshake = async {
            let stream = TcpStream::connect(addr).await?;
            let core = Connection::new_initiator(now(), local, remote, hello, config)?;
            Self::handshake(stream, core, addr).await
        };
        match tokio::time::timeout(config.handshake_timeout, handshake).await {
            Ok(r) => r,
            Err(_) => Err(ConnectionError::HandshakeTimeout.into()),
        }
    }

    /// Runs the responder handshake on an accepted stream; only initiators
    /// listed in `peers` are accepted.
    pub async fn accept(
        stream: TcpStream,
        local: &KeyPair,
        peers: Arc<PeerSet>,
        hello: Hello,
        config: Config,
    ) -> Result<Self, PeerError> {
        let addr = stream.peer_addr()?;
        let core = Connection::new_responder(now(), local, peers, hello, config)?;
        Self::handshake(stream, core, addr).await
    }

    async fn handshake(
        stream: TcpStream,
        core: Connection,
        remote_addr: SocketAddr,
    ) -> Result<Self, PeerError> {
        stream.set_nodelay(true)?;
        let mut io = Driver {
            stream: Some(stream),
            core,
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            remote_addr,
            peer_key: None,
        };
        match poll_fn(|cx| io.poll_event(cx)).await? {
            Event::Connected(info) => {
                tracing::debug!(
                    peer = %remote_addr,
                    key = %info.key,
                    name = %info.hello.node_name,
                    "peer connected"
                );
                io.peer_key = Some(info.key);
                // The responder's reply must reach the initiator even if the
                // application waits for the initiator to speak first.
                poll_fn(|cx| io.poll_flush(cx)).await?;
                Ok(Self { io, peer: info })
            }
            // The core yields messages only after `Connected`.
            Event::Message(_) => Err(io.fail(ConnectionError::UnexpectedFrame.into())),
        }
    }

    /// The authenticated remote router.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The remote socket address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.io.remote_addr
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.io.stream.is_none() || self.io.core.is_closed()
    }

    /// Sessions open on this connection (requested by us, by the remote).
    pub fn open_sessions(&self) -> (usize, usize) {
        self.io.core.open_sessions()
    }

    /// Seals `msg` and writes it to the socket.
    ///
    /// Returns [`Sent::Skipped`] when the state rules say there is nothing to
    /// send (e.g. cancelling a session the peer already refused). A rule
    /// violation is returned as [`PeerError::Send`] and leaves the
    /// connection open.
    pub async fn send(&mut self, msg: &Message) -> Result<Sent, PeerError> {
        if self.io.stream.is_none() {
            return Err(SendError::Closed.into());
        }
        let sent = self.io.core.send(now(), msg)?;
        tracing::trace!(peer = %self.io.remote_addr, kind = msg.kind(), "send");
        self.flush().await?;
        Ok(sent)
    }

    /// Writes all queued output.
    pub async fn flush(&mut self) -> Result<(), PeerError> {
        poll_fn(|cx| self.io.poll_flush(cx)).await
    }

    /// Receives the next message. Cancel-safe. Keepalives are consumed
    /// internally; idle and handshake timeouts are reported as errors.
    pub async fn recv(&mut self) -> Result<Message, PeerError> {
        loop {
            match poll_fn(|cx| self.io.poll_event(cx)).await? {
                Event::Message(m) => {
                    tracing::trace!(peer = %self.io.remote_addr, kind = m.kind(), "recv");
                    return Ok(m);
                }
                Event::Connected(_) => continue,
            }
        }
    }

    /// Keeps the connection alive while the application cannot take
    /// messages: writes queued output and sends a `Keepalive` whenever one
    /// is due, but reads nothing (the remote's data waits in the socket:
    /// backpressure) and runs no idle timeout (what the remote sent is read,
    /// and refreshes the idle timer, at the next [`Self::recv`]). Never
    /// returns unless the connection fails. Cancel-safe: use it in
    /// `tokio::select!` against whatever frees the application.
    pub async fn keep_alive(&mut self) -> PeerError {
        loop {
            if let Err(e) = self.flush().await {
                return e;
            }
            let Some(due) = self.io.core.next_keepalive() else {
                return ConnectionError::Closed.into();
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            if let Err(e) = self.io.core.send(now(), &Message::Keepalive) {
                return e.into();
            }
        }
    }

    /// Flushes and closes the write half (the remote sees EOF).
    pub async fn shutdown(&mut self) -> Result<(), PeerError> {
        self.flush().await?;
        if let Some(s) = self.io.stream.as_mut() {
            s.shutdown().await?;
        }
        Ok(())
    }
}

impl Driver {
    fn fail(&mut self, err: PeerError) -> PeerError {
        if self.stream.take().is_some() {
            tracing::warn!(
                peer = %self.remote_addr,
                key = ?self.peer_key,
                error = %err,
                "closing peer connection"
            );
        }
        err
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PeerError>> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Ready(Err(SendError::Closed.into()));
            };
            let pending = self.core.pending_output();
            if pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(stream).poll_write(cx, pending) {
                Poll::Ready(Ok(0)) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(self.fail(e.into())));
                }
                Poll::Ready(Ok(n)) => self.core.advance_output(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fail(e.into()))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Drives writes, reads and timers until the core yields an event.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, PeerError>> {
        loop {
            if let Some(ev) = self.core.poll_event() {
                return Poll::Ready(Ok(ev));
            }
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Ready(Err(ConnectionError::Closed.into()));
            };
            let mut rb = ReadBuf::new(&mut self.read_buf);
            match Pin::new(stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(self.fail(PeerError::Eof)));
                    }
                    if let Err(e) = self.core.handle_input(now(), &self.read_buf[..n]) {
                        return Poll::Ready(Err(self.fail(e.into())));
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fail(e.into()))),
                Poll::Pending => {}
            }
            if let Some(deadline) = self.core.poll_timeout() {
                let deadline = tokio::time::Instant::from_std(deadline);
                if self.sleep.deadline() != deadline {
                    self.sleep.as_mut().reset(deadline);
                }
                if self.sleep.as_mut().poll(cx).is_ready() {
                    if let Err(e) = self.core.handle_timeout(now()) {
                        return Poll::Ready(Err(self.fail(e.into())));
                    }
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}
