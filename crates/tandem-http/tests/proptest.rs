//! Property tests: no input makes the parsers panic, and heads round-trip.

use proptest::prelude::*;
use tandem_http::{
    ContentRange, Decision, EligibilityConfig, Parse, RangeHeader, RequestHead, ResponseHead,
    Validator, decide, range_request,
};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,15}"
}

fn value() -> impl Strategy<Value = String> {
    // Visible ASCII and inner spaces, no leading/trailing whitespace.
    "[!-~]([ !-~]{0,30}[!-~])?"
}

fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((token(), value()), 0..20)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = RequestHead::parse(&buf);
        if let Ok(Parse::Complete { head, head_len }) = ResponseHead::parse(&buf) {
            prop_assert!(head_len <= buf.len());
            let _ = head.content_length();
            let _ = head.validator();
        }
        let _ = ContentRange::parse(&buf);
        let _ = RangeHeader::parse(&buf);
        if let Ok(text) = std::str::from_utf8(&buf) {
            let _ = tandem_http::parse_http_date(text);
        }
    }

    #[test]
    fn http_date_parser_never_panics(s in "[A-Za-z0-9,: ]{29}", t in "\\PC{0,40}") {
        let _ = tandem_http::parse_http_date(&s);
        let _ = tandem_http::parse_http_date(&t);
    }

    #[test]
    fn parsers_never_panic_on_headish_input(
        prefix in prop::sample::select(vec!["GET / HTTP/1.1\r\n", "HTTP/1.1 200 OK\r\n", "HTTP/1.1 206 P\r\nContent-Range: ", "GET / HTTP/1.1\r\nRange: bytes="]),
        tail in prop::collection::vec(prop::sample::select(b"0123456789-,/: \r\nabcbytes*\"W".to_vec()), 0..200),
    ) {
        let mut buf = prefix.as_bytes().to_vec();
        buf.extend_from_slice(&tail);
        let _ = RequestHead::parse(&buf);
        if let Ok(Parse::Complete { head, .. }) = ResponseHead::parse(&buf) {
            let _ = head.content_length();
            let _ = head.validator();
        }
        let _ = ContentRange::parse(&tail);
        let _ = RangeHeader::parse(&tail);
    }

    #[test]
    fn request_round_trip(method in "[A-Z]{1,8}", target in "/[!-~]{0,40}", v in 0u8..=1, f in fields(), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut s = format!("{method} {target} HTTP/1.{v}\r\n");
        for (n, val) in &f { s.push_str(&format!("{n}: {val}\r\n")); }
        s.push_str("\r\n");
        let head_end = s.len();
        let mut buf = s.into_bytes();
        buf.extend_from_slice(&body);
        let Parse::Complete { head, head_len } = RequestHead::parse(&buf).unwrap() else { panic!("partial") };
        prop_assert_eq!(head_len, head_end);
        prop_assert_eq!(&head.method, &method);
        prop_assert_eq!(&head.target, &target);
        prop_assert_eq!(head.version, v);
        prop_assert_eq!(head.headers.len(), f.len());
        for ((n, val), (pn, pv)) in f.iter().zip(head.headers.iter()) {
            prop_assert_eq!(n.as_str(), pn);
            prop_assert_eq!(val.as_bytes(), pv);
        }
        prop_assert_eq!(head.to_bytes(), &buf[..head_end]);
        // Every strict prefix is Partial (or an error for none of them).
        for cut in [0, head_end / 2, head_end - 1] {
            prop_assert_eq!(RequestHead::parse(&buf[..cut]), Ok(Parse::Partial));
        }
    }

    #[test]
    fn response_round_trip(status in 100u16..1000, reason in "[A-Za-z ]{0,20}", f in fields(), len in any::<u64>()) {
        let mut s = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\n");
        for (n, val) in &f {
            if n.eq_ignore_ascii_case("content-length") { continue; }
            s.push_str(&format!("{n}: {val}\r\n"));
        }
        s.push_str("\r\n");
        let Parse::Complete { head, head_len } = ResponseHead::parse(s.as_bytes()).unwrap() else { panic!("partial") };
        prop_assert_eq!(head_len, s.len());
        prop_assert_eq!(head.status, status);
        prop_assert_eq!(head.content_length(), Ok(Some(len)));
        prop_assert_eq!(head.to_bytes(), s.as_bytes());
    }

    #[test]
    fn content_range_round_trip(a in any::<u64>(), b in any::<u64>(), c in any::<u64>()) {
        let mut v = [a, b, c];
        v.sort();
        let [first, last, total] = v;
        let s = format!("bytes {first}-{last}/{total}");
        let parsed = ContentRange::parse(s.as_bytes());
        if last < total {
            let cr = parsed.unwrap();
            prop_assert_eq!((cr.first, cr.last, cr.complete_len), (first, last, Some(total)));
        } else {
            prop_assert!(parsed.is_err());
        }
    }

    #[test]
    fn range_request_parses_back(start in 0u64..u64::MAX, len in 1u64..1_000_000, f in fields(), etag in "[a-zA-Z0-9]{0,20}") {
        let end = start.saturating_add(len);
        prop_assume!(start < end);
        let mut s = String::from("GET /x HTTP/1.1\r\n");
        for (n, val) in &f { s.push_str(&format!("{n}: {val}\r\n")); }
        s.push_str("\r\n");
        let Parse::Complete { head: req, .. } = RequestHead::parse(s.as_bytes()).unwrap() else { panic!("partial") };
        let v = Validator::ETag(format!("\"{etag}\""));
        let out = range_request(&req, start..end, &v, "origin.test:8080").unwrap();
        let Parse::Complete { head, head_len } = RequestHead::parse(&out).unwrap() else { panic!("partial") };
        prop_assert_eq!(head_len, out.len());
        prop_assert_eq!(head.method.as_str(), "GET");
        prop_assert_eq!(head.host(), Some("origin.test:8080"));
        let want_range = format!("bytes={}-{}", start, end - 1);
        prop_assert_eq!(head.headers.get_str("range"), Some(want_range.as_str()));
        prop_assert_eq!(head.headers.get_str("if-range"), Some(v.as_header_value()));
        prop_assert_eq!(head.headers.get_all("range").count(), 1);
        prop_assert!(!head.headers.contains("cookie"));
        prop_assert!(!head.headers.contains("authorization"));
        let spec = RangeHeader::parse(head.headers.get("range").unwrap());
        let RangeHeader::Single(spec) = spec else { panic!("ignored") };
        prop_assert_eq!(spec.resolve(u64::MAX), Some(start..end));
    }

    #[test]
    fn decide_never_panics_and_accelerates_only_sound_downloads(
        req_extra in prop::collection::vec((prop::sample::select(vec!["Range", "Cookie", "Authorization", "If-None-Match", "User-Agent", "Content-Length", "Expect"]), prop::sample::select(vec!["bytes=0-", "0", "5", "a=b", "\"v\""])), 0..2),
        keep in prop::collection::vec(prop::bool::weighted(0.9), 7),
        resp_extra in prop::collection::vec((prop::sample::select(vec!["Content-Length", "Accept-Ranges", "ETag", "Last-Modified", "Date", "Content-Type", "Transfer-Encoding", "Content-Encoding", "Content-Range"]), prop::sample::select(vec!["bytes", "\"v\"", "W/\"v\"", "video/mp4", "text/html", "chunked", "gzip", "identity", "5000000", "12", "x", "Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:38 GMT", "0"])), 0..2),
        method in prop::sample::select(vec!["GET", "GET", "GET", "HEAD", "POST"]),
        status in prop::sample::select(vec![200u16, 200, 200, 206, 304, 404]),
    ) {
        let mut r = format!("{method} / HTTP/1.1\r\nHost: h\r\n");
        for (n, v) in &req_extra { r.push_str(&format!("{n}: {v}\r\n")); }
        r.push_str("\r\n");
        let base = [
            ("Content-Length", "5000000"),
            ("Accept-Ranges", "bytes"),
            ("ETag", "\"v1\""),
            ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("Date", "Sun, 06 Nov 1994 08:49:38 GMT"),
            ("Content-Type", "video/mp4"),
            ("Server", "x"),
        ];
        let mut s = format!("HTTP/1.1 {status} X\r\n");
        for ((n, v), k) in base.iter().zip(&keep) {
            if *k { s.push_str(&format!("{n}: {v}\r\n")); }
        }
        for (n, v) in &resp_extra { s.push_str(&format!("{n}: {v}\r\n")); }
        s.push_str("\r\n");
        let Parse::Complete { head: req, .. } = RequestHead::parse(r.as_bytes()).unwrap() else { panic!("partial") };
        let Parse::Complete { head: resp, .. } = ResponseHead::parse(s.as_bytes()).unwrap() else { panic!("partial") };
        let cfg = EligibilityConfig::default();
        let decision = decide(&req, &resp, &cfg);
        if let Decision::Accelerate { body_len, validator } = decision {
            prop_assert_eq!(req.method.as_str(), "GET");
            prop_assert_eq!(resp.status, 200);
            prop_assert!(body_len >= cfg.min_size);
            prop_assert_eq!(resp.content_length(), Ok(Some(body_len)));
            prop_assert!(resp.headers.has_token("accept-ranges", "bytes"));
            for h in ["range", "cookie", "authorization", "if-none-match", "expect"] {
                prop_assert!(!req.headers.contains(h), "{}", h);
            }
            prop_assert!(req.headers.get_all("content-length").all(|v| v == b"0"));
            prop_assert!(!resp.headers.contains("transfer-encoding"));
            prop_assert!(!resp.headers.contains("content-range"));
            prop_assert!(resp.headers.get_all("content-encoding").all(|v| v == b"identity"));
            prop_assert!(tandem_http::content_type_matches(resp.headers.get_str("content-type").unwrap_or(""), &cfg.content_types));
            prop_assert_eq!(Some(validator), resp.validator());
        } else if method == "GET" && status == 200 && req_extra.is_empty() && resp_extra.is_empty() && keep[..6].iter().all(|&k| k) {
            prop_assert!(false, "a sound download was passed through: {:?}", decision);
        }
    }
}
