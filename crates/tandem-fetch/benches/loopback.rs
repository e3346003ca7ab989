//! Throughput of RangeFetcher against serve_origin over loopback: one
//! fetcher, consecutive pieces on one keep-alive connection. Prints
//! figures; asserts only correctness (byte-identical reassembly).

use std::time::Instant;

use tandem_fetch::{FetchConfig, OriginFiles, RangeFetcher, Resource, TargetPolicy, serve_origin};
use tandem_http::{Parse, RequestHead, Validator};

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no runtime: {e}");
            return;
        }
    };
    rt.block_on(run());
}

async fn run() {
    const LEN: usize = 256 * 1024 * 1024;
    let content: Vec<u8> = (0..LEN)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let files = OriginFiles::memory();
    files.insert("/big.bin", content.clone());
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    tokio::spawn(serve_origin(listener, files.clone()));
    let Ok(Parse::Complete { head: request, .. }) =
        RequestHead::parse(b"GET /big.bin HTTP/1.1\r\nHost: bench\r\n\r\n")
    else {
        return;
    };
    let probe = "HEAD /big.bin HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let etag = head_etag(addr, probe).await;
    for piece in [64 * 1024u64, 1024 * 1024, 8 * 1024 * 1024] {
        for chunk in [16 * 1024usize, 64 * 1024] {
            let cfg = FetchConfig {
                chunk_size: chunk,
                policy: TargetPolicy {
                    allow_loopback: true,
                    allowed_ports: vec![addr.port()],
                    ..TargetPolicy::default()
                },
                ..FetchConfig::default()
            };
            let res = Resource {
                origin: addr,
                host: "bench".into(),
                request: request.clone(),
                validator: Validator::ETag(etag.clone()),
                total_len: LEN as u64,
            };
            let Ok(mut f) = RangeFetcher::new(res, cfg) else {
                return;
            };
            let mut out = vec![0u8; LEN];
            let t = Instant::now();
            let mut at = 0u64;
            while at < LEN as u64 {
                let end = (at + piece).min(LEN as u64);
                let r = f
                    .fetch_with(at..end, |o, c| {
                        out[o as usize..o as usize + c.len()].copy_from_slice(c);
                    })
                    .await;
                if let Err(e) = r {
                    eprintln!("fetch failed: {e}");
                    return;
                }
                at = end;
            }
            let secs = t.elapsed().as_secs_f64();
            assert!(out == content, "reassembly differs");
            println!(
                "piece {:>5} KiB chunk {:>3} KiB: {:>7.1} MiB/s ({} requests, {} connection)",
                piece / 1024,
                chunk / 1024,
                LEN as f64 / secs / 1048576.0,
                f.stats().requests,
                f.stats().connections
            );
        }
    }
}

async fn head_etag(addr: std::net::SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s.write_all(req.as_bytes()).await;
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    match tandem_http::ResponseHead::parse(&all) {
        Ok(Parse::Complete { head, .. }) => head.headers.get_str("etag").unwrap_or("").to_owned(),
        _ => String::new(),
    }
}
