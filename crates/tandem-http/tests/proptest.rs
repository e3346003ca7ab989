//! Property tests: no input makes the parsers panic, and heads round-trip.

use proptest::prelude::*;
use tandem_http::{
    ContentRange, Parse, RangeHeader, RequestHead, ResponseHead, Validator, range_request,
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
}
