//! RangeFetcher against tandem's own origin server, on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use tandem_fetch::{
    FetchConfig, FetchError, FetchErrorClass, OriginFiles, RangeFetcher, TargetRefused,
};

/// Seeded piece boundaries covering `0..len`, sizes in `1..=max`.
fn pieces(len: u64, max: u64, seed: u64) -> Vec<std::ops::Range<u64>> {
    let sizes = data(4096, seed);
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < len {
        let r = u64::from(sizes[i % sizes.len()]) * 256 + u64::from(sizes[(i + 1) % sizes.len()]);
        let size = (r % max + 1).min(len - at);
        out.push(at..at + size);
        at += size;
        i += 2;
    }
    out
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "tandem-fetch-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn reassemble(
    fetcher: &mut RangeFetcher,
    ranges: &[std::ops::Range<u64>],
    chunk_max: usize,
) -> Vec<u8> {
    let total = fetcher.resource().total_len as usize;
    let mut out = vec![0u8; total];
    let mut filled = vec![false; total];
    for r in ranges {
        let mut body = fetcher.fetch(r.clone()).await.unwrap();
        let mut expect = r.start;
        while let Some((offset, chunk)) = body.next_chunk().await.unwrap() {
            assert_eq!(offset, expect, "chunks arrive in order");
            assert!(!chunk.is_empty() && chunk.len() <= chunk_max);
            let o = offset as usize;
            out[o..o + chunk.len()].copy_from_slice(chunk);
            filled[o..o + chunk.len()]
                .iter_mut()
                .for_each(|f| *f = true);
            expect += chunk.len() as u64;
        }
        assert_eq!(expect, r.end);
        assert_eq!(body.received(), r.end - r.start);
    }
    assert!(filled.iter().all(|&f| f), "every byte fetched");
    out
}

#[tokio::test]
async fn reassembles_memory_file_over_one_connection() {
    let content = data(3 * 1024 * 1024 + 17, 1);
    let files = OriginFiles::memory();
    files.insert("/movie.mp4", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/movie.mp4").await;
    assert_eq!(res.total_len, content.len() as u64);
    let mut cfg = loopback_config(addr);
    cfg.chunk_size = 16 * 1024;
    let mut f = RangeFetcher::new(res, cfg).unwrap();
    let ranges = pieces(content.len() as u64, 300_000, 2);
    assert!(ranges.len() > 10);
    let got = reassemble(&mut f, &ranges, 16 * 1024).await;
    assert!(got == content, "byte-identical reassembly");
    let stats = f.stats();
    println!("{} pieces, stats {stats:?}", ranges.len());
    assert_eq!(stats.connections, 1, "one keep-alive connection reused");
    assert_eq!(stats.requests, ranges.len() as u64);
    assert_eq!(stats.body_bytes, content.len() as u64);
}

#[tokio::test]
async fn reassembles_file_from_directory_out_of_order() {
    let dir = temp_dir("dir");
    let content = data(2 * 1024 * 1024 + 5, 3);
    std::fs::write(dir.join("blob.bin"), &content).unwrap();
    let addr = start_origin(OriginFiles::dir(&dir)).await;
    let res = learn_resource(addr, "/blob.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    let mut ranges = pieces(content.len() as u64, 200_000, 4);
    // Reverse and interleave to fetch out of order.
    ranges.reverse();
    let (a, b): (Vec<_>, Vec<_>) = ranges
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let ranges: Vec<_> = a.into_iter().chain(b).map(|(_, r)| r).collect();
    let got = reassemble(&mut f, &ranges, tandem_fetch::DEFAULT_CHUNK_SIZE).await;
    assert!(got == content);
    assert_eq!(f.stats().connections, 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn single_byte_and_last_byte_pieces() {
    let content = data(1000, 5);
    let files = OriginFiles::memory();
    files.insert("/x.bin", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/x.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    for r in [0..1, 999..1000, 500..501, 0..1000] {
        let mut got = Vec::new();
        let n = f
            .fetch_with(r.clone(), |_, c| got.extend_from_slice(c))
            .await
            .unwrap();
        assert_eq!(n, r.end - r.start);
        assert_eq!(got, &content[r.start as usize..r.end as usize]);
    }
    assert_eq!(f.stats().connections, 1);
}

#[tokio::test]
async fn bad_ranges_are_refused_locally() {
    let files = OriginFiles::memory();
    files.insert("/x.bin", data(100, 6));
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/x.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    for r in [5..5, 0..101, 100..101] {
        let e = f.fetch(r).await.unwrap_err();
        assert!(matches!(e, FetchError::BadRange { .. }), "{e}");
        assert_eq!(e.class(), FetchErrorClass::Refused);
    }
    assert_eq!(f.stats().requests, 0);
}

#[tokio::test]
async fn dropping_a_body_early_costs_a_reconnect_not_corruption() {
    let content = data(500_000, 7);
    let files = OriginFiles::memory();
    files.insert("/x.bin", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/x.bin").await;
    let mut cfg = loopback_config(addr);
    cfg.chunk_size = 4096;
    let mut f = RangeFetcher::new(res, cfg).unwrap();
    {
        let mut body = f.fetch(0..400_000).await.unwrap();
        let _ = body.next_chunk().await.unwrap();
        // Dropped with most of the body unread.
    }
    let mut got = Vec::new();
    f.fetch_with(400_000..500_000, |_, c| got.extend_from_slice(c))
        .await
        .unwrap();
    assert_eq!(got, &content[400_000..]);
    assert_eq!(f.stats().connections, 2);
}

#[tokio::test]
async fn if_range_detects_replaced_file_in_directory() {
    let dir = temp_dir("replace");
    let path = dir.join("movie.mp4");
    std::fs::write(&path, data(300_000, 8)).unwrap();
    let addr = start_origin(OriginFiles::dir(&dir)).await;
    let res = learn_resource(addr, "/movie.mp4").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    f.fetch_with(0..100_000, |_, _| {}).await.unwrap();
    // Replace the file (new inode, same length) between pieces.
    let tmp = dir.join("movie.mp4.new");
    std::fs::write(&tmp, data(300_000, 9)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let e = f.fetch(100_000..200_000).await.unwrap_err();
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
    assert_eq!(e.class(), FetchErrorClass::ResourceChanged);
    assert!(e.is_resource_changed());
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn if_range_detects_replaced_file_in_memory() {
    let files = OriginFiles::memory();
    files.insert("/a.bin", data(50_000, 10));
    let addr = start_origin(files.clone()).await;
    let res = learn_resource(addr, "/a.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    f.fetch_with(0..10_000, |_, _| {}).await.unwrap();
    files.insert("/a.bin", data(60_000, 11));
    let e = f.fetch(10_000..20_000).await.unwrap_err();
    assert!(e.is_resource_changed(), "{e}");
}

#[tokio::test]
async fn origin_without_ranges_is_detected() {
    let files = OriginFiles::memory().with_ranges(false);
    files.insert("/a.bin", data(50_000, 12));
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/a.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    let e = f.fetch(0..10_000).await.unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::NotPartial {
                status: 200,
                changed: false
            }
        ),
        "{e}"
    );
    assert_eq!(e.class(), FetchErrorClass::RangesUnsupported);
    // The unread 200 body poisoned the connection: the next fetch opens a
    // new one and fails the same way.
    let e = f.fetch(10_000..20_000).await.unwrap_err();
    assert_eq!(e.class(), FetchErrorClass::RangesUnsupported);
    assert_eq!(f.stats().connections, 2);
}

#[tokio::test]
async fn ssrf_policy_refuses_before_connecting() {
    let files = OriginFiles::memory();
    files.insert("/a.bin", data(100, 13));
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/a.bin").await;
    // Default policy: loopback refused, port refused.
    let e = RangeFetcher::new(res.clone(), FetchConfig::default()).unwrap_err();
    assert!(
        matches!(e, FetchError::Refused(TargetRefused::Port(_))),
        "{e}"
    );
    let mut cfg = FetchConfig::default();
    cfg.policy.allowed_ports = vec![addr.port()];
    let e = RangeFetcher::new(res.clone(), cfg).unwrap_err();
    assert!(
        matches!(e, FetchError::Refused(TargetRefused::Loopback)),
        "{e}"
    );
    assert_eq!(e.class(), FetchErrorClass::Refused);
    let mut cfg = loopback_config(addr);
    cfg.policy.own_addrs = vec![addr.ip()];
    let e = RangeFetcher::new(res, cfg).unwrap_err();
    assert!(
        matches!(e, FetchError::Refused(TargetRefused::OwnAddress)),
        "{e}"
    );
}

#[tokio::test]
async fn binds_the_given_source_address() {
    let files = OriginFiles::memory();
    files.insert("/a.bin", data(10_000, 14));
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/a.bin").await;
    let mut cfg = loopback_config(addr);
    cfg.bind_addr = Some("127.0.0.1".parse().unwrap());
    let mut f = RangeFetcher::new(res, cfg).unwrap();
    assert_eq!(f.fetch_with(0..10_000, |_, _| {}).await.unwrap(), 10_000);
    // A source address that is not local cannot be bound.
    let files = OriginFiles::memory();
    files.insert("/a.bin", data(10, 15));
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/a.bin").await;
    let mut cfg = loopback_config(addr);
    cfg.bind_addr = Some("192.0.2.1".parse().unwrap());
    let mut f = RangeFetcher::new(res, cfg).unwrap();
    let e = f.fetch(0..5).await.unwrap_err();
    assert!(matches!(e, FetchError::Io(_)), "{e}");
}

#[tokio::test]
async fn small_chunks_even_for_bytes_read_with_the_head() {
    let content = data(20_000, 16);
    let files = OriginFiles::memory();
    files.insert("/x.bin", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/x.bin").await;
    let mut cfg = loopback_config(addr);
    cfg.chunk_size = 1024;
    let mut f = RangeFetcher::new(res, cfg).unwrap();
    let ranges: Vec<_> = (0..4).map(|i| i * 5000..(i + 1) * 5000).collect();
    let got = reassemble(&mut f, &ranges, 1024).await;
    assert!(got == content);
}

#[test]
fn fetch_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let res = resource_for(addr, 10, "\"e\"");
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    assert_send(&f);
    let fut = f.fetch(0..1);
    assert_send(&fut);
}

#[test]
fn resource_from_a_client_exchange() {
    use tandem_fetch::Resource;
    use tandem_http::{Parse, ResponseHead};
    let addr: std::net::SocketAddr = "203.0.113.5:80".parse().unwrap();
    let Parse::Complete { head: resp, .. } =
        ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 123\r\nETag: \"x\"\r\n\r\n")
            .unwrap()
    else {
        panic!()
    };
    let r = Resource::from_exchange(addr, client_request("/a", "site.test"), &resp).unwrap();
    assert_eq!((r.host.as_str(), r.total_len), ("site.test", 123));
    assert_eq!(r.validator, tandem_http::Validator::ETag("\"x\"".into()));
    let Parse::Complete { head: req, .. } =
        tandem_http::RequestHead::parse(b"GET /a HTTP/1.0\r\n\r\n").unwrap()
    else {
        panic!()
    };
    let r = Resource::from_exchange(addr, req, &resp).unwrap();
    assert_eq!(r.host, "203.0.113.5:80");
    let Parse::Complete { head: weak, .. } =
        ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nETag: W/\"x\"\r\n\r\n")
            .unwrap()
    else {
        panic!()
    };
    assert!(Resource::from_exchange(addr, client_request("/a", "h"), &weak).is_none());
}

#[tokio::test]
async fn last_modified_validator_and_its_change() {
    let dir = temp_dir("lm");
    let path = dir.join("song.mp3");
    std::fs::write(&path, data(100_000, 17)).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let addr = start_origin(OriginFiles::dir(&dir)).await;
    let mut res = learn_resource(addr, "/song.mp3").await;
    // Use the date instead of the ETag, as for an origin without ETag.
    res.validator = tandem_http::Validator::LastModified(tandem_fetch::http_date(old));
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    assert_eq!(f.fetch_with(0..50_000, |_, _| {}).await.unwrap(), 50_000);
    let newer = old + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(newer)
        .unwrap();
    let e = f.fetch(50_000..100_000).await.unwrap_err();
    assert!(e.is_resource_changed(), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn ipv6_loopback_origin() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        println!("SKIP: no IPv6 loopback here");
        return;
    };
    let addr = listener.local_addr().unwrap();
    let content = data(200_000, 18);
    let files = OriginFiles::memory();
    files.insert("/v6.bin", content.clone());
    tokio::spawn(tandem_fetch::serve_origin(listener, files));
    let res = learn_resource(addr, "/v6.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    let got = reassemble(
        &mut f,
        &pieces(200_000, 30_000, 19),
        tandem_fetch::DEFAULT_CHUNK_SIZE,
    )
    .await;
    assert!(got == content);
}

#[tokio::test]
async fn a_preconnected_connection_serves_the_next_fetch() {
    let content = data(200_000, 11);
    let files = OriginFiles::memory();
    files.insert("/p.bin", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/p.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    f.preconnect().await.unwrap();
    f.preconnect().await.unwrap();
    assert_eq!(f.stats().connections, 1, "preconnect is idempotent");
    assert_eq!(f.stats().requests, 0);
    let mut got = Vec::new();
    f.fetch_with(1000..150_000, |_, c| got.extend_from_slice(c))
        .await
        .unwrap();
    assert_eq!(got, &content[1000..150_000]);
    let stats = f.stats();
    assert_eq!(stats.connections, 1, "the fetch used the open connection");
    assert_eq!(stats.requests, 1);
}
