//! Loopback integration tests: real tokio tasks, real TCP on 127.0.0.1, an
//! origin started by the test (tandem-fetch's `serve_origin`), several
//! routers each with its own `Node`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tandem_delegate::{
    Download, NeighbourConfig, Node, NodeConfig, ServeConfig, Session, SessionConfig, SessionError,
};
use tandem_fetch::{FetchConfig, OriginFiles, TargetPolicy, serve_origin};
use tandem_http::{Parse, RequestHead, ResponseHead, Validator};
use tandem_peer::{
    ByteRange, Config as PeerConfig, Hello, KeyPair, Message, Negotiate, PeerConnection,
    RefuseReason, SessionKey,
};
use tandem_plan::{PlannerConfig, RangeSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATH: &str = "/file.bin";

fn key(n: u8) -> KeyPair {
    KeyPair::from_private([n; 32]).unwrap()
}

/// Deterministic pseudo-random content (xorshift, seeded).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Origin {
    addr: SocketAddr,
    files: OriginFiles,
}

async fn start_origin(data: Vec<u8>, rate: Option<u64>) -> Origin {
    let files = OriginFiles::memory().with_rate_limit(rate);
    files.insert(PATH, data);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let f = files.clone();
    tokio::spawn(async move { serve_origin(listener, f).await });
    Origin { addr, files }
}

/// The origin's current validator for PATH (via a one-byte Range GET).
async fn validator(origin: SocketAddr) -> Validator {
    let mut s = TcpStream::connect(origin).await.unwrap();
    s.write_all(
        format!("GET {PATH} HTTP/1.1\r\nHost: origin.test\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    match ResponseHead::parse(&buf).unwrap() {
        Parse::Complete { head, .. } => head.validator().unwrap(),
        Parse::Partial => panic!("short response"),
    }
}

fn policy(origin: SocketAddr) -> TargetPolicy {
    TargetPolicy {
        allow_loopback: true,
        allowed_ports: vec![origin.port()],
        ..TargetPolicy::default()
    }
}

fn serve_config(origin: SocketAddr) -> ServeConfig {
    ServeConfig {
        target_policy: policy(origin),
        ..ServeConfig::default()
    }
}

/// A neighbour router serving on 127.0.0.1; accepts the routers in `accepts`.
async fn neighbour(
    name: &str,
    keys: KeyPair,
    accepts: &[&KeyPair],
    serve: ServeConfig,
) -> (Node, SocketAddr) {
    let neighbours = accepts
        .iter()
        .enumerate()
        .map(|(i, k)| NeighbourConfig {
            name: format!("client{i}"),
            key: k.public(),
            addr: None,
            link_bps: 0,
        })
        .collect();
    let mut cfg = NodeConfig::new(name, keys, neighbours);
    cfg.serve = serve;
    let node = Node::new(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = node.clone();
    tokio::spawn(async move { n.serve(listener).await });
    (node, addr)
}

/// Router A, delegating to `peers` (name, expected key, address).
fn router_a(keys: KeyPair, peers: &[(&str, tandem_peer::PublicKey, SocketAddr)]) -> Node {
    let neighbours = peers
        .iter()
        .map(|(name, key, addr)| NeighbourConfig {
            name: (*name).to_owned(),
            key: *key,
            addr: Some(*addr),
            link_bps: 0,
        })
        .collect();
    Node::new(NodeConfig::new("A", keys, neighbours))
}

fn request(extra: &str) -> RequestHead {
    let raw = format!(
        "GET {PATH} HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: tandem-test\r\n{extra}\r\n"
    );
    match RequestHead::parse(raw.as_bytes()).unwrap() {
        Parse::Complete { head, .. } => head,
        Parse::Partial => panic!("partial request"),
    }
}

fn session_config(origin: SocketAddr, local: bool) -> SessionConfig {
    SessionConfig {
        planner: PlannerConfig {
            window: 1 << 20,
            min_piece: 32 << 10,
            max_piece: 256 << 10,
            ..PlannerConfig::default()
        },
        local_fetch: local.then(|| FetchConfig {
            policy: policy(origin),
            ..FetchConfig::default()
        }),
        local_rate_bps: 8_000_000,
        default_peer_rate_bps: 8_000_000,
        wait_for_negotiation: true,
        ..SessionConfig::default()
    }
}

async fn open(a: &Node, origin: SocketAddr, len: u64, extra: &str, cfg: SessionConfig) -> Session {
    let download = Download {
        origin,
        request: request(extra),
        validator: validator(origin).await,
        body_length: len,
        range: 0..len,
    };
    a.open_session(download, cfg).unwrap()
}

/// Reads the whole session, checking every byte arrives exactly once, and
/// reporting in-order progress as the client would consume it.
/// `on_progress(received)` runs after every chunk.
async fn collect(
    session: &mut Session,
    len: usize,
    mut on_progress: impl FnMut(u64),
) -> (Vec<u8>, RangeSet, Result<(), SessionError>) {
    let mut buf = vec![0u8; len];
    let mut got = RangeSet::new();
    let result = loop {
        match session.next().await {
            Ok(Some(chunk)) => {
                let r = chunk.offset..chunk.offset + chunk.bytes.len() as u64;
                assert_eq!(got.covered_in(&r), 0, "byte delivered twice in {r:?}");
                buf[r.start as usize..r.end as usize].copy_from_slice(&chunk.bytes);
                got.insert(r);
                session.delivered(got.contiguous_end(0));
                on_progress(got.len());
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    (buf, got, result)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn reassemble_with_peers(n_peers: u8) {
    let len = 3 << 20;
    let data = content(len, 7 + u64::from(n_peers));
    // 1.5 MB/s per origin connection: no single source can do it alone fast.
    let origin = start_origin(data.clone(), Some(1_500_000)).await;
    let ka = key(1);
    let mut peers = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..n_peers {
        let kb = key(10 + i);
        let (node, addr) = neighbour(
            &format!("B{i}"),
            kb.clone(),
            &[&ka],
            serve_config(origin.addr),
        )
        .await;
        peers.push((format!("B{i}"), kb.public(), addr));
        nodes.push(node);
    }
    let peer_refs: Vec<_> = peers.iter().map(|(n, k, a)| (n.as_str(), *k, *a)).collect();
    let a = router_a(ka, &peer_refs);
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "",
        session_config(origin.addr, true),
    )
    .await;
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    result.unwrap();
    assert!(buf == data, "reassembled body differs");
    let stats = s.stats();
    assert_eq!(stats.bytes_delivered, len as u64);
    assert_eq!(stats.sources.len(), 1 + n_peers as usize);
    for src in &stats.sources {
        assert!(src.committed, "{src:?}");
        assert!(
            src.bytes > 0,
            "source {} brought nothing: {stats:?}",
            src.name
        );
    }
    for node in &nodes {
        assert_eq!(node.stats().commits, 1);
    }
    // completion releases the keys everywhere
    let key = s.key();
    drop(s);
    for node in nodes.iter().chain(std::iter::once(&a)) {
        eventually("key release", || !node.is_committed(&key)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_reassemble_identical_bytes() {
    reassemble_with_peers(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_reassemble_identical_bytes() {
    reassemble_with_peers(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_change_aborts_without_mixing_bytes() {
    let len = 4 << 20;
    let old = content(len, 1);
    let origin = start_origin(old.clone(), Some(1_000_000)).await;
    let ka = key(1);
    let kb = key(2);
    let (_b, b_addr) = neighbour("B", kb.clone(), &[&ka], serve_config(origin.addr)).await;
    let a = router_a(ka, &[("B", kb.public(), b_addr)]);
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "",
        session_config(origin.addr, true),
    )
    .await;
    let files = origin.files.clone();
    let mut replaced = false;
    let (buf, got, result) = collect(&mut s, len, |received| {
        if !replaced && received >= 512 << 10 {
            files.insert(PATH, content(len, 2));
            replaced = true;
        }
    })
    .await;
    assert!(replaced);
    assert!(
        matches!(result, Err(SessionError::ResourceChanged { .. })),
        "{result:?}"
    );
    assert!(got.len() < len as u64);
    // every byte delivered is from the old version
    for r in got.ranges() {
        let (a, b) = (r.start as usize, r.end as usize);
        assert!(
            buf[a..b] == old[a..b],
            "new-version bytes delivered in {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_killed_mid_download_pieces_are_reassigned() {
    let len = 3 << 20;
    let data = content(len, 3);
    let origin = start_origin(data.clone(), Some(1_000_000)).await;
    let ka = key(1);
    let (kb, kc) = (key(2), key(3));
    let (b, b_addr) = neighbour("B", kb.clone(), &[&ka], serve_config(origin.addr)).await;
    let (_c, c_addr) = neighbour("C", kc.clone(), &[&ka], serve_config(origin.addr)).await;
    let a = router_a(
        ka,
        &[("B", kb.public(), b_addr), ("C", kc.public(), c_addr)],
    );
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "",
        session_config(origin.addr, true),
    )
    .await;
    let mut killed = false;
    let (buf, _, result) = collect(&mut s, len, |received| {
        if !killed && received >= 1 << 20 {
            b.shutdown();
            killed = true;
        }
    })
    .await;
    result.unwrap();
    assert!(killed);
    assert!(buf == data, "reassembled body differs");
    let stats = s.stats();
    let b_stats = stats.sources.iter().find(|x| x.name == "B").unwrap();
    assert!(b_stats.gone.is_some(), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_router_is_refused() {
    let len = 256 << 10;
    let data = content(len, 4);
    let origin = start_origin(data.clone(), None).await;
    let (ka, kb, stranger) = (key(1), key(2), key(3));
    // B accepts only `stranger`, not A
    let (b, b_addr) = neighbour("B", kb.clone(), &[&stranger], serve_config(origin.addr)).await;
    let a = router_a(ka, &[("B", kb.public(), b_addr)]);
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "",
        session_config(origin.addr, true),
    )
    .await;
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    result.unwrap();
    assert!(buf == data);
    let stats = s.stats();
    assert!(!stats.sources[1].committed);
    assert!(stats.sources[1].gone.is_some(), "{stats:?}");
    assert_eq!(b.stats().connections, 0);
    assert_eq!(b.stats().negotiations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_neighbour_key_is_refused() {
    let len = 256 << 10;
    let data = content(len, 5);
    let origin = start_origin(data.clone(), None).await;
    let (ka, kb, other) = (key(1), key(2), key(4));
    let (b, b_addr) = neighbour("B", kb, &[&ka], serve_config(origin.addr)).await;
    // A expects B to hold `other`'s key
    let a = router_a(ka, &[("B", other.public(), b_addr)]);
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "",
        session_config(origin.addr, true),
    )
    .await;
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    result.unwrap();
    assert!(buf == data);
    assert!(!s.stats().sources[1].committed);
    assert_eq!(b.stats().connections, 0);
}

fn raw_negotiate(
    session: SessionKey,
    origin: SocketAddr,
    headers: Vec<(String, String)>,
) -> Message {
    Message::Negotiate(Box::new(Negotiate {
        session,
        origin,
        host: "origin.test".into(),
        target: PATH.into(),
        headers,
        validator: tandem_peer::Validator::ETag("\"x\"".into()),
        body_length: 1 << 20,
        range: ByteRange::new(0, 1 << 20),
        hop_budget: 0,
    }))
}

async fn raw_peer(addr: SocketAddr, me: &KeyPair, server: &KeyPair) -> PeerConnection {
    PeerConnection::connect(
        addr,
        me,
        &server.public(),
        Hello::new("raw", 0),
        PeerConfig::default(),
    )
    .await
    .unwrap()
}

/// Sends a Negotiate and returns the answer (Commit or Refuse).
async fn ask(conn: &mut PeerConnection, msg: &Message) -> Message {
    conn.send(msg).await.unwrap();
    loop {
        match conn.recv().await.unwrap() {
            Message::Advertise { .. } => continue,
            m => return m,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_targets_are_refused() {
    let (ka, kb) = (key(1), key(2));
    // strict policy: no loopback, no documentation ranges, port 80 only
    let (b, b_addr) = neighbour("B", kb.clone(), &[&ka], ServeConfig::default()).await;
    let mut conn = raw_peer(b_addr, &ka, &kb).await;
    for target in [
        "10.0.0.1:80",
        "127.0.0.1:80",
        "192.168.1.1:80",
        "169.254.1.1:80",
        "203.0.113.5:80",
        "[::1]:80",
    ] {
        let s = SessionKey::random();
        let answer = ask(
            &mut conn,
            &raw_negotiate(s, target.parse().unwrap(), vec![]),
        )
        .await;
        assert_eq!(
            answer,
            Message::Refuse {
                session: s,
                reason: RefuseReason::Target
            },
            "{target}"
        );
    }
    assert_eq!(b.stats().commits, 0);

    // with the lab flag, documentation ranges pass (no fetch happens here)
    let lab = ServeConfig {
        target_policy: TargetPolicy {
            allow_documentation_ranges: true,
            ..TargetPolicy::default()
        },
        ..ServeConfig::default()
    };
    let (_lab, lab_addr) = neighbour("L", kb.clone(), &[&ka], lab).await;
    let mut conn = raw_peer(lab_addr, &ka, &kb).await;
    let s = SessionKey::random();
    let answer = ask(
        &mut conn,
        &raw_negotiate(s, "203.0.113.5:80".parse().unwrap(), vec![]),
    )
    .await;
    assert!(
        matches!(answer, Message::Commit { session, .. } if session == s),
        "{answer:?}"
    );
    let s = SessionKey::random();
    let answer = ask(
        &mut conn,
        &raw_negotiate(s, "127.0.0.1:80".parse().unwrap(), vec![]),
    )
    .await;
    assert!(matches!(
        answer,
        Message::Refuse {
            reason: RefuseReason::Target,
            ..
        }
    ));
    let s = SessionKey::random();
    let answer = ask(
        &mut conn,
        &raw_negotiate(s, "203.0.113.5:8080".parse().unwrap(), vec![]),
    )
    .await;
    assert!(matches!(
        answer,
        Message::Refuse {
            reason: RefuseReason::Target,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_with_only_refusing_peers_fails() {
    let (ka, kb) = (key(1), key(2));
    let (_b, b_addr) = neighbour("B", kb.clone(), &[&ka], ServeConfig::default()).await;
    let a = router_a(ka, &[("B", kb.public(), b_addr)]);
    // origin 10.0.0.1: B refuses it before any connection; A has no local
    // fetcher in this test, so nothing is ever sent there.
    let origin: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let download = Download {
        origin,
        request: request(""),
        validator: Validator::ETag("\"v\"".into()),
        body_length: 1 << 20,
        range: 0..1 << 20,
    };
    let mut s = a
        .open_session(download, session_config(origin, false))
        .unwrap();
    assert_eq!(s.next().await, Err(SessionError::AllSourcesLost));
    assert_eq!(s.stats().sources[0].refused, Some(RefuseReason::Target));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_request_is_not_delegated() {
    let len = 512 << 10;
    let data = content(len, 6);
    let origin = start_origin(data.clone(), None).await;
    let (ka, kb) = (key(1), key(2));
    let (b, b_addr) = neighbour("B", kb.clone(), &[&ka], serve_config(origin.addr)).await;
    let a = router_a(ka.clone(), &[("B", kb.public(), b_addr)]);
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "Cookie: id=secret\r\n",
        session_config(origin.addr, true),
    )
    .await;
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    result.unwrap();
    assert!(buf == data);
    assert!(s.stats().credentials_not_delegated);
    assert_eq!(s.stats().sources.len(), 1, "only the local fetcher");
    assert_eq!(b.stats().negotiations, 0);

    // and a neighbour refuses a Negotiate that carries credentials
    let mut conn = raw_peer(b_addr, &ka, &kb).await;
    for h in ["Cookie", "authorization"] {
        let sk = SessionKey::random();
        let msg = raw_negotiate(sk, origin.addr, vec![(h.into(), "x".into())]);
        assert_eq!(
            ask(&mut conn, &msg).await,
            Message::Refuse {
                session: sk,
                reason: RefuseReason::Credentials
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_session_key_refused_until_cancel() {
    let origin = start_origin(content(1 << 20, 8), None).await;
    let (ka, kb, kc) = (key(1), key(2), key(3));
    let (b, b_addr) = neighbour("B", kb.clone(), &[&ka, &kc], serve_config(origin.addr)).await;
    let s = SessionKey::random();
    let msg = raw_negotiate(s, origin.addr, vec![]);
    let mut first = raw_peer(b_addr, &ka, &kb).await;
    assert!(matches!(
        ask(&mut first, &msg).await,
        Message::Commit { .. }
    ));
    assert!(b.is_committed(&s));
    // same key from another router (overlapping neighbourhoods)
    let mut second = raw_peer(b_addr, &kc, &kb).await;
    assert_eq!(
        ask(&mut second, &msg).await,
        Message::Refuse {
            session: s,
            reason: RefuseReason::DuplicateSession
        }
    );
    // Cancel releases the key; the other router may now commit it
    first.send(&Message::Cancel { session: s }).await.unwrap();
    eventually("release after Cancel", || !b.is_committed(&s)).await;
    assert!(matches!(
        ask(&mut second, &msg).await,
        Message::Commit { .. }
    ));
    // a connection that closes releases its sessions too
    drop(second);
    eventually("release after disconnect", || !b.is_committed(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_session_cancels_and_releases_keys() {
    let len = 4 << 20;
    let origin = start_origin(content(len, 9), Some(500_000)).await;
    let (ka, kb) = (key(1), key(2));
    let (b, b_addr) = neighbour("B", kb.clone(), &[&ka], serve_config(origin.addr)).await;
    let a = router_a(ka, &[("B", kb.public(), b_addr)]);
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "",
        session_config(origin.addr, true),
    )
    .await;
    let first = s.next().await.unwrap();
    assert!(first.is_some());
    let k = s.key();
    // negotiation finished before the first piece was handed out
    assert!(b.is_committed(&k));
    assert!(a.is_committed(&k));
    drop(s);
    eventually("B releases the key", || !b.is_committed(&k)).await;
    eventually("A releases the key", || !a.is_committed(&k)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_neighbour_does_not_disturb_sessions() {
    let len = 1 << 20;
    let data = content(len, 10);
    let origin = start_origin(data.clone(), Some(2_000_000)).await;
    let (ka, kb) = (key(1), key(2));
    let (_b, b_addr) = neighbour("B", kb.clone(), &[&ka], serve_config(origin.addr)).await;
    let a = router_a(ka, &[("B", kb.public(), b_addr)]);
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "",
        session_config(origin.addr, true),
    )
    .await;
    // meanwhile someone throws garbage at B
    let mut raw = TcpStream::connect(b_addr).await.unwrap();
    raw.write_all(&[0xff; 64]).await.unwrap();
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    result.unwrap();
    assert!(buf == data);
    assert!(s.stats().sources[1].bytes > 0);
}

/// How a scripted neighbour answers piece requests.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Commits, then never sends a byte (but keeps the connection alive and
    /// answers PieceCancel as the protocol requires).
    Stall,
    /// Answers every piece with PieceError{Origin}.
    FailPieces,
    /// Answers the first piece with PieceError{ResourceChanged}.
    ResourceChanged,
}

/// A neighbour played by the test itself over the real peer protocol.
/// Returns its address and a counter of PieceCancel messages it received.
async fn scripted_neighbour(
    keys: KeyPair,
    accept: &KeyPair,
    script: Script,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut peers = tandem_peer::PeerSet::new();
    peers.insert(accept.public(), "A");
    let peers = std::sync::Arc::new(peers);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancels = std::sync::Arc::new(AtomicU64::new(0));
    let counter = cancels.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (keys, peers, counter) = (keys.clone(), peers.clone(), counter.clone());
            tokio::spawn(async move {
                let mut conn = PeerConnection::accept(
                    stream,
                    &keys,
                    peers,
                    Hello::new("scripted", 0),
                    PeerConfig::default(),
                )
                .await
                .unwrap();
                while let Ok(m) = conn.recv().await {
                    let reply = match (m, script) {
                        (Message::Negotiate(n), _) => Some(Message::Commit {
                            session: n.session,
                            rate_bps: 80_000_000,
                            parallel: 2,
                        }),
                        (Message::PieceCancel { session, piece }, _) => {
                            counter.fetch_add(1, Ordering::SeqCst);
                            Some(Message::PieceError {
                                session,
                                piece,
                                kind: tandem_peer::PieceErrorKind::Cancelled,
                                detail: String::new(),
                            })
                        }
                        (Message::PieceRequest { .. }, Script::Stall) => None,
                        (Message::PieceRequest { session, piece, .. }, Script::FailPieces) => {
                            Some(Message::PieceError {
                                session,
                                piece,
                                kind: tandem_peer::PieceErrorKind::Origin,
                                detail: "scripted failure".into(),
                            })
                        }
                        (Message::PieceRequest { session, piece, .. }, Script::ResourceChanged) => {
                            Some(Message::PieceError {
                                session,
                                piece,
                                kind: tandem_peer::PieceErrorKind::ResourceChanged,
                                detail: "scripted change".into(),
                            })
                        }
                        _ => None,
                    };
                    if let Some(r) = reply {
                        if conn.send(&r).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    (addr, cancels)
}

async fn run_with_scripted(
    script: Script,
    data: &[u8],
) -> (Session, Result<(), SessionError>, Vec<u8>, u64) {
    let len = data.len();
    let origin = start_origin(data.to_vec(), Some(2_000_000)).await;
    let (ka, kb) = (key(1), key(2));
    let (addr, cancels) = scripted_neighbour(kb.clone(), &ka, script).await;
    let a = router_a(ka, &[("S", kb.public(), addr)]);
    let mut cfg = session_config(origin.addr, true);
    cfg.planner.stall_timeout = Duration::from_millis(300);
    let mut s = open(&a, origin.addr, len as u64, "", cfg).await;
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    let n = cancels.load(std::sync::atomic::Ordering::SeqCst);
    (s, result, buf, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peer_pieces_are_reassigned() {
    let data = content(1 << 20, 11);
    let (s, result, buf, cancels) = run_with_scripted(Script::Stall, &data).await;
    result.unwrap();
    assert!(buf == data);
    let stats = s.stats();
    assert!(stats.sources[1].committed);
    assert_eq!(stats.sources[1].bytes, 0);
    assert!(stats.stalls >= 1, "{stats:?}");
    assert!(cancels >= 1, "the stalled peer was told to stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_peer_pieces_are_reassigned() {
    let data = content(1 << 20, 12);
    let (s, result, buf, _) = run_with_scripted(Script::FailPieces, &data).await;
    result.unwrap();
    assert!(buf == data);
    assert_eq!(s.stats().sources[1].bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_changed_from_a_peer_aborts_the_session() {
    let data = content(1 << 20, 13);
    let (_s, result, _, _) = run_with_scripted(Script::ResourceChanged, &data).await;
    assert_eq!(
        result,
        Err(SessionError::ResourceChanged { by: "S".into() })
    );
}

/// A router that accepts `accepts` and may delegate to `delegates`,
/// serving on an already bound listener.
fn relay_node(
    name: &str,
    keys: KeyPair,
    accepts: &[&KeyPair],
    delegates: &[(&str, tandem_peer::PublicKey, SocketAddr)],
    serve: ServeConfig,
    listener: TcpListener,
) -> Node {
    let mut neighbours: Vec<NeighbourConfig> = accepts
        .iter()
        .enumerate()
        .map(|(i, k)| NeighbourConfig {
            name: format!("in{i}"),
            key: k.public(),
            addr: None,
            link_bps: 0,
        })
        .collect();
    for (n, k, a) in delegates {
        neighbours.retain(|x| x.key != *k);
        neighbours.push(NeighbourConfig {
            name: (*n).to_owned(),
            key: *k,
            addr: Some(*a),
            link_bps: 0,
        });
    }
    let mut cfg = NodeConfig::new(name, keys, neighbours);
    cfg.serve = serve;
    let node = Node::new(cfg);
    let n = node.clone();
    tokio::spawn(async move { n.serve(listener).await });
    node
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_a_b_c_sub_delegates_through_b() {
    let len = 3 << 20;
    let data = content(len, 14);
    let origin = start_origin(data.clone(), Some(1_000_000)).await;
    let (ka, kb, kc) = (key(1), key(2), key(3));
    let ((lb, b_addr), (lc, c_addr)) = (bind().await, bind().await);
    // C only knows B; B accepts A and may delegate to C; A only knows B.
    let c = relay_node("C", kc.clone(), &[&kb], &[], serve_config(origin.addr), lc);
    let b = relay_node(
        "B",
        kb.clone(),
        &[&ka],
        &[("C", kc.public(), c_addr)],
        serve_config(origin.addr),
        lb,
    );
    let a = router_a(ka, &[("B", kb.public(), b_addr)]);
    let mut cfg = session_config(origin.addr, true);
    cfg.hop_budget = 1;
    let mut s = open(&a, origin.addr, len as u64, "", cfg).await;
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    result.unwrap();
    assert!(buf == data, "reassembled body differs");
    assert_eq!(b.stats().commits, 1);
    assert_eq!(c.stats().commits, 1);
    assert!(
        c.stats().pieces_requested > 0,
        "C served nothing: {:?}",
        c.stats()
    );
    let k = s.key();
    drop(s);
    for node in [&a, &b, &c] {
        eventually("release down the tree", || !node.is_committed(&k)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_neighbourhoods_commit_once_per_router() {
    let len = 2 << 20;
    let data = content(len, 15);
    let origin = start_origin(data.clone(), Some(1_500_000)).await;
    let (ka, kb, kc) = (key(1), key(2), key(3));
    let ((lb, b_addr), (lc, c_addr)) = (bind().await, bind().await);
    // A knows B and C; B and C know each other and accept A.
    let b = relay_node(
        "B",
        kb.clone(),
        &[&ka, &kc],
        &[("C", kc.public(), c_addr)],
        serve_config(origin.addr),
        lb,
    );
    let c = relay_node(
        "C",
        kc.clone(),
        &[&ka, &kb],
        &[("B", kb.public(), b_addr)],
        serve_config(origin.addr),
        lc,
    );
    let a = router_a(
        ka,
        &[("B", kb.public(), b_addr), ("C", kc.public(), c_addr)],
    );
    let mut cfg = session_config(origin.addr, true);
    cfg.hop_budget = 2;
    let mut s = open(&a, origin.addr, len as u64, "", cfg).await;
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    result.unwrap();
    assert!(buf == data, "reassembled body differs");
    // each router committed to the session exactly once, whichever path
    // reached it first; the other path was refused as a duplicate
    assert_eq!(b.stats().commits, 1, "{:?}", b.stats());
    assert_eq!(c.stats().commits, 1, "{:?}", c.stats());
    assert!(b.stats().refusals + c.stats().refusals >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbour_share_of_the_uplink_is_capped() {
    let len = 1 << 20;
    let data = content(len, 16);
    let origin = start_origin(data.clone(), None).await;
    let (ka, kb) = (key(1), key(2));
    // 8 Mbit/s uplink, half of it for neighbours: 500 000 B/s.
    let serve = ServeConfig {
        uplink_bps: 8_000_000,
        neighbour_share: 0.5,
        ..serve_config(origin.addr)
    };
    let (_b, b_addr) = neighbour("B", kb.clone(), &[&ka], serve).await;
    let a = router_a(ka, &[("B", kb.public(), b_addr)]);
    // neighbours only, so every byte crosses B's cap
    let mut s = open(
        &a,
        origin.addr,
        len as u64,
        "",
        session_config(origin.addr, false),
    )
    .await;
    let t0 = tokio::time::Instant::now();
    let (buf, _, result) = collect(&mut s, len, |_| {}).await;
    let elapsed = t0.elapsed();
    result.unwrap();
    assert!(buf == data);
    // One-sided bound (a slow machine only makes it slower): 1 MiB less the
    // 64 KiB burst at 500 000 B/s takes at least 1.96 s.
    assert!(
        elapsed >= Duration::from_millis(1900),
        "cap not applied: {elapsed:?}"
    );
    println!("1 MiB through a 500 kB/s neighbour cap took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_caller_keeps_its_peers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let len = 2 << 20;
    let data = content(len, 17);
    let origin = start_origin(data.clone(), Some(2_000_000)).await;
    let (ka, kb) = (key(1), key(2));
    // short peer timers: a peer silent for 400 ms is dropped
    let timers = PeerConfig {
        keepalive_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(400),
        handshake_timeout: Duration::from_secs(10),
    };
    let (lb, b_addr) = bind().await;
    let mut bcfg = NodeConfig::new(
        "B",
        kb.clone(),
        vec![NeighbourConfig {
            name: "A".into(),
            key: ka.public(),
            addr: None,
            link_bps: 0,
        }],
    );
    bcfg.serve = serve_config(origin.addr);
    bcfg.peer = timers;
    let b = Node::new(bcfg);
    let bn = b.clone();
    tokio::spawn(async move { bn.serve(lb).await });
    let mut acfg = NodeConfig::new(
        "A",
        ka,
        vec![NeighbourConfig {
            name: "B".into(),
            key: kb.public(),
            addr: Some(b_addr),
            link_bps: 0,
        }],
    );
    acfg.peer = timers;
    let a = Node::new(acfg);
    // a small hand-off channel and a window larger than the body: the
    // session task and the peer tasks really block while the caller sleeps
    let mut cfg = session_config(origin.addr, true);
    cfg.channel_capacity = 2;
    cfg.planner.window = 8 << 20;
    let mut s = open(&a, origin.addr, len as u64, "", cfg).await;
    let mut buf = vec![0u8; len];
    let mut got = RangeSet::new();
    let mut paused = false;
    while let Some(c) = s.next().await.unwrap() {
        let r = c.offset..c.offset + c.bytes.len() as u64;
        buf[r.start as usize..r.end as usize].copy_from_slice(&c.bytes);
        got.insert(r);
        s.delivered(got.contiguous_end(0));
        if !paused && got.len() >= 256 << 10 {
            // the client stops reading for a while (5 idle timeouts)
            paused = true;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    assert!(buf == data);
    let stats = s.stats();
    assert_eq!(stats.sources[1].gone, None, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_delegate_killed_behind_a_relay() {
    let len = 3 << 20;
    let data = content(len, 18);
    let origin = start_origin(data.clone(), Some(1_000_000)).await;
    let (ka, kb, kc) = (key(1), key(2), key(3));
    let ((lb, b_addr), (lc, c_addr)) = (bind().await, bind().await);
    let c = relay_node("C", kc.clone(), &[&kb], &[], serve_config(origin.addr), lc);
    let _b = relay_node(
        "B",
        kb.clone(),
        &[&ka],
        &[("C", kc.public(), c_addr)],
        serve_config(origin.addr),
        lb,
    );
    let a = router_a(ka, &[("B", kb.public(), b_addr)]);
    let mut cfg = session_config(origin.addr, true);
    cfg.hop_budget = 1;
    let mut s = open(&a, origin.addr, len as u64, "", cfg).await;
    let mut killed = false;
    let (buf, _, result) = collect(&mut s, len, |received| {
        if !killed && received >= 1 << 20 {
            c.shutdown();
            killed = true;
        }
    })
    .await;
    result.unwrap();
    assert!(killed);
    assert!(buf == data, "reassembled body differs");
    // B itself stayed a source for A
    let stats = s.stats();
    let b = stats.sources.iter().find(|x| x.name == "B").unwrap();
    assert!(b.gone.is_none() && b.bytes > 0, "{stats:?}");
}
