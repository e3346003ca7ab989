//! Byte ranges: the Range request a piece fetch sends, the `Content-Range`
//! of its answer, and the `Range` header an origin server receives.
//!
//! Ranges in this API are half-open `std::ops::Range<u64>` (`start..end`,
//! `end` excluded); on the wire HTTP uses inclusive last positions, and the
//! conversion happens only here.

use std::ops::Range;

use crate::head::{RequestHead, Validator, parse_decimal, trim_ows};

/// Request header fields of the client that a piece fetch forwards
/// (end-to-end, carry no credentials, do not change the representation).
///
/// Everything else is dropped: `Cookie`, `Authorization`, `Range`, `If-*`,
/// hop-by-hop fields (`Connection`, `Keep-Alive`, `TE`, `Upgrade`, ...),
/// `Proxy-*`, and `Accept-Encoding` (pieces are always requested with
/// `Accept-Encoding: identity` so the bytes match the client's body).
pub const FORWARDED_HEADERS: [&str; 6] = [
    "user-agent",
    "accept",
    "accept-language",
    "referer",
    "cache-control",
    "pragma",
];

/// Why a Range request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeRequestError {
    /// The range is empty (`start >= end`); HTTP cannot express it.
    #[error("empty byte range {start}..{end}")]
    EmptyRange {
        /// Requested start.
        start: u64,
        /// Requested (exclusive) end.
        end: u64,
    },
    /// Host, target or validator contains bytes not allowed in a head
    /// (control characters, CR/LF, non-ASCII) or is empty.
    #[error("{0} is not valid in an HTTP head")]
    InvalidField(&'static str),
}

/// Build the head of a Range request for `range` of the resource `req`
/// asked for: `GET <req.target> HTTP/1.1`, `Host: <host>`,
/// `Range: bytes=<start>-<end-1>`, `If-Range: <validator>`,
/// `Accept-Encoding: identity`, the client's [`FORWARDED_HEADERS`], and
/// `Connection: keep-alive`.
pub fn range_request(
    req: &RequestHead,
    range: Range<u64>,
    validator: &Validator,
    host: &str,
) -> Result<Vec<u8>, RangeRequestError> {
    if range.start >= range.end {
        return Err(RangeRequestError::EmptyRange {
            start: range.start,
            end: range.end,
        });
    }
    check_field("host", host.as_bytes(), false)?;
    check_field("target", req.target.as_bytes(), false)?;
    check_field("validator", validator.as_header_value().as_bytes(), true)?;

    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        format!(
            "\r\nRange: bytes={}-{}\r\nIf-Range: ",
            range.start,
            range.end - 1
        )
        .as_bytes(),
    );
    out.extend_from_slice(validator.as_header_value().as_bytes());
    out.extend_from_slice(b"\r\nAccept-Encoding: identity\r\n");
    for (name, value) in req.headers.iter() {
        if FORWARDED_HEADERS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name))
            && value
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
    Ok(out)
}

/// Visible ASCII only (spaces too if `allow_space`), non-empty.
fn check_field(what: &'static str, v: &[u8], allow_space: bool) -> Result<(), RangeRequestError> {
    let ok = !v.is_empty()
        && v.iter()
            .all(|&b| (0x21..0x7f).contains(&b) || (allow_space && b == b' '));
    if ok {
        Ok(())
    } else {
        Err(RangeRequestError::InvalidField(what))
    }
}

/// A parsed `Content-Range: bytes first-last/complete` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte position (inclusive).
    pub first: u64,
    /// Last byte position (inclusive).
    pub last: u64,
    /// Total length of the representation; `None` for `/*` (unknown).
    pub complete_len: Option<u64>,
}

/// Why a `Content-Range` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentRangeError {
    /// Not of the form `bytes first-last/complete` (unit, spaces, digits).
    #[error("malformed Content-Range")]
    Malformed,
    /// `first > last`, or `last >= complete`.
    #[error("inconsistent Content-Range positions")]
    Inconsistent,
}

impl ContentRange {
    /// Parse a `Content-Range` value strictly: range unit `bytes`
    /// (case-insensitive), one space, decimal first and last positions, `/`,
    /// a decimal complete length or `*`. Surrounding spaces are trimmed;
    /// nothing else is tolerated. The unsatisfied form `bytes */len` is an
    /// error here (it only appears in 416 responses).
    pub fn parse(value: &[u8]) -> Result<Self, ContentRangeError> {
        let v = trim_ows(value);
        let rest = v
            .get(..6)
            .filter(|u| u.eq_ignore_ascii_case(b"bytes "))
            .and_then(|_| v.get(6..))
            .ok_or(ContentRangeError::Malformed)?;
        let slash = rest
            .iter()
            .position(|&b| b == b'/')
            .ok_or(ContentRangeError::Malformed)?;
        let (range, complete) = (&rest[..slash], &rest[slash + 1..]);
        let dash = range
            .iter()
            .position(|&b| b == b'-')
            .ok_or(ContentRangeError::Malformed)?;
        let first = parse_decimal(&range[..dash]).ok_or(ContentRangeError::Malformed)?;
        let last = parse_decimal(&range[dash + 1..]).ok_or(ContentRangeError::Malformed)?;
        let complete_len = if complete == b"*" {
            None
        } else {
            Some(parse_decimal(complete).ok_or(ContentRangeError::Malformed)?)
        };
        if first > last || complete_len.is_some_and(|c| last >= c) {
            return Err(ContentRangeError::Inconsistent);
        }
        Ok(ContentRange {
            first,
            last,
            complete_len,
        })
    }

    /// The half-open range `first..last+1`.
    pub fn range(&self) -> Range<u64> {
        // last < complete_len <= u64::MAX or last came from a u64 that we
        // refuse to overflow: saturate rather than wrap.
        self.first..self.last.saturating_add(1)
    }

    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            (self.last - self.first).saturating_add(1)
        }
    }

    /// Whether the range holds no byte (never true for a parsed value).
    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }
}

/// One byte-range-spec of a `Range: bytes=...` request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRangeSpec {
    /// `bytes=first-last` (inclusive).
    FromTo(u64, u64),
    /// `bytes=first-` (to the end).
    From(u64),
    /// `bytes=-n` (the last n bytes).
    Suffix(u64),
}

/// What an origin server makes of a `Range` request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeHeader {
    /// A single byte range.
    Single(ByteRangeSpec),
    /// Syntactically invalid, another unit, or several ranges: a server
    /// that does not support these ignores the header (RFC 9110 14.2) and
    /// sends the whole representation.
    Ignore,
}

impl RangeHeader {
    /// Parse a `Range` header value (`bytes=a-b`, `bytes=a-`, `bytes=-n`).
    pub fn parse(value: &[u8]) -> Self {
        let v = trim_ows(value);
        let Some(spec) = v
            .get(..6)
            .filter(|u| u.eq_ignore_ascii_case(b"bytes="))
            .and_then(|_| v.get(6..))
            .map(trim_ows)
        else {
            return RangeHeader::Ignore;
        };
        if spec.contains(&b',') {
            return RangeHeader::Ignore;
        }
        let Some(dash) = spec.iter().position(|&b| b == b'-') else {
            return RangeHeader::Ignore;
        };
        let (a, b) = (&spec[..dash], &spec[dash + 1..]);
        let parsed = match (a.is_empty(), b.is_empty()) {
            (true, false) => parse_decimal(b).map(ByteRangeSpec::Suffix),
            (false, true) => parse_decimal(a).map(ByteRangeSpec::From),
            (false, false) => match (parse_decimal(a), parse_decimal(b)) {
                (Some(f), Some(l)) if f <= l => Some(ByteRangeSpec::FromTo(f, l)),
                _ => None,
            },
            (true, true) => None,
        };
        parsed.map_or(RangeHeader::Ignore, RangeHeader::Single)
    }
}

impl ByteRangeSpec {
    /// The half-open range this spec selects of a representation of
    /// `len` bytes, or `None` if unsatisfiable (answer 416).
    pub fn resolve(&self, len: u64) -> Option<Range<u64>> {
        match *self {
            ByteRangeSpec::FromTo(f, l) if f < len => Some(f..l.min(len - 1) + 1),
            ByteRangeSpec::From(f) if f < len => Some(f..len),
            ByteRangeSpec::Suffix(n) if n > 0 && len > 0 => Some(len - n.min(len)..len),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Parse;

    fn req(s: &str) -> RequestHead {
        match RequestHead::parse(s.as_bytes()).unwrap() {
            Parse::Complete { head, .. } => head,
            Parse::Partial => panic!("partial"),
        }
    }

    #[test]
    fn builds_range_request_with_safe_headers_only() {
        let r = req(
            "GET /v.mp4?a=1 HTTP/1.1\r\nHost: client-host\r\nUser-Agent: curl/8\r\nCookie: s=1\r\nAuthorization: Basic x\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nRange: bytes=0-\r\nIf-None-Match: \"x\"\r\nConnection: close\r\nProxy-Authorization: y\r\nReferer: http://a/\r\nX-Custom: z\r\n\r\n",
        );
        let out = range_request(
            &r,
            100..200,
            &Validator::ETag("\"v1\"".into()),
            "origin.test",
        )
        .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "GET /v.mp4?a=1 HTTP/1.1\r\nHost: origin.test\r\nRange: bytes=100-199\r\nIf-Range: \"v1\"\r\nAccept-Encoding: identity\r\nUser-Agent: curl/8\r\nAccept: */*\r\nReferer: http://a/\r\nConnection: keep-alive\r\n\r\n"
        );
        // And it parses back.
        let back = req(&text);
        assert_eq!(back.headers.get_str("range"), Some("bytes=100-199"));
    }

    #[test]
    fn last_modified_if_range() {
        let r = req("GET / HTTP/1.1\r\n\r\n");
        let v = Validator::LastModified("Tue, 15 Nov 1994 08:12:31 GMT".into());
        let out = String::from_utf8(range_request(&r, 0..1, &v, "h").unwrap()).unwrap();
        assert!(out.contains("\r\nRange: bytes=0-0\r\n"));
        assert!(out.contains("\r\nIf-Range: Tue, 15 Nov 1994 08:12:31 GMT\r\n"));
    }

    #[test]
    fn range_request_refuses_bad_input() {
        let r = req("GET / HTTP/1.1\r\n\r\n");
        let v = Validator::ETag("\"v\"".into());
        assert_eq!(
            range_request(&r, 5..5, &v, "h"),
            Err(RangeRequestError::EmptyRange { start: 5, end: 5 })
        );
        assert_eq!(
            range_request(&r, 0..1, &v, "h\r\nX: y"),
            Err(RangeRequestError::InvalidField("host"))
        );
        assert_eq!(
            range_request(&r, 0..1, &v, ""),
            Err(RangeRequestError::InvalidField("host"))
        );
        let bad = Validator::ETag("\"v\"\r\nX: 1".into());
        assert_eq!(
            range_request(&r, 0..1, &bad, "h"),
            Err(RangeRequestError::InvalidField("validator"))
        );
        let mut r2 = r.clone();
        r2.target = "/a b".into();
        assert_eq!(
            range_request(&r2, 0..1, &v, "h"),
            Err(RangeRequestError::InvalidField("target"))
        );
        assert!(range_request(&r, u64::MAX - 1..u64::MAX, &v, "h").is_ok());
    }

    #[test]
    fn content_range_strict() {
        assert_eq!(
            ContentRange::parse(b"bytes 0-9/10"),
            Ok(ContentRange {
                first: 0,
                last: 9,
                complete_len: Some(10)
            })
        );
        assert_eq!(
            ContentRange::parse(b" Bytes 5-5/*"),
            Ok(ContentRange {
                first: 5,
                last: 5,
                complete_len: None
            })
        );
        let cr = ContentRange::parse(b"bytes 100-199/1000").unwrap();
        assert_eq!(cr.range(), 100..200);
        assert_eq!(cr.len(), 100);
        for bad in [
            &b"bytes 0-9"[..],
            b"bytes=0-9/10",
            b"bytes  0-9/10",
            b"bytes 0 -9/10",
            b"bytes -9/10",
            b"bytes 0-/10",
            b"bytes */10",
            b"items 0-9/10",
            b"bytes 0-9/10/11",
            b"bytes 0-9/1x",
            b"bytes 0-9/-10",
            b"bytes 0-99999999999999999999/10",
            b"",
        ] {
            assert_eq!(
                ContentRange::parse(bad),
                Err(ContentRangeError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            ContentRange::parse(b"bytes 9-0/10"),
            Err(ContentRangeError::Inconsistent)
        );
        assert_eq!(
            ContentRange::parse(b"bytes 0-10/10"),
            Err(ContentRangeError::Inconsistent)
        );
    }

    #[test]
    fn range_header_forms() {
        use ByteRangeSpec::*;
        assert_eq!(
            RangeHeader::parse(b"bytes=0-499"),
            RangeHeader::Single(FromTo(0, 499))
        );
        assert_eq!(
            RangeHeader::parse(b"bytes=500-"),
            RangeHeader::Single(From(500))
        );
        assert_eq!(
            RangeHeader::parse(b"bytes=-500"),
            RangeHeader::Single(Suffix(500))
        );
        assert_eq!(
            RangeHeader::parse(b"Bytes= 1-2 "),
            RangeHeader::Single(FromTo(1, 2))
        );
        for bad in [
            &b"bytes=0-1,5-6"[..],
            b"bytes=5-1",
            b"bytes=-",
            b"bytes=a-b",
            b"items=0-1",
            b"bytes 0-1",
            b"",
        ] {
            assert_eq!(RangeHeader::parse(bad), RangeHeader::Ignore, "{bad:?}");
        }
    }

    #[test]
    fn resolve_against_length() {
        use ByteRangeSpec::*;
        assert_eq!(FromTo(0, 499).resolve(1000), Some(0..500));
        assert_eq!(FromTo(900, 2000).resolve(1000), Some(900..1000));
        assert_eq!(FromTo(1000, 2000).resolve(1000), None);
        assert_eq!(From(999).resolve(1000), Some(999..1000));
        assert_eq!(From(1000).resolve(1000), None);
        assert_eq!(Suffix(10).resolve(1000), Some(990..1000));
        assert_eq!(Suffix(5000).resolve(1000), Some(0..1000));
        assert_eq!(Suffix(0).resolve(1000), None);
        assert_eq!(Suffix(5).resolve(0), None);
        assert_eq!(From(0).resolve(0), None);
        assert_eq!(FromTo(0, u64::MAX).resolve(u64::MAX), Some(0..u64::MAX));
    }
}
