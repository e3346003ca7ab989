//! `RangeFetcher`: fetch byte ranges of one resource from one origin
//! address over a reused HTTP/1.1 keep-alive connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use tandem_http::{
    ContentRange, HeadError, MAX_HEAD_LEN, Parse, RangeRequestError, RequestHead, ResponseHead,
    Validator, range_request,
};

use crate::target::{TargetPolicy, TargetRefused};

/// Default size of the read buffer, i.e. the largest chunk handed out.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// Largest accepted [`FetchConfig::chunk_size`]; larger values are
/// lowered to it.
pub const MAX_CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// How a [`RangeFetcher`] connects and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// Give up when no byte arrives for this long (while waiting for the
    /// response head or for body bytes). Default 10 s.
    pub idle_timeout: Duration,
    /// Give up connecting after this long. Default 5 s.
    pub connect_timeout: Duration,
    /// Bind the local end to this address before connecting (a neighbour
    /// fetches over its own uplink). Default: let the kernel choose.
    pub bind_addr: Option<IpAddr>,
    /// Read buffer size, the largest chunk handed out (clamped to
    /// 1 KiB..=[`MAX_CHUNK_SIZE`]).
    /// Memory per fetcher is about `max(chunk_size, MAX_HEAD_LEN)`.
    pub chunk_size: usize,
    /// Which origin addresses may be fetched from (SSRF guard).
    pub policy: TargetPolicy,
    /// How long, once the previous body has been read, the response to a
    /// pipelined request ([`PieceBody::pipeline`]) may take to start. An
    /// origin that lets it pass has ignored the request: the fetch retries
    /// it on a new connection and this fetcher stops pipelining. Default
    /// 1 s.
    pub pipeline_timeout: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            bind_addr: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            policy: TargetPolicy::default(),
            pipeline_timeout: Duration::from_secs(1),
        }
    }
}

/// The resource a session accelerates, as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The origin address the client connected to. Never re-resolved.
    pub origin: SocketAddr,
    /// `Host` header value to send (the client's `Host`).
    pub host: String,
    /// The client's request head: its target and safe end-to-end headers
    /// are reused (see `tandem_http::FORWARDED_HEADERS`).
    pub request: RequestHead,
    /// The validator of the client's response, sent as `If-Range`.
    pub validator: Validator,
    /// The full body length of the client's response.
    pub total_len: u64,
}

impl Resource {
    /// The resource of a client's exchange: `request` as the client sent
    /// it to `origin`, `response` the head the origin answered. The `Host`
    /// is the request's (or the origin address when the request has none);
    /// the validator and length come from the response. `None` if the
    /// response has no usable validator or `Content-Length` (such a
    /// response is not eligible anyway).
    pub fn from_exchange(
        origin: SocketAddr,
        request: RequestHead,
        response: &ResponseHead,
    ) -> Option<Self> {
        let validator = response.validator()?;
        let total_len = response.content_length().ok().flatten()?;
        let host = request
            .host()
            .map_or_else(|| origin.to_string(), str::to_owned);
        Some(Self {
            origin,
            host,
            request,
            validator,
            total_len,
        })
    }
}

/// Which phase of a fetch timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to the origin.
    Connect,
    /// Waiting for the response head.
    Head,
    /// Waiting for body bytes.
    Body,
}

/// What the session should make of a [`FetchError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchErrorClass {
    /// The origin now serves a different representation (validator or
    /// length changed, If-Range fell back to a full 200, 416). Bytes from
    /// it must not be spliced; the session must stop (and reset the client
    /// if it already owns the flow).
    ResourceChanged,
    /// The origin ignores Range requests (200 with the same validator):
    /// this source cannot serve pieces of this resource.
    RangesUnsupported,
    /// Network trouble (timeout, reset, short body, 5xx/429): retry the
    /// piece, on this or another source.
    Transient,
    /// The origin or the path to it misbehaves (wrong Content-Range,
    /// malformed head, encodings): stop using this source for the session.
    Protocol,
    /// The request was refused locally (SSRF policy, bad range): do not
    /// retry it anywhere.
    Refused,
}

/// Why a piece fetch failed. See [`FetchError::class`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The origin address is not allowed by the [`TargetPolicy`].
    #[error("target refused: {0}")]
    Refused(#[from] TargetRefused),
    /// The requested range is empty or beyond the resource's length.
    #[error("range {start}..{end} is not inside a resource of {total} bytes")]
    BadRange {
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// The resource's length.
        total: u64,
    },
    /// The Range request head could not be built (invalid host/target).
    #[error("cannot build the range request: {0}")]
    Request(#[from] RangeRequestError),
    /// The origin sent a full response (200) instead of 206: either it
    /// ignores Range, or `If-Range` did not match (resource changed).
    #[error("origin answered {status} instead of 206 (resource changed: {changed})")]
    NotPartial {
        /// The status code received (200).
        status: u16,
        /// Whether the full response shows a different validator or
        /// length than the session's.
        changed: bool,
    },
    /// The origin answered 416: the range is no longer inside the
    /// resource.
    #[error("origin answered 416 (range not satisfiable)")]
    RangeNotSatisfiable,
    /// Any other status code.
    #[error("origin answered status {0}")]
    Status(u16),
    /// The 206's `Content-Range` is missing, malformed, or does not match
    /// the requested range or the resource length.
    #[error("Content-Range mismatch: wanted {expected:?} of {expected_total}, got {got:?}")]
    ContentRangeMismatch {
        /// The requested range.
        expected: Range<u64>,
        /// The resource length the session knows.
        expected_total: u64,
        /// What the origin sent (`None`: missing or malformed).
        got: Option<ContentRange>,
    },
    /// The 206 carries a different `ETag` / `Last-Modified` than the
    /// session's validator.
    #[error("validator changed: expected {expected}, got {got}")]
    ValidatorChanged {
        /// The session's validator.
        expected: Validator,
        /// The value the origin sent.
        got: String,
    },
    /// `Content-Length` of the 206 disagrees with its `Content-Range`.
    #[error("Content-Length {got:?} does not match the range length {expected}")]
    ContentLengthMismatch {
        /// Length of the range.
        expected: u64,
        /// The `Content-Length` sent, if any could be read.
        got: Option<u64>,
    },
    /// The 206 uses a `Transfer-Encoding` or `Content-Encoding`, so its
    /// bytes are not the plain representation bytes.
    #[error("unsupported encoding in the 206: {0}")]
    Encoding(String),
    /// The connection closed before the whole range arrived.
    #[error("short body: {received} of {expected} bytes")]
    ShortBody {
        /// Bytes expected.
        expected: u64,
        /// Bytes received before the close.
        received: u64,
    },
    /// No byte for [`FetchConfig::idle_timeout`] (or connect timeout).
    #[error("timed out during {0:?}")]
    Timeout(Phase),
    /// The response head exceeds `MAX_HEAD_LEN`.
    #[error("response head too large")]
    HeadTooLarge,
    /// The response head is not valid HTTP/1.x.
    #[error("malformed response head: {0}")]
    BadHead(HeadError),
    /// Any other socket error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl FetchError {
    /// What the session should do about this error.
    pub fn class(&self) -> FetchErrorClass {
        use FetchErrorClass as C;
        match self {
            FetchError::Refused(_) | FetchError::BadRange { .. } | FetchError::Request(_) => {
                C::Refused
            }
            FetchError::NotPartial { changed: true, .. }
            | FetchError::RangeNotSatisfiable
            | FetchError::ValidatorChanged { .. } => C::ResourceChanged,
            FetchError::ContentRangeMismatch {
                expected,
                expected_total,
                got: Some(cr),
            } if cr.range() == *expected && cr.complete_len != Some(*expected_total) => {
                C::ResourceChanged
            }
            FetchError::NotPartial { changed: false, .. } => C::RangesUnsupported,
            FetchError::Status(s) if *s >= 500 || *s == 429 || *s == 408 => C::Transient,
            FetchError::ShortBody { .. } | FetchError::Timeout(_) | FetchError::Io(_) => {
                C::Transient
            }
            FetchError::Status(_)
            | FetchError::ContentRangeMismatch { .. }
            | FetchError::ContentLengthMismatch { .. }
            | FetchError::Encoding(_)
            | FetchError::HeadTooLarge
            | FetchError::BadHead(_) => C::Protocol,
        }
    }

    /// Shorthand for `class() == ResourceChanged`.
    pub fn is_resource_changed(&self) -> bool {
        self.class() == FetchErrorClass::ResourceChanged
    }
}

/// Counters of one fetcher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// TCP connections opened.
    pub connections: u64,
    /// Range requests sent (including a retry after a stale keep-alive).
    pub requests: u64,
    /// Of those, requests pipelined behind a streaming body.
    pub pipelined: u64,
    /// Body bytes handed to the caller.
    pub body_bytes: u64,
}

struct Conn {
    stream: TcpStream,
    /// The origin did not ask to close and the last body was delimited.
    reusable: bool,
    /// Body bytes of the current response not yet read from the socket.
    body_left: u64,
    /// Requests sent on this connection.
    requests: u64,
    /// A request for this range was sent behind the current response
    /// (HTTP/1.1 pipelining); its response follows the current body.
    pipelined: Option<Range<u64>>,
}

/// HTTP/1.1 client for byte ranges of one [`Resource`].
///
/// [`RangeFetcher::fetch`] sends the Range request, checks the response
/// head and returns a [`PieceBody`] that streams the body in chunks of at
/// most [`FetchConfig::chunk_size`] bytes. When the body has been read to
/// its end the connection is kept for the next piece; if the caller drops
/// the body early, the connection is closed at the next fetch. A keep-alive
/// connection the origin closed while idle is replaced transparently (one
/// retry on a new connection when nothing of the response arrived).
///
/// Pipelining: while a body streams, [`PieceBody::pipeline`] may send the
/// request for the next range on the same connection, so that its response
/// follows the current body without a request round trip and on a
/// connection whose congestion window is already open. The next `fetch` of
/// exactly that range then only reads the response. A pipelined request
/// the origin does not answer (it closes the connection, or lets
/// [`FetchConfig::pipeline_timeout`] pass) is sent again on a new
/// connection, and the fetcher stops pipelining.
pub struct RangeFetcher {
    resource: Resource,
    config: FetchConfig,
    conn: Option<Conn>,
    buf: Vec<u8>,
    stats: FetchStats,
    /// Cleared when the origin failed a pipelined request.
    pipelining: bool,
}

impl std::fmt::Debug for RangeFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeFetcher")
            .field("origin", &self.resource.origin)
            .field("stats", &self.stats)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl RangeFetcher {
    /// A fetcher for `resource`. Fails if the policy refuses the origin
    /// address. Does not connect yet.
    pub fn new(resource: Resource, mut config: FetchConfig) -> Result<Self, FetchError> {
        config.policy.check(resource.origin)?;
        config.chunk_size = config.chunk_size.clamp(1024, MAX_CHUNK_SIZE);
        let buf = vec![0; config.chunk_size.max(MAX_HEAD_LEN)];
        Ok(Self {
            resource,
            config,
            conn: None,
            buf,
            stats: FetchStats::default(),
            pipelining: true,
        })
    }

    /// Opens the connection now if there is none, so that the next
    /// [`fetch`](Self::fetch) costs one request round trip instead of two
    /// (a worker connects while it waits for its first piece). If the
    /// origin closes it before the next fetch, that fetch retries once on a
    /// new connection, as for any idle keep-alive connection.
    pub async fn preconnect(&mut self) -> Result<(), FetchError> {
        if self.conn.is_none() {
            let stream = self.connect().await?;
            self.stats.connections += 1;
            self.conn = Some(Conn {
                stream,
                reusable: true,
                body_left: 0,
                requests: 0,
                pipelined: None,
            });
        }
        Ok(())
    }

    /// The resource this fetcher serves.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// Counters so far.
    pub fn stats(&self) -> FetchStats {
        self.stats
    }

    /// Whether [`PieceBody::pipeline`] may still send requests (false once
    /// the origin failed a pipelined request).
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// Request `range` (half-open, inside `0..total_len`) and check the
    /// response head. On success the body is streamed by the returned
    /// [`PieceBody`].
    pub async fn fetch(&mut self, range: Range<u64>) -> Result<PieceBody<'_>, FetchError> {
        let request = self.request_for(&range)?;
        // A connection with an unread body or a close pending is useless,
        // and so is one that will answer a pipelined request for another
        // range first.
        let mut sent = false;
        if let Some(c) = self.conn.as_mut() {
            let pipelined = c.pipelined.take();
            if !c.reusable || c.body_left != 0 || pipelined.as_ref().is_some_and(|r| *r != range) {
                self.conn = None;
            } else {
                sent = pipelined.is_some();
            }
        }
        let result = match self.exchange(&request, sent).await {
            Err(Retry::Stale) => {
                // The origin closed the idle keep-alive connection (or did
                // not answer the pipelined request): one retry on a new
                // connection (which cannot be stale).
                self.conn = None;
                self.exchange(&request, false).await
            }
            other => other,
        };
        let (head, head_len, filled) = match result {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(match e {
                    Retry::Fail(e) => e,
                    Retry::Stale => FetchError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before the response",
                    )),
                });
            }
        };
        let checked = self.check_head(&head, &range);
        let Some(conn) = self.conn.as_mut() else {
            return Err(FetchError::Io(io::Error::other("connection lost")));
        };
        let len = range.end - range.start;
        match checked {
            Ok(delimited) => {
                conn.reusable &= delimited && keeps_alive(&head);
            }
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        }
        // Bytes read past the head belong to the body; more than the body
        // means the origin sent garbage after it: do not reuse.
        let extra = (filled - head_len) as u64;
        let pending_len = extra.min(len);
        if extra > len {
            conn.reusable = false;
        }
        conn.body_left = len - pending_len;
        Ok(PieceBody {
            fetcher: self,
            range: range.clone(),
            next: range.start,
            pending: head_len..head_len + pending_len as usize,
        })
    }

    /// The Range request for `range` (half-open, inside `0..total_len`).
    fn request_for(&self, range: &Range<u64>) -> Result<Vec<u8>, FetchError> {
        let total = self.resource.total_len;
        if range.start >= range.end || range.end > total {
            return Err(FetchError::BadRange {
                start: range.start,
                end: range.end,
                total,
            });
        }
        Ok(range_request(
            &self.resource.request,
            range.clone(),
            &self.resource.validator,
            &self.resource.host,
        )?)
    }

    /// Fetch `range` and hand every chunk to `sink` as
    /// `(offset in the resource, bytes)`. Returns the number of bytes.
    pub async fn fetch_with<F>(&mut self, range: Range<u64>, mut sink: F) -> Result<u64, FetchError>
    where
        F: FnMut(u64, &[u8]),
    {
        let mut body = self.fetch(range).await?;
        while let Some((offset, chunk)) = body.next_chunk().await? {
            sink(offset, chunk);
        }
        Ok(body.received())
    }

    /// Send `request` on the current connection (or a new one) and read the
    /// response head; with `sent`, the request was pipelined already and
    /// only the head is read. `Retry::Stale` means a reused connection
    /// failed before any response byte: try again on a new one.
    async fn exchange(
        &mut self,
        request: &[u8],
        sent: bool,
    ) -> Result<(ResponseHead, usize, usize), Retry> {
        let reused = self.conn.is_some();
        self.preconnect().await.map_err(Retry::Fail)?;
        let idle = self.config.idle_timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Retry::Fail(FetchError::Io(io::Error::other(
                "no connection",
            ))));
        };
        let stale = |e: io::Error| {
            if reused && is_stale(&e) {
                Retry::Stale
            } else {
                Retry::Fail(FetchError::Io(e))
            }
        };
        if !sent {
            conn.requests += 1;
            self.stats.requests += 1;
            match timeout(idle, conn.stream.write_all(request)).await {
                Err(_) => return Err(Retry::Fail(FetchError::Timeout(Phase::Head))),
                Ok(Err(e)) => return Err(stale(e)),
                Ok(Ok(())) => {}
            }
        }
        let mut filled = 0;
        loop {
            // A pipelined response is due as soon as the previous body
            // ended; an origin that lets `pipeline_timeout` pass ignored it.
            let wait = if sent && filled == 0 {
                self.config.pipeline_timeout.min(idle)
            } else {
                idle
            };
            let n = match timeout(wait, conn.stream.read(&mut self.buf[filled..])).await {
                Err(_) if sent && filled == 0 => {
                    tracing::debug!(origin = %self.resource.origin, "pipelined request not answered: pipelining off");
                    self.pipelining = false;
                    return Err(Retry::Stale);
                }
                Err(_) => return Err(Retry::Fail(FetchError::Timeout(Phase::Head))),
                Ok(Err(e)) if filled == 0 => {
                    if sent {
                        self.pipelining = false;
                    }
                    return Err(stale(e));
                }
                Ok(Err(e)) => return Err(Retry::Fail(FetchError::Io(e))),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                if sent && filled == 0 {
                    // Closed after the previous response: this origin does
                    // not answer pipelined requests.
                    self.pipelining = false;
                }
                return Err(if filled == 0 && reused {
                    Retry::Stale
                } else {
                    Retry::Fail(FetchError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the response head",
                    )))
                });
            }
            filled += n;
            // Parse; skip interim (1xx) responses already in the buffer.
            loop {
                match ResponseHead::parse(&self.buf[..filled]) {
                    Ok(Parse::Complete { head, head_len }) if (100..200).contains(&head.status) => {
                        self.buf.copy_within(head_len..filled, 0);
                        filled -= head_len;
                    }
                    Ok(Parse::Complete { head, head_len }) => return Ok((head, head_len, filled)),
                    Ok(Parse::Partial) => break,
                    Err(HeadError::TooLarge) => {
                        return Err(Retry::Fail(FetchError::HeadTooLarge));
                    }
                    Err(e) => return Err(Retry::Fail(FetchError::BadHead(e))),
                }
            }
            if filled == self.buf.len() {
                return Err(Retry::Fail(FetchError::HeadTooLarge));
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream, FetchError> {
        let origin = self.resource.origin;
        let socket = if origin.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.config.bind_addr {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = timeout(self.config.connect_timeout, socket.connect(origin))
            .await
            .map_err(|_| FetchError::Timeout(Phase::Connect))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Check a response head against the requested range. `Ok(true)` if
    /// the body is delimited by Content-Length (connection reusable).
    fn check_head(&self, head: &ResponseHead, range: &Range<u64>) -> Result<bool, FetchError> {
        let total = self.resource.total_len;
        let validator = &self.resource.validator;
        match head.status {
            206 => {}
            200 => {
                let same_validator =
                    head.validator().as_ref() == Some(validator) || validator.matches(head);
                let same_len = head.content_length().ok().flatten() == Some(total);
                return Err(FetchError::NotPartial {
                    status: 200,
                    changed: !(same_validator && same_len),
                });
            }
            416 => return Err(FetchError::RangeNotSatisfiable),
            s => return Err(FetchError::Status(s)),
        }
        let h = &head.headers;
        if let Some(te) = h.get("transfer-encoding") {
            return Err(FetchError::Encoding(format!(
                "Transfer-Encoding: {}",
                String::from_utf8_lossy(te)
            )));
        }
        if let Some(ce) = h.get_str("content-encoding") {
            if !ce.eq_ignore_ascii_case("identity") {
                return Err(FetchError::Encoding(format!("Content-Encoding: {ce}")));
            }
        }
        let got = h
            .get("content-range")
            .and_then(|v| ContentRange::parse(v).ok());
        let ok = got.is_some_and(|cr| cr.range() == *range && cr.complete_len == Some(total))
            && h.get_all("content-range").count() == 1;
        if !ok {
            return Err(FetchError::ContentRangeMismatch {
                expected: range.clone(),
                expected_total: total,
                got,
            });
        }
        let field = match validator {
            Validator::ETag(_) => "etag",
            Validator::LastModified(_) => "last-modified",
        };
        if h.contains(field) && !validator.matches(head) {
            return Err(FetchError::ValidatorChanged {
                expected: validator.clone(),
                got: h
                    .get(field)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            });
        }
        let len = range.end - range.start;
        match head.content_length() {
            Ok(Some(n)) if n == len => Ok(true),
            Ok(None) => Ok(false),
            Ok(Some(n)) => Err(FetchError::ContentLengthMismatch {
                expected: len,
                got: Some(n),
            }),
            Err(_) => Err(FetchError::ContentLengthMismatch {
                expected: len,
                got: None,
            }),
        }
    }
}

enum Retry {
    Stale,
    Fail(FetchError),
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// Whether the origin lets the connection stay open after this response.
fn keeps_alive(head: &ResponseHead) -> bool {
    if head.headers.has_token("connection", "close") {
        return false;
    }
    head.version == 1 || head.headers.has_token("connection", "keep-alive")
}

/// The body of one piece, streamed from the socket.
///
/// Call [`PieceBody::next_chunk`] until it returns `Ok(None)`; each chunk
/// is at most [`FetchConfig::chunk_size`] bytes and borrowed from the
/// fetcher's buffer.
pub struct PieceBody<'a> {
    fetcher: &'a mut RangeFetcher,
    range: Range<u64>,
    /// Offset in the resource of the next byte to hand out.
    next: u64,
    /// Body bytes already in the buffer (read together with the head).
    pending: Range<usize>,
}

impl std::fmt::Debug for PieceBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceBody")
            .field("range", &self.range)
            .field("next", &self.next)
            .finish()
    }
}

impl PieceBody<'_> {
    /// The range being fetched.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Body bytes handed out so far.
    pub fn received(&self) -> u64 {
        self.next - self.range.start
    }

    /// Sends the Range request for `range` now, on this body's connection
    /// (HTTP/1.1 pipelining): its response follows this body, and the next
    /// [`RangeFetcher::fetch`] of exactly `range` only reads it. Returns
    /// `Ok(false)` when nothing was sent: pipelining is off for this origin,
    /// the connection will not be kept after this body, or a request is
    /// already pipelined. A failed write makes the connection unusable
    /// after this body (the next fetch reconnects) and also returns
    /// `Ok(false)`; the body itself reports whatever broke. Errors:
    /// [`FetchError::BadRange`], [`FetchError::Request`].
    pub async fn pipeline(&mut self, range: Range<u64>) -> Result<bool, FetchError> {
        let f = &mut *self.fetcher;
        let request = f.request_for(&range)?;
        if !f.pipelining {
            return Ok(false);
        }
        let Some(conn) = f.conn.as_mut() else {
            return Ok(false);
        };
        if !conn.reusable || conn.pipelined.is_some() {
            return Ok(false);
        }
        conn.requests += 1;
        f.stats.requests += 1;
        match timeout(f.config.idle_timeout, conn.stream.write_all(&request)).await {
            Ok(Ok(())) => {
                f.stats.pipelined += 1;
                conn.pipelined = Some(range);
                Ok(true)
            }
            Ok(Err(_)) | Err(_) => {
                // Maybe half a request went out: never reuse.
                conn.reusable = false;
                Ok(false)
            }
        }
    }

    /// The next chunk as `(offset in the resource, bytes)`, or `None` when
    /// the whole range has been delivered. Errors: [`FetchError::Timeout`]
    /// (`Phase::Body`), [`FetchError::ShortBody`], [`FetchError::Io`].
    pub async fn next_chunk(&mut self) -> Result<Option<(u64, &[u8])>, FetchError> {
        let remaining = self.range.end - self.next;
        if remaining == 0 {
            return Ok(None);
        }
        let offset = self.next;
        let f = &mut *self.fetcher;
        if !self.pending.is_empty() {
            let n = self.pending.len().min(f.config.chunk_size);
            let p = self.pending.start..self.pending.start + n;
            self.pending.start += n;
            self.next += n as u64;
            f.stats.body_bytes += n as u64;
            return Ok(Some((offset, &f.buf[p])));
        }
        let Some(conn) = f.conn.as_mut() else {
            return Err(FetchError::Io(io::Error::other("connection lost")));
        };
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(f.config.chunk_size);
        let read = timeout(f.config.idle_timeout, conn.stream.read(&mut f.buf[..want])).await;
        let n = match read {
            Err(_) => {
                f.conn = None;
                return Err(FetchError::Timeout(Phase::Body));
            }
            Ok(Err(e)) => {
                f.conn = None;
                return Err(FetchError::Io(e));
            }
            Ok(Ok(0)) => {
                f.conn = None;
                return Err(FetchError::ShortBody {
                    expected: self.range.end - self.range.start,
                    received: self.next - self.range.start,
                });
            }
            Ok(Ok(n)) => n,
        };
        conn.body_left = conn.body_left.saturating_sub(n as u64);
        self.next += n as u64;
        f.stats.body_bytes += n as u64;
        Ok(Some((offset, &f.buf[..n])))
    }
}
