//! Loopback tests of the tokio adapter: real TCP sockets on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_peer::{
    ByteRange, Config, Connection, ConnectionError, Event, FrameError, Hello, KeyPair, MAX_CHUNK,
    Message, Negotiate, PeerConnection, PeerError, PeerSet, SessionKey, Validator, Violation,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn key(n: u8) -> KeyPair {
    KeyPair::from_private([n; 32]).unwrap()
}

/// Body byte at `offset` of the synthetic resource.
fn body_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 8)) as u8
}

/// A test server: accepts peers listed in `peers`, answers Advertise with
/// rate+1, commits every Negotiate, serves PieceRequests with synthetic
/// bytes. Reports how each connection ended.
async fn spawn_server(
    keys: KeyPair,
    peers: PeerSet,
) -> (SocketAddr, mpsc::UnboundedReceiver<PeerError>) {
    spawn_server_with(keys, peers, Config::default()).await
}

async fn spawn_server_with(
    keys: KeyPair,
    peers: PeerSet,
    config: Config,
) -> (SocketAddr, mpsc::UnboundedReceiver<PeerError>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let peers = Arc::new(peers);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let keys = keys.clone();
            let peers = peers.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let err = serve(stream, keys, peers, config).await;
                let _ = tx.send(err);
            });
        }
    });
    (addr, rx)
}

async fn serve(stream: TcpStream, keys: KeyPair, peers: Arc<PeerSet>, config: Config) -> PeerError {
    let mut conn =
        match PeerConnection::accept(stream, &keys, peers, Hello::new("server", 0), config).await {
            Ok(c) => c,
            Err(e) => return e,
        };
    loop {
        let msg = match conn.recv().await {
            Ok(m) => m,
            Err(e) => return e,
        };
        let replies: Vec<Message> = match msg {
            Message::Advertise { rate_bps } => vec![Message::Advertise {
                rate_bps: rate_bps + 1,
            }],
            Message::Negotiate(n) => vec![Message::Commit {
                session: n.session,
                rate_bps: 1000,
                parallel: 2,
            }],
            Message::PieceRequest {
                session,
                piece,
                range,
            } => {
                let mut v = Vec::new();
                let mut off = range.start;
                while off < range.end {
                    let end = (off + MAX_CHUNK as u64).min(range.end);
                    let bytes: Vec<u8> = (off..end).map(body_byte).collect();
                    v.push(Message::PieceData {
                        session,
                        piece,
                        offset: off,
                        bytes: Bytes::from(bytes),
                    });
                    off = end;
                }
                v.push(Message::PieceEnd { session, piece });
                v
            }
            _ => vec![],
        };
        for r in replies {
            if let Err(e) = conn.send(&r).await {
                return e;
            }
        }
    }
}

fn negotiate(session: SessionKey, body_length: u64) -> Message {
    Message::Negotiate(Box::new(Negotiate {
        session,
        origin: "203.0.113.10:80".parse().unwrap(),
        host: "example.org".into(),
        target: "/file.bin".into(),
        headers: vec![("User-Agent".into(), "test".into())],
        validator: Validator::ETag("\"abc\"".into()),
        body_length,
        range: ByteRange::new(0, body_length),
        hop_budget: 0,
    }))
}

fn server_peers(clients: &[&KeyPair]) -> PeerSet {
    let mut set = PeerSet::new();
    for (i, c) in clients.iter().enumerate() {
        set.insert(c.public(), format!("client{i}"));
    }
    set
}

async fn connect(
    addr: SocketAddr,
    me: &KeyPair,
    server: &KeyPair,
) -> Result<PeerConnection, PeerError> {
    PeerConnection::connect(
        addr,
        me,
        &server.public(),
        Hello::new("client", 0),
        Config::default(),
    )
    .await
}

/// Checks a connection still works end to end: negotiate and fetch a piece
/// of 100 000 bytes (several chunks).
async fn exercise(conn: &mut PeerConnection) {
    conn.send(&Message::Advertise { rate_bps: 41 })
        .await
        .unwrap();
    assert_eq!(
        conn.recv().await.unwrap(),
        Message::Advertise { rate_bps: 42 }
    );
    let s = SessionKey::random();
    conn.send(&negotiate(s, 1_000_000)).await.unwrap();
    assert!(matches!(conn.recv().await.unwrap(), Message::Commit { session, .. } if session == s));
    let range = ByteRange::new(12_345, 112_345);
    conn.send(&Message::PieceRequest {
        session: s,
        piece: 1,
        range,
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    loop {
        match conn.recv().await.unwrap() {
            Message::PieceData { offset, bytes, .. } => {
                assert_eq!(offset, range.start + got.len() as u64);
                assert!(bytes.len() <= MAX_CHUNK);
                got.extend_from_slice(&bytes);
            }
            Message::PieceEnd { piece: 1, .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: Vec<u8> = (range.start..range.end).map(body_byte).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn handshake_and_piece_transfer() {
    let (server, client) = (key(1), key(2));
    let (addr, _errors) = spawn_server(server.clone(), server_peers(&[&client])).await;
    let mut conn = connect(addr, &client, &server).await.unwrap();
    assert_eq!(conn.peer().key, server.public());
    assert_eq!(conn.peer().hello.node_name, "server");
    exercise(&mut conn).await;
}

#[tokio::test]
async fn unknown_client_key_is_refused() {
    let (server, client, stranger) = (key(1), key(2), key(3));
    let (addr, mut errors) = spawn_server(server.clone(), server_peers(&[&client])).await;
    let res = connect(addr, &stranger, &server).await;
    assert!(res.is_err(), "stranger must not connect");
    let err = errors.recv().await.unwrap();
    assert!(
        matches!(err, PeerError::Connection(ConnectionError::UnknownPeer(k)) if k == stranger.public()),
        "{err:?}"
    );
    // the listed client still gets in
    let mut conn = connect(addr, &client, &server).await.unwrap();
    exercise(&mut conn).await;
}

#[tokio::test]
async fn wrong_responder_key_is_refused() {
    let (server, client, impostor_expectation) = (key(1), key(2), key(4));
    let (addr, mut errors) = spawn_server(server.clone(), server_peers(&[&client])).await;
    // the client believes the server holds another key
    let res = connect(addr, &client, &impostor_expectation).await;
    assert!(res.is_err());
    let err = errors.recv().await.unwrap();
    assert!(
        matches!(err, PeerError::Connection(ConnectionError::Handshake(_))),
        "{err:?}"
    );
}

/// Raw bytes are sent on a fresh TCP connection; the server must close that
/// connection with `expect` while other peers keep working.
async fn garbage_closes_only_that_connection(garbage: Vec<u8>, expect: fn(&PeerError) -> bool) {
    let (server, client) = (key(1), key(2));
    let (addr, mut errors) = spawn_server(server.clone(), server_peers(&[&client])).await;
    let mut good = connect(addr, &client, &server).await.unwrap();

    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&garbage).await.unwrap();
    let mut buf = [0u8; 64];
    // the server closes: EOF or reset, never a reply
    let n = tokio::time::timeout(Duration::from_secs(20), raw.read(&mut buf))
        .await
        .expect("server must close the connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let err = errors.recv().await.unwrap();
    assert!(expect(&err), "{err:?}");

    exercise(&mut good).await;
    let mut again = connect(addr, &client, &server).await.unwrap();
    exercise(&mut again).await;
}

#[tokio::test]
async fn oversized_frame_closes_connection() {
    let mut g = 0x0010_0000u32.to_be_bytes().to_vec();
    g.extend_from_slice(&[0u8; 32]);
    garbage_closes_only_that_connection(g, |e| {
        matches!(
            e,
            PeerError::Connection(ConnectionError::Frame(FrameError::Oversized(0x0010_0000)))
        )
    })
    .await;
}

#[tokio::test]
async fn random_bytes_close_connection() {
    // deterministic xorshift garbage with a plausible frame length
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut g = vec![0, 0, 0, 200];
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        g.push(x as u8);
    }
    garbage_closes_only_that_connection(g, |e| {
        matches!(e, PeerError::Connection(ConnectionError::Handshake(_)))
    })
    .await;
}

/// Drives a sans-IO core over a raw socket to complete the handshake, so
/// the test can then send frames a well-behaved `PeerConnection` refuses to.
async fn raw_established(
    addr: SocketAddr,
    me: &KeyPair,
    server: &KeyPair,
) -> (TcpStream, Connection) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut core = Connection::new_initiator(
        Instant::now(),
        me,
        &server.public(),
        Hello::new("raw", 0),
        Config::default(),
    )
    .unwrap();
    stream.write_all(core.pending_output()).await.unwrap();
    let n = core.pending_output().len();
    core.advance_output(n);
    let mut buf = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        core.handle_input(Instant::now(), &buf[..n]).unwrap();
        if let Some(Event::Connected(_)) = core.poll_event() {
            return (stream, core);
        }
    }
}

async fn flush_raw(stream: &mut TcpStream, core: &mut Connection) {
    stream.write_all(core.pending_output()).await.unwrap();
    let n = core.pending_output().len();
    core.advance_output(n);
}

#[tokio::test]
async fn out_of_order_message_closes_connection() {
    let (server, client) = (key(1), key(2));
    let (addr, mut errors) = spawn_server(server.clone(), server_peers(&[&client])).await;
    let (mut stream, mut core) = raw_established(addr, &client, &server).await;
    // a PieceRequest for a session that was never negotiated
    core.send_unchecked(
        Instant::now(),
        &Message::PieceRequest {
            session: SessionKey([5; 16]),
            piece: 1,
            range: ByteRange::new(0, 10),
        },
    )
    .unwrap();
    flush_raw(&mut stream, &mut core).await;
    let err = errors.recv().await.unwrap();
    assert!(
        matches!(
            err,
            PeerError::Connection(ConnectionError::Violation(Violation::UnknownSession { .. }))
        ),
        "{err:?}"
    );
    let mut buf = [0u8; 16];
    assert_eq!(stream.read(&mut buf).await.unwrap_or(0), 0);
}

#[tokio::test]
async fn hello_after_handshake_and_garbage_after_handshake_close_connection() {
    let (server, client) = (key(1), key(2));
    let (addr, mut errors) = spawn_server(server.clone(), server_peers(&[&client])).await;

    let (mut stream, mut core) = raw_established(addr, &client, &server).await;
    core.send_unchecked(Instant::now(), &Message::Hello(Hello::new("again", 0)))
        .unwrap();
    flush_raw(&mut stream, &mut core).await;
    let err = errors.recv().await.unwrap();
    assert!(
        matches!(
            err,
            PeerError::Connection(ConnectionError::Violation(Violation::HelloAfterHandshake))
        ),
        "{err:?}"
    );

    let (mut stream, _core) = raw_established(addr, &client, &server).await;
    let mut frame = 40u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xaa; 40]);
    stream.write_all(&frame).await.unwrap();
    let err = errors.recv().await.unwrap();
    assert!(
        matches!(err, PeerError::Connection(ConnectionError::Decrypt)),
        "{err:?}"
    );

    let mut good = connect(addr, &client, &server).await.unwrap();
    exercise(&mut good).await;
}

#[tokio::test]
async fn keepalives_keep_a_quiet_connection_alive() {
    let (server, client) = (key(1), key(2));
    // Generous ratio (keepalive every 50 ms, idle timeout 3 s) so a slow
    // machine cannot make this flaky.
    let config = Config {
        keepalive_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_secs(3),
        handshake_timeout: Duration::from_secs(10),
    };
    let (addr, _errors) = spawn_server_with(server.clone(), server_peers(&[&client]), config).await;
    let mut conn = PeerConnection::connect(
        addr,
        &client,
        &server.public(),
        Hello::new("client", 0),
        config,
    )
    .await
    .unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(4), conn.recv()).await;
    assert!(quiet.is_err(), "no message expected, got {quiet:?}");
    assert!(!conn.is_closed());
    exercise(&mut conn).await;
}

#[tokio::test]
async fn silent_peer_hits_idle_timeout() {
    let (server, client) = (key(1), key(2));
    let config = Config {
        idle_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (addr, mut errors) =
        spawn_server_with(server.clone(), server_peers(&[&client]), config).await;
    // completes the handshake, then never sends a byte
    let (_stream, _core) = raw_established(addr, &client, &server).await;
    let err = errors.recv().await.unwrap();
    assert!(
        matches!(err, PeerError::Connection(ConnectionError::IdleTimeout)),
        "{err:?}"
    );
}

#[tokio::test]
async fn silent_tcp_peer_hits_handshake_timeout() {
    let (server, client) = (key(1), key(2));
    let config = Config {
        handshake_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let (addr, mut errors) =
        spawn_server_with(server.clone(), server_peers(&[&client]), config).await;
    let _raw = TcpStream::connect(addr).await.unwrap();
    let err = errors.recv().await.unwrap();
    assert!(
        matches!(
            err,
            PeerError::Connection(ConnectionError::HandshakeTimeout)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn local_rule_violation_does_not_close_connection() {
    let (server, client) = (key(1), key(2));
    let (addr, _errors) = spawn_server(server.clone(), server_peers(&[&client])).await;
    let mut conn = connect(addr, &client, &server).await.unwrap();
    let err = conn
        .send(&Message::PieceRequest {
            session: SessionKey([1; 16]),
            piece: 0,
            range: ByteRange::new(0, 1),
        })
        .await
        .unwrap_err();
    assert!(!err.is_fatal());
    exercise(&mut conn).await;
}

#[tokio::test]
async fn keep_alive_holds_the_connection_while_the_application_is_busy() {
    let (server, client) = (key(1), key(2));
    // the server drops a peer silent for 400 ms
    let config = Config {
        keepalive_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(400),
        handshake_timeout: Duration::from_secs(10),
    };
    let (addr, mut errors) =
        spawn_server_with(server.clone(), server_peers(&[&client]), config).await;
    let mut conn = PeerConnection::connect(
        addr,
        &client,
        &server.public(),
        Hello::new("client", 0),
        config,
    )
    .await
    .unwrap();
    let s = SessionKey::random();
    conn.send(&negotiate(s, 1_000_000)).await.unwrap();
    assert!(matches!(conn.recv().await.unwrap(), Message::Commit { .. }));
    conn.send(&Message::PieceRequest {
        session: s,
        piece: 9,
        range: ByteRange::new(0, 200_000),
    })
    .await
    .unwrap();
    // busy for 5 idle timeouts: read nothing, but keep the link alive
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(2)) => {}
        e = conn.keep_alive() => panic!("keep_alive failed: {e}"),
    }
    // everything the server sent meanwhile is still there, in order
    let mut next = 0u64;
    loop {
        match conn.recv().await.unwrap() {
            Message::PieceData { offset, bytes, .. } => {
                assert_eq!(offset, next);
                next += bytes.len() as u64;
            }
            Message::PieceEnd { piece: 9, .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(next, 200_000);
    exercise(&mut conn).await;
    assert!(errors.try_recv().is_err(), "the server dropped a live peer");
}
