//! Fuzzes the receive path below the cipher: the frame decoder over an
//! arbitrary byte stream split at arbitrary points, the strict message
//! decoder on every frame body, and a responder connection fed the raw
//! stream (handshake parsing of garbage).
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem_peer::{Config, Connection, FrameDecoder, Hello, KeyPair, Message, PeerSet};

fuzz_target!(|data: &[u8]| {
    // First byte picks the read size, like a socket returning short reads.
    let (step, stream) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => return,
    };
    let mut dec = FrameDecoder::new();
    'feed: for chunk in stream.chunks(step) {
        dec.extend(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => {
                    if let Ok(msg) = Message::decode(&body) {
                        // Anything accepted must be valid and re-encodable
                        // to the same value.
                        let enc = msg.encode().expect("accepted message re-encodes");
                        assert_eq!(Message::decode(&enc).expect("round trip"), msg);
                    }
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        assert!(dec.buffered() <= tandem_peer::MAX_FRAME_LEN + 4 + step);
    }
    // Message decoder directly on the raw input too.
    let _ = Message::decode(stream);

    let key = KeyPair::from_private([9; 32]).expect("key");
    let mut conn = Connection::new_responder(
        Instant::now(),
        &key,
        Arc::new(PeerSet::new()),
        Hello::new("fuzz", 0),
        Config::default(),
    )
    .expect("responder");
    let _ = conn.handle_input(Instant::now(), stream);
    assert!(conn.poll_event().is_none());
});
