//! HTTP/1.x request and response heads, parsed with `httparse`.
//!
//! Heads come from the network (a client's request, an origin's response, a
//! neighbour's fetch), so everything here is bounded and fallible: a head is
//! at most [`MAX_HEAD_LEN`] bytes and [`MAX_HEADERS`] header fields, and no
//! input makes these functions panic.

use std::fmt;

/// Largest head (request/status line, header fields and the blank line) we
/// accept. A longer head is [`HeadError::TooLarge`].
pub const MAX_HEAD_LEN: usize = 16 * 1024;

/// Largest number of header fields we accept in one head. More is
/// [`HeadError::TooManyHeaders`].
pub const MAX_HEADERS: usize = 100;

/// Result of trying to parse a head from the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// The head is complete; it occupies `buf[..head_len]` and the body (if
    /// any) starts at `head_len`.
    Complete {
        /// The parsed head.
        head: T,
        /// Length in bytes of the head, including the final blank line.
        head_len: usize,
    },
    /// More bytes are needed. The caller must keep at most
    /// [`MAX_HEAD_LEN`] bytes: once the buffer is that long and still
    /// partial, `parse` returns [`HeadError::TooLarge`].
    Partial,
}

/// Why a head could not be parsed or interpreted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is longer than [`MAX_HEAD_LEN`].
    #[error("HTTP head larger than {MAX_HEAD_LEN} bytes")]
    TooLarge,
    /// The head has more than [`MAX_HEADERS`] header fields.
    #[error("HTTP head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The head is not valid HTTP/1.x syntax (httparse's reason).
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    /// A `Content-Length` value is not a non-negative decimal integer that
    /// fits in a u64.
    #[error("invalid Content-Length value")]
    InvalidContentLength,
    /// Several `Content-Length` values disagree.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
}

impl From<httparse::Error> for HeadError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
            other => HeadError::Malformed(other.to_string()),
        }
    }
}

/// Header fields of a head, in the order they were received.
///
/// Names keep their original spelling; look-ups are ASCII case-insensitive.
/// Values are raw bytes (HTTP allows obs-text), see [`Headers::get_str`] for
/// a textual view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a field. Fails with [`HeadError::TooManyHeaders`] past
    /// [`MAX_HEADERS`] fields.
    pub fn push(&mut self, name: &str, value: &[u8]) -> Result<(), HeadError> {
        if self.fields.len() >= MAX_HEADERS {
            return Err(HeadError::TooManyHeaders);
        }
        self.fields.push((name.to_owned(), value.to_vec()));
        Ok(())
    }

    /// Value of the first field named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Value of the first field named `name`, trimmed of spaces and tabs,
    /// if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|s| s.trim_matches([' ', '\t']))
    }

    /// Values of every field named `name`, in order.
    pub fn get_all<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether at least one field is named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether some field named `name` has, in its comma-separated list of
    /// values, the token `token` (ASCII case-insensitive), e.g.
    /// `has_token("accept-ranges", "bytes")`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    fn from_httparse(raw: &[httparse::Header<'_>]) -> Self {
        Headers {
            fields: raw
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
        }
    }
}

/// Trim optional whitespace (SP / HTAB) from both ends.
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// A parsed HTTP/1.x request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Request target as sent, e.g. `/video.mp4?x=1`.
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Header fields.
    pub headers: Headers,
}

/// A parsed HTTP/1.x response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Header fields.
    pub headers: Headers,
}

/// A validator that identifies one version of a resource, usable in
/// `If-Range`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Validator {
    /// A strong entity tag, stored with its quotes, e.g. `"abc123"`.
    ETag(String),
    /// A `Last-Modified` HTTP-date, stored as sent (trimmed).
    LastModified(String),
}

impl Validator {
    /// The value to put in an `If-Range` header field.
    pub fn as_header_value(&self) -> &str {
        match self {
            Validator::ETag(t) => t,
            Validator::LastModified(d) => d,
        }
    }

    /// Whether `resp` carries the same validator (same strong ETag, or same
    /// Last-Modified date, byte for byte after trimming).
    ///
    /// A response that carries no field of this validator's kind does not
    /// match: a resource that lost its ETag is treated as changed.
    pub fn matches(&self, resp: &ResponseHead) -> bool {
        match self {
            Validator::ETag(t) => resp.headers.get_str("etag") == Some(t.as_str()),
            Validator::LastModified(d) => resp.headers.get_str("last-modified") == Some(d.as_str()),
        }
    }
}

impl fmt::Display for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_header_value())
    }
}

/// Whether `v` is a strong entity-tag: `"` *etagc `"` (RFC 9110 8.8.3),
/// where etagc is `!` or `#`..`~` or obs-text, but we accept only visible
/// ASCII to keep the value a `&str`.
pub fn is_strong_etag(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 2
        && b[0] == b'"'
        && b[b.len() - 1] == b'"'
        && b[1..b.len() - 1]
            .iter()
            .all(|&c| c == 0x21 || (0x23..=0x7e).contains(&c))
}

fn check_partial(buf: &[u8]) -> Result<(), HeadError> {
    if buf.len() >= MAX_HEAD_LEN {
        Err(HeadError::TooLarge)
    } else {
        Ok(())
    }
}

impl RequestHead {
    /// Parse a request head from the start of `buf`.
    ///
    /// Returns [`Parse::Partial`] if `buf` holds the beginning of a valid
    /// head, [`HeadError::TooLarge`] once `buf` reaches [`MAX_HEAD_LEN`]
    /// bytes without a complete head.
    pub fn parse(buf: &[u8]) -> Result<Parse<Self>, HeadError> {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut raw);
        match req.parse(buf)? {
            httparse::Status::Partial => check_partial(buf).map(|()| Parse::Partial),
            httparse::Status::Complete(head_len) => {
                if head_len > MAX_HEAD_LEN {
                    return Err(HeadError::TooLarge);
                }
                let (Some(method), Some(target), Some(version)) =
                    (req.method, req.path, req.version)
                else {
                    return Err(HeadError::Malformed("incomplete request line".into()));
                };
                Ok(Parse::Complete {
                    head: RequestHead {
                        method: method.to_owned(),
                        target: target.to_owned(),
                        version,
                        headers: Headers::from_httparse(req.headers),
                    },
                    head_len,
                })
            }
        }
    }

    /// The host the request is for: the `Host` header (trimmed), or for an
    /// absolute-form target (`http://host/...`) its authority.
    pub fn host(&self) -> Option<&str> {
        if let Some(h) = self.headers.get_str("host") {
            if !h.is_empty() {
                return Some(h);
            }
        }
        let rest = self
            .target
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &self.target[7..])?;
        let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
        (!auth.is_empty()).then_some(auth)
    }

    /// Serialize the head (request line, fields, blank line).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(if self.version == 0 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        write_fields(&mut out, &self.headers);
        out
    }
}

impl ResponseHead {
    /// Parse a response head from the start of `buf`; same contract as
    /// [`RequestHead::parse`].
    pub fn parse(buf: &[u8]) -> Result<Parse<Self>, HeadError> {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut raw);
        match resp.parse(buf)? {
            httparse::Status::Partial => check_partial(buf).map(|()| Parse::Partial),
            httparse::Status::Complete(head_len) => {
                if head_len > MAX_HEAD_LEN {
                    return Err(HeadError::TooLarge);
                }
                let (Some(status), Some(version)) = (resp.code, resp.version) else {
                    return Err(HeadError::Malformed("incomplete status line".into()));
                };
                Ok(Parse::Complete {
                    head: ResponseHead {
                        status,
                        reason: resp.reason.unwrap_or("").to_owned(),
                        version,
                        headers: Headers::from_httparse(resp.headers),
                    },
                    head_len,
                })
            }
        }
    }

    /// The body length announced by `Content-Length`, if any.
    ///
    /// Several fields, or a comma-separated list, are accepted only if all
    /// values are equal (RFC 9110 8.6); otherwise
    /// [`HeadError::ConflictingContentLength`]. A value that is not plain
    /// decimal digits, or overflows u64, is
    /// [`HeadError::InvalidContentLength`].
    pub fn content_length(&self) -> Result<Option<u64>, HeadError> {
        let mut found: Option<u64> = None;
        for v in self.headers.get_all("content-length") {
            for item in v.split(|&b| b == b',') {
                let n = parse_decimal(trim_ows(item)).ok_or(HeadError::InvalidContentLength)?;
                match found {
                    Some(prev) if prev != n => return Err(HeadError::ConflictingContentLength),
                    _ => found = Some(n),
                }
            }
        }
        Ok(found)
    }

    /// The strongest validator the response carries: a strong `ETag` if
    /// present (weak `W/"..."` tags are ignored), else a *strong*
    /// `Last-Modified` date.
    ///
    /// Following RFC 9110 8.8.2.2 and 13.1.5, a `Last-Modified` date is
    /// strong (usable in `If-Range`) only if the response also has a
    /// `Date` and the modification time is at least one second before it:
    /// a resource modified within the second of the response could change
    /// again without its date changing. Both must be IMF-fixdates
    /// (`Sun, 06 Nov 1994 08:49:37 GMT`); other date forms are treated as
    /// weak.
    pub fn validator(&self) -> Option<Validator> {
        if let Some(t) = self.headers.get_str("etag") {
            if is_strong_etag(t) {
                return Some(Validator::ETag(t.to_owned()));
            }
        }
        let lm = self.headers.get_str("last-modified")?;
        let modified = parse_http_date(lm)?;
        let date = parse_http_date(self.headers.get_str("date")?)?;
        (modified < date).then(|| Validator::LastModified(lm.to_owned()))
    }

    /// Serialize the head (status line, fields, blank line).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(if self.version == 0 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_fields(&mut out, &self.headers);
        out
    }
}

fn write_fields(out: &mut Vec<u8>, headers: &Headers) {
    for (n, v) in headers.iter() {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parse an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110
/// 5.6.7) into seconds since the Unix epoch. Returns `None` for any other
/// form, including the obsolete RFC 850 and asctime forms, and for dates
/// before 1970.
pub fn parse_http_date(s: &str) -> Option<u64> {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = s.as_bytes();
    if b.len() != 29
        || &b[3..5] != b", "
        || b[7] != b' '
        || b[11] != b' '
        || b[16] != b' '
        || b[19] != b':'
        || b[22] != b':'
        || &b[25..] != b" GMT"
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| parse_decimal(&b[r]);
    let weekday = DAYS.iter().position(|d| d.as_bytes() == &b[0..3])?;
    let month = MONTHS.iter().position(|m| m.as_bytes() == &b[8..11])? as u64 + 1;
    let (day, year) = (num(5..7)?, num(12..16)?);
    let (hour, min, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if year < 1970
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // 1970-01-01 was a Thursday (index 3).
    if (days + 3) % 7 != weekday as u64 {
        return None;
    }
    Some(days * 86_400 + hour * 3600 + min * 60 + sec)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (year >= 1970), proleptic
/// Gregorian (H. Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse a non-empty string of ASCII digits as u64 (no sign, no spaces).
pub(crate) fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> RequestHead {
        match RequestHead::parse(s.as_bytes()).unwrap() {
            Parse::Complete { head, head_len } => {
                assert_eq!(head_len, s.len());
                head
            }
            Parse::Partial => panic!("partial"),
        }
    }

    fn resp(s: &str) -> ResponseHead {
        match ResponseHead::parse(s.as_bytes()).unwrap() {
            Parse::Complete { head, .. } => head,
            Parse::Partial => panic!("partial"),
        }
    }

    #[test]
    fn parses_request() {
        let r = req("GET /a.mp4?x=1 HTTP/1.1\r\nHost: example.com \r\nUser-Agent: curl\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/a.mp4?x=1");
        assert_eq!(r.version, 1);
        assert_eq!(r.host(), Some("example.com"));
        assert_eq!(r.headers.get("user-agent"), Some(&b"curl"[..]));
        assert!(r.headers.contains("HOST"));
        assert!(!r.headers.contains("cookie"));
        assert_eq!(r.headers.len(), 2);
        let names: Vec<_> = r.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Host", "User-Agent"]);
    }

    #[test]
    fn host_from_absolute_form() {
        let r = req("GET http://origin.test:8080/x HTTP/1.1\r\n\r\n");
        assert_eq!(r.host(), Some("origin.test:8080"));
        let r = req("GET /x HTTP/1.0\r\n\r\n");
        assert_eq!(r.host(), None);
        assert_eq!(r.version, 0);
    }

    #[test]
    fn body_offset_after_head() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        match ResponseHead::parse(buf).unwrap() {
            Parse::Complete { head, head_len } => {
                assert_eq!(&buf[head_len..], b"abc");
                assert_eq!(head.status, 200);
                assert_eq!(head.reason, "OK");
                assert_eq!(head.content_length(), Ok(Some(3)));
            }
            Parse::Partial => panic!("partial"),
        }
    }

    #[test]
    fn partial_then_too_large() {
        assert_eq!(
            RequestHead::parse(b"GET / HTTP/1.1\r\nHo"),
            Ok(Parse::Partial)
        );
        assert_eq!(RequestHead::parse(b""), Ok(Parse::Partial));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_LEN, b'a');
        assert_eq!(RequestHead::parse(&big), Err(HeadError::TooLarge));
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD_LEN + 10, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(ResponseHead::parse(&big), Err(HeadError::TooLarge));
    }

    #[test]
    fn too_many_headers() {
        let mut s = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            s.push_str(&format!("X-{i}: v\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(
            RequestHead::parse(s.as_bytes()),
            Err(HeadError::TooManyHeaders)
        );
        let mut h = Headers::new();
        for _ in 0..MAX_HEADERS {
            h.push("a", b"b").unwrap();
        }
        assert_eq!(h.push("a", b"b"), Err(HeadError::TooManyHeaders));
    }

    #[test]
    fn malformed() {
        assert!(matches!(
            RequestHead::parse(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            ResponseHead::parse(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            RequestHead::parse(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn content_length_rules() {
        let r = resp("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(r.content_length(), Ok(None));
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(r.content_length(), Ok(Some(5)));
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(r.content_length(), Ok(Some(5)));
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(r.content_length(), Err(HeadError::ConflictingContentLength));
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5, 7\r\n\r\n");
        assert_eq!(r.content_length(), Err(HeadError::ConflictingContentLength));
        for bad in ["-1", "+5", "", "1e3", "0x10", "99999999999999999999", "5 5"] {
            let r = resp(&format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n"));
            assert_eq!(
                r.content_length(),
                Err(HeadError::InvalidContentLength),
                "{bad}"
            );
        }
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n");
        assert_eq!(r.content_length(), Ok(Some(u64::MAX)));
    }

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(951_782_400)
        );
        assert_eq!(
            parse_http_date("Sat, 21 Nov 2026 00:00:00 GMT"),
            Some(1_795_219_200)
        );
        for bad in [
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Mon, 29 Feb 2100 00:00:00 GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn last_modified_must_be_a_second_before_date() {
        let lm = "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT";
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\n{lm}\r\nDate: Sun, 06 Nov 1994 08:49:38 GMT\r\n\r\n"
        ));
        assert_eq!(
            r.validator(),
            Some(Validator::LastModified(
                "Sun, 06 Nov 1994 08:49:37 GMT".into()
            ))
        );
        let r = resp(&format!(
            "HTTP/1.1 200 OK\r\n{lm}\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        ));
        assert_eq!(r.validator(), None, "same second: weak");
        let r = resp(&format!("HTTP/1.1 200 OK\r\n{lm}\r\n\r\n"));
        assert_eq!(r.validator(), None, "no Date: weak");
        let r = resp(
            "HTTP/1.1 200 OK\r\nLast-Modified: yesterday\r\nDate: Sun, 06 Nov 1994 08:49:38 GMT\r\n\r\n",
        );
        assert_eq!(r.validator(), None, "unparsable date: weak");
    }

    #[test]
    fn validators() {
        let r = resp(
            "HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nLast-Modified: Tue, 15 Nov 1994 08:12:31 GMT\r\n\r\n",
        );
        assert_eq!(r.validator(), Some(Validator::ETag("\"abc\"".into())));
        let r = resp(
            "HTTP/1.1 200 OK\r\nETag: W/\"abc\"\r\nLast-Modified: Tue, 15 Nov 1994 08:12:31 GMT\r\nDate: Tue, 15 Nov 1994 08:12:32 GMT\r\n\r\n",
        );
        assert_eq!(
            r.validator(),
            Some(Validator::LastModified(
                "Tue, 15 Nov 1994 08:12:31 GMT".into()
            ))
        );
        let r = resp("HTTP/1.1 200 OK\r\nETag: W/\"abc\"\r\n\r\n");
        assert_eq!(r.validator(), None);
        let r = resp("HTTP/1.1 200 OK\r\nETag: abc\r\n\r\n");
        assert_eq!(r.validator(), None);
        let v = Validator::ETag("\"abc\"".into());
        assert!(v.matches(&resp("HTTP/1.1 206 P\r\nETag: \"abc\"\r\n\r\n")));
        assert!(!v.matches(&resp("HTTP/1.1 206 P\r\nETag: \"abd\"\r\n\r\n")));
        assert!(!v.matches(&resp("HTTP/1.1 206 P\r\n\r\n")));
        assert_eq!(v.as_header_value(), "\"abc\"");
    }

    #[test]
    fn strong_etag_syntax() {
        assert!(is_strong_etag("\"\""));
        assert!(is_strong_etag("\"a-b_c\""));
        assert!(!is_strong_etag("\""));
        assert!(!is_strong_etag("W/\"a\""));
        assert!(!is_strong_etag("\"a\"b\""));
        assert!(!is_strong_etag("\"a b\""));
    }

    #[test]
    fn tokens() {
        let r = resp("HTTP/1.1 200 OK\r\nAccept-Ranges: none\r\nAccept-Ranges: foo, Bytes\r\n\r\n");
        assert!(r.headers.has_token("accept-ranges", "bytes"));
        let r = resp("HTTP/1.1 200 OK\r\nAccept-Ranges: bytesx\r\n\r\n");
        assert!(!r.headers.has_token("accept-ranges", "bytes"));
    }

    #[test]
    fn serialize_round_trip() {
        let s = "GET /x HTTP/1.1\r\nHost: h\r\nA: b c\r\n\r\n";
        assert_eq!(req(s).to_bytes(), s.as_bytes());
        let s = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1/2\r\n\r\n";
        assert_eq!(resp(s).to_bytes(), s.as_bytes());
    }
}
