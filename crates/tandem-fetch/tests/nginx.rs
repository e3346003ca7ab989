//! RangeFetcher against a real nginx on a loopback port (skipped with a
//! message when /usr/sbin/nginx is absent; CI installs nginx-light).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tandem_fetch::{FetchErrorClass, RangeFetcher};

const NGINX: &str = "/usr/sbin/nginx";

/// An nginx started by this test; killed (by its own pid) on drop.
struct Nginx {
    child: Child,
    prefix: PathBuf,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

impl Nginx {
    fn www(&self) -> PathBuf {
        self.prefix.join("www")
    }
}

async fn start_nginx(tag: &str) -> Option<Nginx> {
    if !Path::new(NGINX).exists() {
        println!("SKIP: {NGINX} not installed (apt-get install nginx-light)");
        return None;
    }
    let prefix = std::env::temp_dir().join(format!("tandem-nginx-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(prefix.join("www")).unwrap();
    std::fs::create_dir_all(prefix.join("tmp")).unwrap();
    // Pick a free port (tiny race with other processes; fine on a test box).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = prefix.display();
    let conf = format!(
        "daemon off;
master_process off;
worker_processes 1;
error_log {p}/error.log warn;
pid {p}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    types {{ video/mp4 mp4; application/octet-stream bin; }}
    default_type application/octet-stream;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        root {p}/www;
    }}
}}
"
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut nginx = Nginx {
        child,
        prefix,
        addr,
    };
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Some(nginx);
        }
        if let Ok(Some(status)) = nginx.child.try_wait() {
            let log = std::fs::read_to_string(nginx.prefix.join("error.log")).unwrap_or_default();
            panic!("nginx exited with {status}: {log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(nginx.prefix.join("error.log")).unwrap_or_default();
    panic!("nginx did not listen on {addr}: {log}");
}

#[tokio::test]
async fn fetcher_against_nginx() {
    let Some(nginx) = start_nginx("fetch").await else {
        return;
    };
    let content = data(4 * 1024 * 1024 + 123, 60);
    std::fs::write(nginx.www().join("movie.mp4"), &content).unwrap();
    let res = learn_resource(nginx.addr, "/movie.mp4").await;
    assert_eq!(res.total_len, content.len() as u64);
    println!("nginx validator: {}", res.validator);

    // The eligibility rules accept nginx's answer to the client's GET.
    let (head, _) = raw_exchange(
        nginx.addr,
        "GET /movie.mp4 HTTP/1.1\r\nHost: o\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 206);
    let (head, body) = raw_exchange(
        nginx.addr,
        "GET /movie.mp4 HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(body.len(), content.len());
    let client = client_request("/movie.mp4", "o");
    // The test client's request carries a cookie.
    let cfg = tandem_http::EligibilityConfig {
        allow_cookie: true,
        ..Default::default()
    };
    assert!(matches!(
        tandem_http::decide(&client, &head, &cfg),
        tandem_http::Decision::Accelerate { .. }
    ));

    let mut f = RangeFetcher::new(res, loopback_config(nginx.addr)).unwrap();
    let mut got = vec![0u8; content.len()];
    let piece = 256 * 1024 + 7;
    let mut at = 0u64;
    let mut n = 0;
    while at < content.len() as u64 {
        let end = (at + piece).min(content.len() as u64);
        f.fetch_with(at..end, |o, c| {
            got[o as usize..o as usize + c.len()].copy_from_slice(c);
        })
        .await
        .unwrap();
        at = end;
        n += 1;
    }
    assert!(got == content, "byte-identical reassembly from nginx");
    println!("{n} pieces from nginx, stats {:?}", f.stats());
    assert_eq!(f.stats().connections, 1, "keep-alive reused");

    // Pipelined: each next piece's request goes out while the current body
    // streams; nginx answers them in order on the same connection.
    let mut p = RangeFetcher::new(f.resource().clone(), loopback_config(nginx.addr)).unwrap();
    let total = content.len() as u64;
    let mut ranges: Vec<_> = (0..total.div_ceil(piece))
        .map(|k| k * piece..((k + 1) * piece).min(total))
        .collect();
    ranges.reverse();
    let mut got = vec![0u8; content.len()];
    let mut sent = 0;
    for (i, r) in ranges.iter().enumerate() {
        let mut body = p.fetch(r.clone()).await.unwrap();
        let mut first = true;
        while let Some((o, c)) = body.next_chunk().await.unwrap() {
            got[o as usize..o as usize + c.len()].copy_from_slice(c);
            if std::mem::take(&mut first) {
                if let Some(next) = ranges.get(i + 1) {
                    sent += usize::from(body.pipeline(next.clone()).await.unwrap());
                }
            }
        }
    }
    assert!(
        got == content,
        "byte-identical pipelined reassembly from nginx"
    );
    println!(
        "pipelined: {sent} of {} requests, stats {:?}",
        ranges.len(),
        p.stats()
    );
    assert_eq!(sent, ranges.len() - 1, "nginx takes pipelined requests");
    assert!(p.pipelining());
    assert_eq!(p.stats().connections, 1);
    assert_eq!(p.stats().requests, ranges.len() as u64);

    // Replace the file: nginx's If-Range fails, a full 200 comes back.
    // nginx's ETag is mtime-size: a different size changes it even within
    // the same mtime second.
    let tmp = nginx.www().join("movie.new");
    std::fs::write(&tmp, data(content.len() + 1, 61)).unwrap();
    std::fs::rename(&tmp, nginx.www().join("movie.mp4")).unwrap();
    let e = f.fetch(0..1000).await.unwrap_err();
    println!("after replacement: {e}");
    assert_eq!(e.class(), FetchErrorClass::ResourceChanged);
}
