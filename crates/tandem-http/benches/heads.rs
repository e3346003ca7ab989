//! Cost of the per-flow HTTP work on the router: parsing the request and
//! response heads, deciding eligibility, building a Range request.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_http::{
    ContentRange, EligibilityConfig, Parse, RequestHead, ResponseHead, decide, range_request,
};

const REQ: &[u8] = b"GET /videos/2026/big-buck-bunny-1080p.mp4?token=abcdef HTTP/1.1\r\nHost: media.example.net\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0\r\nAccept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\nReferer: http://media.example.net/watch\r\nConnection: keep-alive\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 21 Nov 2026 10:00:00 GMT\r\nContent-Type: video/mp4\r\nContent-Length: 734003200\r\nLast-Modified: Mon, 02 Nov 2026 09:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"6b01800e-2bc00000\"\r\nAccept-Ranges: bytes\r\n\r\n";

fn heads(c: &mut Criterion) {
    c.bench_function("parse_request_head", |b| {
        b.iter(|| RequestHead::parse(black_box(REQ)))
    });
    c.bench_function("parse_response_head", |b| {
        b.iter(|| ResponseHead::parse(black_box(RESP)))
    });
    let (Ok(Parse::Complete { head: req, .. }), Ok(Parse::Complete { head: resp, .. })) =
        (RequestHead::parse(REQ), ResponseHead::parse(RESP))
    else {
        return;
    };
    let cfg = EligibilityConfig::default();
    c.bench_function("decide", |b| {
        b.iter(|| decide(black_box(&req), black_box(&resp), &cfg))
    });
    let Some(v) = resp.validator() else { return };
    c.bench_function("range_request", |b| {
        b.iter(|| {
            range_request(
                black_box(&req),
                1_048_576..2_097_152,
                &v,
                "media.example.net",
            )
        })
    });
    c.bench_function("content_range_parse", |b| {
        b.iter(|| ContentRange::parse(black_box(b"bytes 1048576-2097151/734003200")))
    });
}

criterion_group!(benches, heads);
criterion_main!(benches);
