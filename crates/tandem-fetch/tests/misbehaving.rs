//! RangeFetcher against small hand-rolled servers that misbehave in one
//! way each.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tandem_fetch::{FetchError, FetchErrorClass, Phase, RangeFetcher};
use tandem_http::ContentRange;

const ETAG: &str = "\"v1\"";
const LEN: usize = 10_000;

/// A fetcher with the default (10 s) idle timeout: tests that do not
/// expect a timeout never depend on the machine's speed.
fn fetcher(addr: std::net::SocketAddr) -> RangeFetcher {
    RangeFetcher::new(resource_for(addr, LEN as u64, ETAG), loopback_config(addr)).unwrap()
}

/// A fetcher that gives up after 300 ms without a byte, for the stall
/// tests (the servers there never send again, so the outcome does not
/// depend on timing).
fn impatient_fetcher(addr: std::net::SocketAddr) -> RangeFetcher {
    let mut cfg = loopback_config(addr);
    cfg.idle_timeout = Duration::from_millis(300);
    RangeFetcher::new(resource_for(addr, LEN as u64, ETAG), cfg).unwrap()
}

#[tokio::test]
async fn sends_the_expected_range_request() {
    let body = data(LEN, 20);
    let b = body.clone();
    let srv = hand_rolled(move |_, f, l| (good_206(&b, f, l, ETAG), Then::KeepOpen)).await;
    let mut f = fetcher(srv.addr);
    let mut got = Vec::new();
    f.fetch_with(100..200, |_, c| got.extend_from_slice(c))
        .await
        .unwrap();
    assert_eq!(got, &body[100..200]);
    let log = srv.log.lock().unwrap().clone();
    let req = &log[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.target, "/file.bin");
    assert_eq!(req.version, 1);
    assert_eq!(req.headers.get_str("host"), Some("origin.test"));
    assert_eq!(req.headers.get_str("range"), Some("bytes=100-199"));
    assert_eq!(req.headers.get_str("if-range"), Some(ETAG));
    assert_eq!(req.headers.get_str("accept-encoding"), Some("identity"));
    assert_eq!(req.headers.get_str("user-agent"), Some("tandem-test"));
    assert_eq!(req.headers.get_str("connection"), Some("keep-alive"));
    assert!(
        !req.headers.contains("cookie"),
        "client's Cookie must not be forwarded"
    );
}

#[tokio::test]
async fn wrong_start_is_a_content_range_mismatch() {
    let body = data(LEN, 21);
    let srv = hand_rolled(move |_, f, l| (good_206(&body, f + 1, l, ETAG), Then::KeepOpen)).await;
    let e = fetcher(srv.addr).fetch(100..200).await.unwrap_err();
    match &e {
        FetchError::ContentRangeMismatch {
            expected,
            expected_total,
            got,
        } => {
            assert_eq!(*expected, 100..200);
            assert_eq!(*expected_total, LEN as u64);
            assert_eq!(
                *got,
                Some(ContentRange {
                    first: 101,
                    last: 199,
                    complete_len: Some(LEN as u64)
                })
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(e.class(), FetchErrorClass::Protocol);
}

#[tokio::test]
async fn wrong_end_is_a_content_range_mismatch() {
    let body = data(LEN, 22);
    let srv = hand_rolled(move |_, f, l| (good_206(&body, f, l + 5, ETAG), Then::KeepOpen)).await;
    let e = fetcher(srv.addr).fetch(100..200).await.unwrap_err();
    assert!(matches!(e, FetchError::ContentRangeMismatch { .. }), "{e}");
    assert_eq!(e.class(), FetchErrorClass::Protocol);
}

#[tokio::test]
async fn wrong_total_length_means_resource_changed() {
    let body = data(LEN + 1, 23);
    let srv = hand_rolled(move |_, f, l| (good_206(&body, f, l, ETAG), Then::KeepOpen)).await;
    let e = fetcher(srv.addr).fetch(100..200).await.unwrap_err();
    assert!(matches!(e, FetchError::ContentRangeMismatch { .. }), "{e}");
    assert_eq!(e.class(), FetchErrorClass::ResourceChanged);
}

#[tokio::test]
async fn missing_or_malformed_content_range() {
    for head in [
        "HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\r\n",
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199\r\nContent-Length: 100\r\n\r\n",
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199/10000\r\nContent-Range: bytes 100-199/10000\r\nContent-Length: 100\r\n\r\n",
    ] {
        let h = head.to_owned();
        let srv = hand_rolled(move |_, _, _| (h.clone().into_bytes(), Then::KeepOpen)).await;
        let e = fetcher(srv.addr).fetch(100..200).await.unwrap_err();
        assert!(
            matches!(e, FetchError::ContentRangeMismatch { .. }),
            "{head}: {e}"
        );
        assert_eq!(e.class(), FetchErrorClass::Protocol);
    }
}

#[tokio::test]
async fn changed_etag_in_206() {
    let body = data(LEN, 24);
    let srv = hand_rolled(move |_, f, l| (good_206(&body, f, l, "\"v2\""), Then::KeepOpen)).await;
    let e = fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(matches!(e, FetchError::ValidatorChanged { .. }), "{e}");
    assert!(e.is_resource_changed());
}

#[tokio::test]
async fn full_200_with_new_etag_means_changed() {
    let srv = hand_rolled(move |_, _, _| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\nETag: \"v2\"\r\n\r\n")
            .into_bytes();
        r.extend(data(LEN, 25));
        (r, Then::KeepOpen)
    })
    .await;
    let e = fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::NotPartial {
                status: 200,
                changed: true
            }
        ),
        "{e}"
    );
    assert!(e.is_resource_changed());
}

#[tokio::test]
async fn status_416_and_others() {
    let srv = hand_rolled(|_, _, _| {
        (b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */5\r\nContent-Length: 0\r\n\r\n".to_vec(), Then::KeepOpen)
    })
    .await;
    let e = fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(matches!(e, FetchError::RangeNotSatisfiable));
    assert!(e.is_resource_changed());

    let srv = hand_rolled(|_, _, _| {
        (
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Then::KeepOpen,
        )
    })
    .await;
    let e = fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(matches!(e, FetchError::Status(503)));
    assert_eq!(e.class(), FetchErrorClass::Transient);

    let srv = hand_rolled(|_, _, _| {
        (
            b"HTTP/1.1 403 No\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Then::KeepOpen,
        )
    })
    .await;
    let e = fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert_eq!(e.class(), FetchErrorClass::Protocol);
}

#[tokio::test]
async fn encodings_are_refused() {
    for extra in [
        "Transfer-Encoding: chunked\r\n",
        "Content-Encoding: gzip\r\n",
    ] {
        let h = format!(
            "HTTP/1.1 206 P\r\nContent-Range: bytes 0-9/{LEN}\r\n{extra}Content-Length: 10\r\n\r\n0123456789"
        );
        let srv = hand_rolled(move |_, _, _| (h.clone().into_bytes(), Then::KeepOpen)).await;
        let e = fetcher(srv.addr).fetch(0..10).await.unwrap_err();
        assert!(matches!(e, FetchError::Encoding(_)), "{e}");
        assert_eq!(e.class(), FetchErrorClass::Protocol);
    }
}

#[tokio::test]
async fn content_length_disagreeing_with_range() {
    let h = format!(
        "HTTP/1.1 206 P\r\nContent-Range: bytes 0-9/{LEN}\r\nContent-Length: 11\r\n\r\n0123456789x"
    );
    let srv = hand_rolled(move |_, _, _| (h.clone().into_bytes(), Then::KeepOpen)).await;
    let e = fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::ContentLengthMismatch {
                expected: 10,
                got: Some(11)
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn short_body_when_origin_closes_early() {
    let body = data(LEN, 26);
    let srv = hand_rolled(move |_, f, l| {
        let mut r = good_206(&body, f, l, ETAG);
        r.truncate(r.len() - 40);
        (r, Then::Close)
    })
    .await;
    let mut f = fetcher(srv.addr);
    let mut got = 0;
    let mut body = f.fetch(0..1000).await.unwrap();
    let e = loop {
        match body.next_chunk().await {
            Ok(Some((_, c))) => got += c.len(),
            Ok(None) => panic!("complete despite truncation"),
            Err(e) => break e,
        }
    };
    assert_eq!(got, 960);
    assert!(
        matches!(
            e,
            FetchError::ShortBody {
                expected: 1000,
                received: 960
            }
        ),
        "{e}"
    );
    assert_eq!(e.class(), FetchErrorClass::Transient);
}

#[tokio::test]
async fn timeout_waiting_for_head() {
    let srv = hand_rolled(|_, _, _| (Vec::new(), Then::Stall)).await;
    let e = impatient_fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(matches!(e, FetchError::Timeout(Phase::Head)), "{e}");
    assert_eq!(e.class(), FetchErrorClass::Transient);
}

#[tokio::test]
async fn timeout_in_the_middle_of_the_body() {
    let body = data(LEN, 27);
    let srv = hand_rolled(move |_, f, l| {
        let mut r = good_206(&body, f, l, ETAG);
        r.truncate(r.len() - 10);
        (r, Then::Stall)
    })
    .await;
    let mut f = impatient_fetcher(srv.addr);
    let mut body = f.fetch(0..1000).await.unwrap();
    let e = loop {
        match body.next_chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("complete despite stall"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, FetchError::Timeout(Phase::Body)), "{e}");
}

#[tokio::test]
async fn reconnects_when_keep_alive_was_closed() {
    let body = data(LEN, 28);
    let b = body.clone();
    // Answers one request per connection, then closes without saying so.
    let srv = hand_rolled(move |_, f, l| (good_206(&b, f, l, ETAG), Then::Close)).await;
    let mut f = fetcher(srv.addr);
    let mut got = Vec::new();
    for r in [0..3000u64, 3000..6000, 6000..10_000] {
        f.fetch_with(r, |_, c| got.extend_from_slice(c))
            .await
            .unwrap();
        // Let the server's FIN arrive before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, body);
    assert_eq!(srv.conns.load(Ordering::SeqCst), 3);
    assert_eq!(f.stats().connections, 3);
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let body = data(LEN, 29);
    let srv = hand_rolled(move |_, f, l| {
        let r = good_206(&body, f, l, ETAG);
        let s = String::from_utf8_lossy(&r[..20]).into_owned();
        assert!(s.starts_with("HTTP/1.1 206"));
        let mut out = b"HTTP/1.1 206 Partial Content\r\nConnection: close\r\n".to_vec();
        out.extend_from_slice(&r[b"HTTP/1.1 206 Partial Content\r\n".len()..]);
        (out, Then::KeepOpen)
    })
    .await;
    let mut f = fetcher(srv.addr);
    f.fetch_with(0..10, |_, _| {}).await.unwrap();
    f.fetch_with(10..20, |_, _| {}).await.unwrap();
    // The fetcher did not reuse a connection the origin said it closes.
    assert_eq!(f.stats().connections, 2);
    assert_eq!(f.stats().requests, 2);
}

#[tokio::test]
async fn oversized_head() {
    let mut h = b"HTTP/1.1 206 P\r\n".to_vec();
    h.extend_from_slice(b"X-Filler: ");
    h.resize(20_000, b'a');
    h.extend_from_slice(b"\r\n\r\n");
    let srv = hand_rolled(move |_, _, _| (h.clone(), Then::Stall)).await;
    let e = impatient_fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(matches!(e, FetchError::HeadTooLarge), "{e}");
    let srv = hand_rolled(|_, _, _| (b"HTTP/9 what\r\n\r\n".to_vec(), Then::Stall)).await;
    let e = impatient_fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(matches!(e, FetchError::BadHead(_)), "{e}");
    let mut many = b"HTTP/1.1 206 P\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let srv = hand_rolled(move |_, _, _| (many.clone(), Then::Stall)).await;
    let e = impatient_fetcher(srv.addr).fetch(0..10).await.unwrap_err();
    assert!(matches!(e, FetchError::BadHead(_)), "{e}");
    assert_eq!(e.class(), FetchErrorClass::Protocol);
}

#[tokio::test]
async fn interim_100_is_skipped() {
    let body = data(LEN, 30);
    let srv = hand_rolled(move |_, f, l| {
        let mut r = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        r.extend(good_206(&body, f, l, ETAG));
        (r, Then::KeepOpen)
    })
    .await;
    let mut f = fetcher(srv.addr);
    assert_eq!(f.fetch_with(0..10, |_, _| {}).await.unwrap(), 10);
}

#[tokio::test]
async fn response_dribbled_in_tiny_segments() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = data(LEN, 31);
    let b = body.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let sizes = data(100_000, 32);
        let mut k = 0;
        for (first, last) in [(0u64, 999u64), (1000, 2999)] {
            // Read one request head.
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if s.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                req.push(byte[0]);
            }
            let reply = good_206(&b, first, last, ETAG);
            let mut at = 0;
            while at < reply.len() {
                let n = (usize::from(sizes[k % sizes.len()]) % 7 + 1).min(reply.len() - at);
                k += 1;
                s.write_all(&reply[at..at + n]).await.unwrap();
                s.flush().await.unwrap();
                at += n;
                if k % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let mut f = fetcher(addr);
    let mut got = Vec::new();
    f.fetch_with(0..1000, |_, c| got.extend_from_slice(c))
        .await
        .unwrap();
    f.fetch_with(1000..3000, |_, c| got.extend_from_slice(c))
        .await
        .unwrap();
    assert_eq!(got, &body[..3000]);
    assert_eq!(f.stats().connections, 1);
}

#[tokio::test]
async fn a_failed_piece_does_not_poison_the_next() {
    let body = data(LEN, 33);
    let b = body.clone();
    let srv = hand_rolled(move |i, f, l| {
        if i == 0 {
            (
                b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_vec(),
                Then::KeepOpen,
            )
        } else {
            (good_206(&b, f, l, ETAG), Then::KeepOpen)
        }
    })
    .await;
    let mut f = fetcher(srv.addr);
    let e = f.fetch(0..100).await.unwrap_err();
    assert_eq!(e.class(), FetchErrorClass::Transient);
    let mut got = Vec::new();
    f.fetch_with(0..100, |_, c| got.extend_from_slice(c))
        .await
        .unwrap();
    assert_eq!(got, &body[..100]);
    assert_eq!(
        f.stats().connections,
        2,
        "a fresh connection after the failure"
    );
}
