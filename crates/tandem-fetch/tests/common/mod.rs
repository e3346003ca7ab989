//! Helpers shared by the loopback tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tandem_fetch::{FetchConfig, OriginFiles, Resource, TargetPolicy, serve_origin};
use tandem_http::{Parse, RangeHeader, RequestHead, ResponseHead};

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Start `serve_origin` on a loopback port.
pub async fn start_origin(files: OriginFiles) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_origin(listener, files));
    addr
}

/// A fetcher config that allows this loopback origin.
pub fn loopback_config(addr: SocketAddr) -> FetchConfig {
    FetchConfig {
        policy: TargetPolicy {
            allow_loopback: true,
            allowed_ports: vec![addr.port()],
            ..TargetPolicy::default()
        },
        ..FetchConfig::default()
    }
}

/// Send one raw request on a new connection, read the whole answer until
/// the server closes (the request should carry `Connection: close`).
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> (ResponseHead, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    match ResponseHead::parse(&all).unwrap() {
        Parse::Complete { head, head_len } => (head, all[head_len..].to_vec()),
        Parse::Partial => panic!("no complete head in {:?}", String::from_utf8_lossy(&all)),
    }
}

pub fn client_request(path: &str, host: &str) -> RequestHead {
    let s = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tandem-test\r\nAccept: */*\r\nCookie: secret=1\r\n\r\n"
    );
    match RequestHead::parse(s.as_bytes()).unwrap() {
        Parse::Complete { head, .. } => head,
        Parse::Partial => panic!("partial"),
    }
}

/// What the client saw: the resource as a session would learn it from the
/// client's full response (via a plain GET's head; here via HEAD).
pub async fn learn_resource(addr: SocketAddr, path: &str) -> Resource {
    let host = format!("127.0.0.1:{}", addr.port());
    let (head, body) = raw_exchange(
        addr,
        &format!("HEAD {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(body.is_empty(), "HEAD must have no body");
    Resource {
        origin: addr,
        host: host.clone(),
        request: client_request(path, &host),
        validator: head.validator().expect("validator"),
        total_len: head.content_length().unwrap().expect("length"),
    }
}

/// What a hand-rolled server does after writing its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Keep reading requests on this connection.
    KeepOpen,
    /// Close the connection.
    Close,
    /// Never write again; hold the connection open.
    Stall,
}

/// A misbehaving (or well-behaved) hand-rolled server: for each request,
/// `reply(request_index, range_first, range_last_inclusive)` gives the
/// bytes to write and what to do next.
pub struct HandRolled {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub conns: Arc<AtomicUsize>,
    /// Every request head received, in order.
    pub log: Arc<Mutex<Vec<RequestHead>>>,
}

pub async fn hand_rolled<F>(reply: F) -> HandRolled
where
    F: Fn(usize, u64, u64) -> (Vec<u8>, Then) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(reply);
    let conns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let conns2 = conns.clone();
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            conns2.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            let requests = requests.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut tmp = [0u8; 4096];
                    let (req, head_len) = loop {
                        if let Ok(Parse::Complete { head, head_len }) = RequestHead::parse(&buf) {
                            break (head, head_len);
                        }
                        let n = s.read(&mut tmp).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                    };
                    buf.drain(..head_len);
                    let (first, last) = match req.headers.get("range").map(RangeHeader::parse) {
                        Some(RangeHeader::Single(tandem_http::ByteRangeSpec::FromTo(a, b))) => {
                            (a, b)
                        }
                        _ => (0, 0),
                    };
                    log.lock().unwrap().push(req.clone());
                    let i = requests.fetch_add(1, Ordering::SeqCst);
                    let (bytes, then) = reply(i, first, last);
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                    match then {
                        Then::KeepOpen => {}
                        Then::Close => return,
                        Then::Stall => {
                            // Hold the socket until the peer goes away.
                            let mut sink = [0u8; 1024];
                            while s.read(&mut sink).await.unwrap_or(0) > 0 {}
                            return;
                        }
                    }
                }
            });
        }
    });
    HandRolled { addr, conns, log }
}

/// A correct 206 for `first..=last` of `body`, with ETag `etag`.
pub fn good_206(body: &[u8], first: u64, last: u64, etag: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{last}/{}\r\nContent-Length: {}\r\nETag: {etag}\r\n\r\n",
        body.len(),
        last - first + 1
    )
    .into_bytes();
    out.extend_from_slice(&body[first as usize..=last as usize]);
    out
}

/// A resource description for a hand-rolled server.
pub fn resource_for(addr: SocketAddr, total_len: u64, etag: &str) -> Resource {
    Resource {
        origin: addr,
        host: "origin.test".into(),
        request: client_request("/file.bin", "origin.test"),
        validator: tandem_http::Validator::ETag(etag.into()),
        total_len,
    }
}
