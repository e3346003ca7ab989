//! HTTP/1.1 pipelining of the next piece's request (`PieceBody::pipeline`):
//! against tandem's origin, and against servers that close after one
//! response or ignore a pipelined request.

#![allow(clippy::unwrap_used)]

mod common;

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tandem_fetch::{FetchError, OriginFiles, RangeFetcher};

const ETAG: &str = "\"v1\"";

/// Fetches `ranges` in order, sending each next range's request after the
/// first chunk of the current body. Returns the bytes (in order) and how
/// many of the pipeline calls sent a request.
async fn fetch_pipelined(
    f: &mut RangeFetcher,
    ranges: &[Range<u64>],
) -> Result<(Vec<u8>, usize), FetchError> {
    let mut got = Vec::new();
    let mut sent = 0;
    for (i, r) in ranges.iter().enumerate() {
        let mut body = f.fetch(r.clone()).await?;
        let mut first = true;
        while let Some((offset, chunk)) = body.next_chunk().await? {
            assert_eq!(
                offset,
                r.start
                    + (got.len() as u64 - ranges[..i].iter().map(|r| r.end - r.start).sum::<u64>())
            );
            got.extend_from_slice(chunk);
            if first {
                first = false;
                if let Some(next) = ranges.get(i + 1) {
                    if body.pipeline(next.clone()).await? {
                        sent += 1;
                    }
                }
            }
        }
    }
    Ok((got, sent))
}

fn expected(content: &[u8], ranges: &[Range<u64>]) -> Vec<u8> {
    ranges
        .iter()
        .flat_map(|r| content[r.start as usize..r.end as usize].iter().copied())
        .collect()
}

#[tokio::test]
async fn pipelined_pieces_share_one_connection_with_tandems_origin() {
    let content = data(1_000_000, 41);
    let files = OriginFiles::memory();
    files.insert("/p.bin", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/p.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    // Out of order, one byte, the last byte, large and small pieces.
    let ranges = [
        500_000..700_000,
        0..1,
        1..150_000,
        999_999..1_000_000,
        700_000..999_999,
        150_000..500_000,
    ];
    let (got, sent) = fetch_pipelined(&mut f, &ranges).await.unwrap();
    assert!(got == expected(&content, &ranges), "bytes differ");
    assert_eq!(sent, ranges.len() - 1, "every next request was pipelined");
    let stats = f.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.requests, ranges.len() as u64);
    assert_eq!(stats.pipelined, ranges.len() as u64 - 1);
    assert!(f.pipelining());
}

#[tokio::test]
async fn a_server_that_closes_after_each_response_gets_the_request_again() {
    let body = data(10_000, 42);
    let b = body.clone();
    // One response per connection, closed without `Connection: close`: the
    // pipelined request is lost with the connection.
    let srv = hand_rolled(move |_, f, l| (good_206(&b, f, l, ETAG), Then::Close)).await;
    let mut f = RangeFetcher::new(
        resource_for(srv.addr, 10_000, ETAG),
        loopback_config(srv.addr),
    )
    .unwrap();
    let ranges = [0..3000u64, 3000..6000, 6000..10_000];
    let (got, sent) = fetch_pipelined(&mut f, &ranges).await.unwrap();
    assert!(got == body, "bytes differ");
    // The first pipelined request was lost and sent again; after that the
    // fetcher no longer pipelines to this origin.
    assert_eq!(sent, 1);
    assert!(!f.pipelining());
    assert_eq!(srv.conns.load(Ordering::SeqCst), 3);
    assert_eq!(f.stats().connections, 3);
    // 3 fetches, the lost pipelined request, and the third fetch's first
    // try on the second connection, which the server had closed too (the
    // transparent keep-alive retry).
    assert_eq!(f.stats().requests, 5);
}

#[tokio::test]
async fn a_server_that_ignores_a_pipelined_request_costs_one_timeout() {
    let body = data(10_000, 43);
    let b = body.clone();
    // Answers every request but the second it receives (the pipelined
    // one), which it reads and drops.
    let srv = hand_rolled(move |i, f, l| match i {
        1 => (Vec::new(), Then::KeepOpen),
        _ => (good_206(&b, f, l, ETAG), Then::KeepOpen),
    })
    .await;
    let mut cfg = loopback_config(srv.addr);
    cfg.pipeline_timeout = Duration::from_millis(200);
    let mut f = RangeFetcher::new(resource_for(srv.addr, 10_000, ETAG), cfg).unwrap();
    let ranges = [0..4000u64, 4000..7000, 7000..10_000];
    let (got, sent) = fetch_pipelined(&mut f, &ranges).await.unwrap();
    assert!(got == body, "bytes differ");
    assert_eq!(sent, 1);
    assert!(!f.pipelining());
    assert_eq!(f.stats().connections, 2);
    assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn fetching_another_range_than_the_pipelined_one_reconnects() {
    let content = data(300_000, 44);
    let files = OriginFiles::memory();
    files.insert("/p.bin", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/p.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    let mut got = Vec::new();
    {
        let mut body = f.fetch(0..100_000).await.unwrap();
        assert!(body.pipeline(100_000..200_000).await.unwrap());
        // Only one request may wait behind a body.
        assert!(!body.pipeline(200_000..300_000).await.unwrap());
        while let Some((_, c)) = body.next_chunk().await.unwrap() {
            got.extend_from_slice(c);
        }
    }
    // The pipelined piece was cancelled: its response must not be taken
    // for this range's.
    f.fetch_with(200_000..300_000, |_, c| got.extend_from_slice(c))
        .await
        .unwrap();
    let mut want = content[..100_000].to_vec();
    want.extend_from_slice(&content[200_000..]);
    assert!(got == want, "bytes differ");
    assert_eq!(f.stats().connections, 2);
    assert!(
        f.pipelining(),
        "a cancelled piece says nothing about the origin"
    );
}

#[tokio::test]
async fn a_body_dropped_early_takes_its_pipelined_request_with_it() {
    let content = data(300_000, 45);
    let files = OriginFiles::memory();
    files.insert("/p.bin", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/p.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    {
        let mut body = f.fetch(0..200_000).await.unwrap();
        assert!(body.pipeline(200_000..300_000).await.unwrap());
        body.next_chunk().await.unwrap();
    }
    let mut got = Vec::new();
    f.fetch_with(200_000..300_000, |_, c| got.extend_from_slice(c))
        .await
        .unwrap();
    assert!(got == content[200_000..], "bytes differ");
    assert_eq!(f.stats().connections, 2);
}

#[tokio::test]
async fn pipeline_refuses_a_bad_range() {
    let content = data(1000, 46);
    let files = OriginFiles::memory();
    files.insert("/p.bin", content.clone());
    let addr = start_origin(files).await;
    let res = learn_resource(addr, "/p.bin").await;
    let mut f = RangeFetcher::new(res, loopback_config(addr)).unwrap();
    let mut body = f.fetch(0..500).await.unwrap();
    assert!(matches!(
        body.pipeline(900..1001).await,
        Err(FetchError::BadRange { .. })
    ));
    assert!(matches!(
        body.pipeline(600..600).await,
        Err(FetchError::BadRange { .. })
    ));
}
