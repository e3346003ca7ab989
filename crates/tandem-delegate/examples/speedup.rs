//! Prints how long a download takes through the delegation runtime with
//! 0..=3 neighbours, on loopback, against an origin that serves each TCP
//! connection at a fixed rate (a stand-in for per-router uplinks).
//!
//! `cargo run -p tandem-delegate --example speedup [MiB] [bytes_per_sec]`
//! (defaults 4 MiB at 1 000 000 B/s per connection). Figures, not a test:
//! compare the ratios within one run.

use std::net::SocketAddr;
use std::time::Instant;

use tandem_delegate::{Download, NeighbourConfig, Node, NodeConfig, ServeConfig, SessionConfig};
use tandem_fetch::{FetchConfig, OriginFiles, TargetPolicy, serve_origin};
use tandem_http::{Parse, RequestHead, ResponseHead};
use tandem_peer::KeyPair;
use tandem_plan::RangeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error>;

fn key(n: u8) -> Result<KeyPair, BoxError> {
    Ok(KeyPair::from_private([n; 32])?)
}

async fn validator(origin: SocketAddr) -> Result<tandem_http::Validator, BoxError> {
    let mut s = TcpStream::connect(origin).await?;
    s.write_all(b"GET /f HTTP/1.1\r\nHost: o\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    match ResponseHead::parse(&buf)? {
        Parse::Complete { head, .. } => head.validator().ok_or_else(|| "no validator".into()),
        Parse::Partial => Err("short response".into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let rate: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let len = mib << 20;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let files = OriginFiles::memory().with_rate_limit(Some(rate));
    files.insert("/f", data.clone());
    let ol = TcpListener::bind("127.0.0.1:0").await?;
    let origin = ol.local_addr()?;
    tokio::spawn(serve_origin(ol, files));
    let policy = TargetPolicy {
        allow_loopback: true,
        allowed_ports: vec![origin.port()],
        ..TargetPolicy::default()
    };
    let head = match RequestHead::parse(b"GET /f HTTP/1.1\r\nHost: o\r\n\r\n")? {
        Parse::Complete { head, .. } => head,
        Parse::Partial => return Err("partial".into()),
    };
    let validator = validator(origin).await?;
    println!("{mib} MiB, origin {rate} B/s per connection");
    println!("| neighbours | seconds | speed-up | bytes by source |");
    println!("|---|---|---|---|");
    let mut base = None;
    for n in 0..=3u8 {
        let ka = key(1)?;
        let mut neighbours = Vec::new();
        for i in 0..n {
            let kb = key(10 + i)?;
            let mut cfg = NodeConfig::new(
                format!("B{i}"),
                kb.clone(),
                vec![NeighbourConfig {
                    name: "A".into(),
                    key: ka.public(),
                    addr: None,
                    link_bps: 0,
                }],
            );
            cfg.serve = ServeConfig {
                target_policy: policy.clone(),
                ..ServeConfig::default()
            };
            let node = Node::new(cfg);
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            let nn = node.clone();
            tokio::spawn(async move { nn.serve(l).await });
            neighbours.push(NeighbourConfig {
                name: format!("B{i}"),
                key: kb.public(),
                addr: Some(addr),
                link_bps: 0,
            });
        }
        let a = Node::new(NodeConfig::new("A", ka, neighbours));
        let scfg = SessionConfig {
            local_fetch: Some(FetchConfig {
                policy: policy.clone(),
                ..FetchConfig::default()
            }),
            local_rate_bps: rate * 8,
            default_peer_rate_bps: rate * 8,
            wait_for_negotiation: true,
            ..SessionConfig::default()
        };
        let t0 = Instant::now();
        let mut s = a.open_session(
            Download {
                origin,
                request: head.clone(),
                validator: validator.clone(),
                body_length: len as u64,
                range: 0..len as u64,
            },
            scfg,
        )?;
        let mut buf = vec![0u8; len];
        let mut got = RangeSet::new();
        while let Some(c) = s.next().await? {
            let r = c.offset as usize..c.offset as usize + c.bytes.len();
            buf[r.clone()].copy_from_slice(&c.bytes);
            got.insert(r.start as u64..r.end as u64);
            s.delivered(got.contiguous_end(0));
        }
        let secs = t0.elapsed().as_secs_f64();
        if buf != data {
            return Err("reassembled body differs".into());
        }
        let base_s = *base.get_or_insert(secs);
        let by: Vec<String> = s
            .stats()
            .sources
            .iter()
            .map(|x| format!("{} {:.2} MiB", x.name, x.bytes as f64 / 1048576.0))
            .collect();
        println!(
            "| {n} | {secs:.2} | {:.2} | {} |",
            base_s / secs,
            by.join(", ")
        );
    }
    Ok(())
}
