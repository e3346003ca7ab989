//! tandem's origin server, spoken to with raw requests.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tandem_fetch::OriginFiles;
use tandem_http::{Parse, ResponseHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn origin_with(content: &[u8]) -> std::net::SocketAddr {
    let files = OriginFiles::memory();
    files.insert("/movie.mp4", content.to_vec());
    start_origin(files).await
}

fn get(range: &str, extra: &str) -> String {
    format!("GET /movie.mp4 HTTP/1.1\r\nHost: o\r\n{range}{extra}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn full_get_has_the_eligibility_headers() {
    let content = data(5000, 40);
    let addr = origin_with(&content).await;
    let (h, body) = raw_exchange(addr, &get("", "")).await;
    assert_eq!(h.status, 200);
    assert_eq!(body, content);
    assert_eq!(h.content_length(), Ok(Some(5000)));
    assert_eq!(h.headers.get_str("content-type"), Some("video/mp4"));
    assert!(h.headers.has_token("accept-ranges", "bytes"));
    assert!(h.validator().is_some());
    assert!(h.headers.contains("last-modified"));
    assert!(tandem_http::is_strong_etag(
        h.headers.get_str("etag").unwrap()
    ));
}

#[tokio::test]
async fn range_forms() {
    let content = data(5000, 41);
    let addr = origin_with(&content).await;
    for (range, want, cr) in [
        ("bytes=0-99", 0..100, "bytes 0-99/5000"),
        ("bytes=4990-", 4990..5000, "bytes 4990-4999/5000"),
        ("bytes=-10", 4990..5000, "bytes 4990-4999/5000"),
        ("bytes=4000-9999", 4000..5000, "bytes 4000-4999/5000"),
        ("bytes=-9999", 0..5000, "bytes 0-4999/5000"),
    ] {
        let (h, body) = raw_exchange(addr, &get(&format!("Range: {range}\r\n"), "")).await;
        assert_eq!(h.status, 206, "{range}");
        assert_eq!(h.headers.get_str("content-range"), Some(cr), "{range}");
        assert_eq!(body, &content[want], "{range}");
    }
}

#[tokio::test]
async fn unsatisfiable_and_ignored_ranges() {
    let content = data(5000, 42);
    let addr = origin_with(&content).await;
    let (h, body) = raw_exchange(addr, &get("Range: bytes=5000-\r\n", "")).await;
    assert_eq!(h.status, 416);
    assert_eq!(h.headers.get_str("content-range"), Some("bytes */5000"));
    assert!(body.is_empty());
    let (h, _) = raw_exchange(addr, &get("Range: bytes=-0\r\n", "")).await;
    assert_eq!(h.status, 416);
    // Multiple ranges and other units are ignored: full 200.
    for r in ["bytes=0-1,5-6", "items=0-1", "bytes=5-1"] {
        let (h, body) = raw_exchange(addr, &get(&format!("Range: {r}\r\n"), "")).await;
        assert_eq!(h.status, 200, "{r}");
        assert_eq!(body.len(), 5000);
    }
}

#[tokio::test]
async fn if_range() {
    let content = data(5000, 43);
    let addr = origin_with(&content).await;
    let (h, _) = raw_exchange(addr, &get("", "")).await;
    let etag = h.headers.get_str("etag").unwrap().to_owned();
    let lm = h.headers.get_str("last-modified").unwrap().to_owned();
    for (if_range, status) in [
        (etag.clone(), 206),
        (lm, 206),
        ("\"other\"".to_owned(), 200),
        (format!("W/{etag}"), 200),
        ("Thu, 01 Jan 1970 00:00:00 GMT".to_owned(), 200),
    ] {
        let (h, body) = raw_exchange(
            addr,
            &get(
                "Range: bytes=10-19\r\n",
                &format!("If-Range: {if_range}\r\n"),
            ),
        )
        .await;
        assert_eq!(h.status, status, "{if_range}");
        assert_eq!(body.len(), if status == 206 { 10 } else { 5000 });
    }
}

#[tokio::test]
async fn head_404_405_and_traversal() {
    let addr = origin_with(&data(10, 44)).await;
    let (h, body) = raw_exchange(
        addr,
        "HEAD /movie.mp4 HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (h.status, h.content_length(), body.len()),
        (200, Ok(Some(10)), 0)
    );
    let (h, _) = raw_exchange(
        addr,
        "GET /nope HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(h.status, 404);
    let (h, _) = raw_exchange(
        addr,
        "POST /movie.mp4 HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(h.status, 405);
    let (h, _) = raw_exchange(
        addr,
        "GET /../../etc/passwd HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(h.status, 404);
    let (h, _) = raw_exchange(addr, "garbage\r\n\r\n").await;
    assert_eq!(h.status, 400);
}

#[tokio::test]
async fn directory_store_refuses_escapes() {
    let base = std::env::temp_dir().join(format!("tandem-origin-esc-{}", std::process::id()));
    let dir = base.join("www");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(base.join("secret.txt"), b"secret").unwrap();
    std::fs::write(dir.join("ok.txt"), b"fine").unwrap();
    let addr = start_origin(OriginFiles::dir(&dir)).await;
    let (h, body) = raw_exchange(
        addr,
        "GET /ok.txt HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((h.status, body.as_slice()), (200, &b"fine"[..]));
    assert_eq!(h.headers.get_str("content-type"), Some("text/plain"));
    for t in ["/../secret.txt", "/%2e%2e/secret.txt", "/", "/.."] {
        let (h, _) = raw_exchange(
            addr,
            &format!("GET {t} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(h.status, 404, "{t}");
    }
    std::fs::remove_dir_all(base).ok();
}

#[tokio::test]
async fn keep_alive_and_pipelining() {
    let content = data(3000, 45);
    let addr = origin_with(&content).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Two pipelined requests in one write, the last closes.
    s.write_all(b"GET /movie.mp4 HTTP/1.1\r\nHost: o\r\nRange: bytes=0-9\r\n\r\nGET /movie.mp4 HTTP/1.1\r\nHost: o\r\nRange: bytes=10-19\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    let Parse::Complete { head, head_len } = ResponseHead::parse(&all).unwrap() else {
        panic!()
    };
    assert_eq!(head.status, 206);
    assert_eq!(&all[head_len..head_len + 10], &content[0..10]);
    let rest = &all[head_len + 10..];
    let Parse::Complete { head, head_len } = ResponseHead::parse(rest).unwrap() else {
        panic!()
    };
    assert_eq!(head.status, 206);
    assert_eq!(&rest[head_len..], &content[10..20]);
}

#[tokio::test]
async fn no_range_knob() {
    let files = OriginFiles::memory().with_ranges(false);
    files.insert("/movie.mp4", data(1000, 46));
    let addr = start_origin(files).await;
    let (h, body) = raw_exchange(addr, &get("Range: bytes=0-9\r\n", "")).await;
    assert_eq!(h.status, 200);
    assert_eq!(body.len(), 1000);
    assert!(!h.headers.contains("accept-ranges"));
}

#[tokio::test]
async fn rate_limit_is_a_lower_bound_on_duration() {
    let files = OriginFiles::memory().with_rate_limit(Some(200_000));
    files.insert("/movie.mp4", data(100_000, 47));
    let addr = start_origin(files).await;
    let t = Instant::now();
    let (h, body) = raw_exchange(addr, &get("", "")).await;
    let elapsed = t.elapsed();
    assert_eq!((h.status, body.len()), (200, 100_000));
    println!("100000 bytes at 200000 B/s limit took {elapsed:?}");
    // The pacer sleeps until sent/rate has elapsed: never faster.
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
}

#[tokio::test]
async fn etag_changes_with_file_in_directory() {
    let dir = std::env::temp_dir().join(format!("tandem-origin-etag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("a.bin");
    std::fs::write(&p, data(100, 48)).unwrap();
    let addr = start_origin(OriginFiles::dir(&dir)).await;
    let req = "HEAD /a.bin HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n";
    let (h1, _) = raw_exchange(addr, req).await;
    let (h1b, _) = raw_exchange(addr, req).await;
    assert_eq!(h1.validator(), h1b.validator(), "stable while unchanged");
    let tmp = dir.join("a.new");
    std::fs::write(&tmp, data(100, 49)).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    let (h2, _) = raw_exchange(addr, req).await;
    assert_ne!(h1.validator(), h2.validator());
    std::fs::remove_dir_all(dir).ok();
}
