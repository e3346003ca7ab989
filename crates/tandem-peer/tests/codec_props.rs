//! Property tests: the codec never panics on arbitrary bytes, and every
//! valid message survives an encode/decode round trip (also sealed through
//! a real Noise session).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;
use tandem_peer::{
    ByteRange, Config, Connection, Event, FrameDecoder, Hello, KeyPair, MAX_CHUNK, Message,
    Negotiate, PeerSet, PieceErrorKind, RefuseReason, SessionKey, Validator,
};

fn session() -> impl Strategy<Value = SessionKey> {
    any::<[u8; 16]>().prop_map(SessionKey)
}

fn range() -> impl Strategy<Value = ByteRange> {
    (0u64..1 << 40, 1u64..1 << 30).prop_map(|(s, l)| ByteRange::new(s, s + l))
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).unwrap()
}

fn negotiate() -> impl Strategy<Value = Message> {
    (
        session(),
        (any::<std::net::IpAddr>(), any::<u16>()).prop_map(SocketAddr::from),
        text(40),
        text(60).prop_map(|t| format!("/{t}")),
        proptest::collection::vec(("[A-Za-z-]{1,20}", text(40)), 0..5),
        prop_oneof![
            text(30).prop_map(|t| Validator::ETag(format!("\"{t}\""))),
            "[A-Za-z0-9 ,:]{1,30}".prop_map(Validator::LastModified),
        ],
        range(),
        any::<u64>(),
        any::<u8>(),
    )
        .prop_map(
            |(session, origin, host, target, headers, validator, range, extra, hop)| {
                Message::Negotiate(Box::new(Negotiate {
                    session,
                    origin,
                    host,
                    target,
                    headers,
                    validator,
                    body_length: range.end.saturating_add(extra % (1 << 20)),
                    range,
                    hop_budget: hop,
                }))
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u64>().prop_map(|rate_bps| Message::Advertise { rate_bps }),
        negotiate(),
        (session(), any::<u64>(), any::<u16>()).prop_map(|(session, rate_bps, parallel)| {
            Message::Commit {
                session,
                rate_bps,
                parallel,
            }
        }),
        (session(), 0usize..7).prop_map(|(session, r)| Message::Refuse {
            session,
            reason: [
                RefuseReason::DuplicateSession,
                RefuseReason::Target,
                RefuseReason::Credentials,
                RefuseReason::Capacity,
                RefuseReason::Unsupported,
                RefuseReason::ShuttingDown,
                RefuseReason::Internal,
            ][r],
        }),
        session().prop_map(|session| Message::Cancel { session }),
        (session(), any::<u64>(), range()).prop_map(|(session, piece, range)| {
            Message::PieceRequest {
                session,
                piece,
                range,
            }
        }),
        (
            session(),
            any::<u64>(),
            0u64..1 << 50,
            proptest::collection::vec(any::<u8>(), 1..=MAX_CHUNK)
        )
            .prop_map(|(session, piece, offset, bytes)| Message::PieceData {
                session,
                piece,
                offset,
                bytes: Bytes::from(bytes),
            }),
        (session(), any::<u64>()).prop_map(|(session, piece)| Message::PieceEnd { session, piece }),
        (session(), any::<u64>(), 0usize..6, text(100)).prop_map(|(session, piece, k, detail)| {
            Message::PieceError {
                session,
                piece,
                kind: [
                    PieceErrorKind::ResourceChanged,
                    PieceErrorKind::Origin,
                    PieceErrorKind::Refused,
                    PieceErrorKind::Timeout,
                    PieceErrorKind::Cancelled,
                    PieceErrorKind::Internal,
                ][k],
                detail,
            }
        }),
        (session(), any::<u64>())
            .prop_map(|(session, piece)| Message::PieceCancel { session, piece }),
        Just(Message::Keepalive),
    ]
}

fn established_pair() -> (Connection, Connection) {
    let now = Instant::now();
    let (ka, kb) = (
        KeyPair::from_private([7; 32]).unwrap(),
        KeyPair::from_private([8; 32]).unwrap(),
    );
    let mut peers = PeerSet::new();
    peers.insert(ka.public(), "a");
    let mut a = Connection::new_initiator(
        now,
        &ka,
        &kb.public(),
        Hello::new("a", 0),
        Config::default(),
    )
    .unwrap();
    let mut b = Connection::new_responder(
        now,
        &kb,
        Arc::new(peers),
        Hello::new("b", 0),
        Config::default(),
    )
    .unwrap();
    let m1 = a.pending_output().to_vec();
    a.advance_output(m1.len());
    b.handle_input(now, &m1).unwrap();
    let m2 = b.pending_output().to_vec();
    b.advance_output(m2.len());
    a.handle_input(now, &m2).unwrap();
    assert!(matches!(a.poll_event(), Some(Event::Connected(_))));
    assert!(matches!(b.poll_event(), Some(Event::Connected(_))));
    (a, b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frame_decoder_never_panics(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut dec = FrameDecoder::new();
        'outer: for c in &chunks {
            dec.extend(c);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => { let _ = Message::decode(&f); }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn message_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(m) = Message::decode(&bytes) {
            // anything accepted is valid and re-encodable
            prop_assert!(m.validate().is_ok());
            prop_assert!(m.encode().is_ok());
        }
    }

    #[test]
    fn message_round_trip(m in message()) {
        let enc = m.encode().unwrap();
        prop_assert_eq!(Message::decode(&enc).unwrap(), m);
    }

    #[test]
    fn responder_survives_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let kb = KeyPair::from_private([8; 32]).unwrap();
        let mut b = Connection::new_responder(
            Instant::now(), &kb, Arc::new(PeerSet::new()), Hello::new("b", 0), Config::default(),
        ).unwrap();
        let _ = b.handle_input(Instant::now(), &bytes);
        prop_assert!(b.poll_event().is_none());
    }

    #[test]
    fn established_connection_survives_arbitrary_input(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (_a, mut b) = established_pair();
        let _ = b.handle_input(Instant::now(), &bytes);
        // Random bytes never authenticate.
        prop_assert!(b.poll_event().is_none());
    }

    #[test]
    fn sealed_round_trip_and_truncation(m in message(), cut in any::<prop::sample::Index>()) {
        // A fresh rule table delivers only session-less messages (and
        // Negotiate); the others must close the connection with a violation.
        let (mut a, mut b) = established_pair();
        let now = Instant::now();
        a.send_unchecked(now, &m).unwrap();
        let wire = a.pending_output().to_vec();
        // feeding any strict prefix yields nothing and no error
        let k = cut.index(wire.len());
        let mut dec = FrameDecoder::new();
        dec.extend(&wire[..k]);
        prop_assert!(dec.next_frame().unwrap().is_none());
        // the whole frame decrypts and decodes to the same message or a
        // state-rule violation, never anything else
        match b.handle_input(now, &wire) {
            Ok(()) => match b.poll_event() {
                Some(Event::Message(got)) => prop_assert_eq!(got, m),
                None => {
                    let silent = matches!(m, Message::Keepalive | Message::Cancel { .. });
                    prop_assert!(silent, "message {:?} vanished", m);
                }
                Some(other) => prop_assert!(false, "unexpected {:?}", other),
            },
            Err(e) => prop_assert!(
                matches!(e, tandem_peer::ConnectionError::Violation(_)),
                "unexpected error {:?}", e
            ),
        }
    }
}
