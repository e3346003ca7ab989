//! Whether a download may be accelerated (DESIGN.md step 3).
//!
//! The decision is taken from the client's request head and the origin's
//! response head only (no extra round trip). Every reason to pass a flow
//! through has its own [`PassReason`] so the daemon can count them.

use crate::head::{RequestHead, ResponseHead, Validator, trim_ows};

/// Default smallest body worth accelerating: 4 MiB.
pub const DEFAULT_MIN_SIZE: u64 = 4 * 1024 * 1024;

/// What makes a download eligible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EligibilityConfig {
    /// Smallest `Content-Length` to accelerate (default 4 MiB).
    pub min_size: u64,
    /// Media-type patterns the response's `Content-Type` must match: an
    /// exact type (`application/octet-stream`), a type wildcard
    /// (`video/*`) or `*/*`. Matching is ASCII case-insensitive and ignores
    /// parameters. Default `video/*`, `audio/*`, `application/*`.
    pub content_types: Vec<String>,
    /// Accelerate requests that carry `Cookie` (default false: the
    /// neighbours would not send it, so a personalised body could differ).
    pub allow_cookie: bool,
    /// Accelerate requests that carry `Authorization` (default false).
    pub allow_authorization: bool,
}

impl Default for EligibilityConfig {
    fn default() -> Self {
        Self {
            min_size: DEFAULT_MIN_SIZE,
            content_types: vec!["video/*".into(), "audio/*".into(), "application/*".into()],
            allow_cookie: false,
            allow_authorization: false,
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The body may be fetched in Range pieces from other sources.
    Accelerate {
        /// Length of the response body in bytes (its `Content-Length`).
        body_len: u64,
        /// Validator to send as `If-Range` with every piece.
        validator: Validator,
    },
    /// Leave the flow alone.
    PassThrough(PassReason),
}

/// Why a download is passed through. Checked in declaration order; the
/// first that applies is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PassReason {
    /// The request method is not `GET`.
    NotGet,
    /// The request or the response is not HTTP/1.1.
    NotHttp11,
    /// The request has a `Range` header (the client already fetches a part).
    HasRange,
    /// The request has a conditional header (`If-*`); its response depends
    /// on client state the neighbours do not share.
    Conditional,
    /// The request has `Cookie` and cookies are not allowed.
    HasCookie,
    /// The request has `Authorization` and it is not allowed.
    HasAuthorization,
    /// The request asks for a protocol upgrade or `Expect`s something.
    Upgrade,
    /// The request carries a body (`Content-Length` other than 0, or
    /// `Transfer-Encoding`): a GET with a body is not a plain download.
    RequestBody,
    /// The response status is not 200.
    Status(u16),
    /// The response has a `Transfer-Encoding`.
    TransferEncoding,
    /// The response has a `Content-Encoding` other than `identity`.
    ContentEncoding,
    /// The response has no `Content-Length`.
    NoContentLength,
    /// The response's `Content-Length` is invalid or self-contradictory.
    BadContentLength,
    /// The body is smaller than the configured minimum.
    TooSmall,
    /// The response does not advertise `Accept-Ranges: bytes`.
    NoAcceptRanges,
    /// The response has neither a strong ETag nor a Last-Modified date.
    NoStrongValidator,
    /// The response's `Content-Type` is missing or matches no pattern.
    ContentType,
    /// The response already carries `Content-Range` (a partial body in a
    /// 200 is inconsistent).
    HasContentRange,
}

impl PassReason {
    /// Stable, lower-case snake name for metrics and logs. `Status(_)`
    /// collapses to `status`; the code is not part of the name so the
    /// set of names is fixed.
    pub fn as_str(&self) -> &'static str {
        match self {
            PassReason::NotGet => "not_get",
            PassReason::NotHttp11 => "not_http11",
            PassReason::HasRange => "has_range",
            PassReason::Conditional => "conditional",
            PassReason::HasCookie => "has_cookie",
            PassReason::HasAuthorization => "has_authorization",
            PassReason::Upgrade => "upgrade",
            PassReason::RequestBody => "request_body",
            PassReason::Status(_) => "status",
            PassReason::TransferEncoding => "transfer_encoding",
            PassReason::ContentEncoding => "content_encoding",
            PassReason::NoContentLength => "no_content_length",
            PassReason::BadContentLength => "bad_content_length",
            PassReason::TooSmall => "too_small",
            PassReason::NoAcceptRanges => "no_accept_ranges",
            PassReason::NoStrongValidator => "no_strong_validator",
            PassReason::ContentType => "content_type",
            PassReason::HasContentRange => "has_content_range",
        }
    }

    /// Every name [`PassReason::as_str`] can return, for pre-registering
    /// metric counters.
    pub const ALL_NAMES: [&'static str; 18] = [
        "not_get",
        "not_http11",
        "has_range",
        "conditional",
        "has_cookie",
        "has_authorization",
        "upgrade",
        "request_body",
        "status",
        "transfer_encoding",
        "content_encoding",
        "no_content_length",
        "bad_content_length",
        "too_small",
        "no_accept_ranges",
        "no_strong_validator",
        "content_type",
        "has_content_range",
    ];
}

impl std::fmt::Display for PassReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassReason::Status(code) => write!(f, "status {code}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Decide whether the response to `req` may be accelerated.
///
/// Request checks come first, then response checks, in the order of
/// [`PassReason`]'s variants; the first failing check is the reason.
pub fn decide(req: &RequestHead, resp: &ResponseHead, cfg: &EligibilityConfig) -> Decision {
    match check(req, resp, cfg) {
        Ok((body_len, validator)) => Decision::Accelerate {
            body_len,
            validator,
        },
        Err(reason) => Decision::PassThrough(reason),
    }
}

fn check(
    req: &RequestHead,
    resp: &ResponseHead,
    cfg: &EligibilityConfig,
) -> Result<(u64, Validator), PassReason> {
    let rh = &req.headers;
    if req.method != "GET" {
        return Err(PassReason::NotGet);
    }
    if req.version != 1 || resp.version != 1 {
        return Err(PassReason::NotHttp11);
    }
    if rh.contains("range") {
        return Err(PassReason::HasRange);
    }
    if rh
        .iter()
        .any(|(n, _)| n.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("if-")))
    {
        return Err(PassReason::Conditional);
    }
    if !cfg.allow_cookie && rh.contains("cookie") {
        return Err(PassReason::HasCookie);
    }
    if !cfg.allow_authorization && rh.contains("authorization") {
        return Err(PassReason::HasAuthorization);
    }
    if rh.contains("upgrade") || rh.contains("expect") {
        return Err(PassReason::Upgrade);
    }
    let body_len = rh.get_all("content-length").any(|v| trim_ows(v) != b"0");
    if body_len || rh.contains("transfer-encoding") {
        return Err(PassReason::RequestBody);
    }

    let h = &resp.headers;
    if resp.status != 200 {
        return Err(PassReason::Status(resp.status));
    }
    if h.contains("transfer-encoding") {
        return Err(PassReason::TransferEncoding);
    }
    if h.get_all("content-encoding").any(|v| {
        v.split(|&b| b == b',').any(|t| {
            let t = trim_ows(t);
            !t.is_empty() && !t.eq_ignore_ascii_case(b"identity")
        })
    }) {
        return Err(PassReason::ContentEncoding);
    }
    let body_len = match resp.content_length() {
        Ok(Some(n)) => n,
        Ok(None) => return Err(PassReason::NoContentLength),
        Err(_) => return Err(PassReason::BadContentLength),
    };
    if body_len < cfg.min_size {
        return Err(PassReason::TooSmall);
    }
    if !h.has_token("accept-ranges", "bytes") {
        return Err(PassReason::NoAcceptRanges);
    }
    let validator = resp.validator().ok_or(PassReason::NoStrongValidator)?;
    let ct = h.get_str("content-type").unwrap_or("");
    if !content_type_matches(ct, &cfg.content_types) {
        return Err(PassReason::ContentType);
    }
    if h.contains("content-range") {
        return Err(PassReason::HasContentRange);
    }
    Ok((body_len, validator))
}

/// Whether the media type of a `Content-Type` value (parameters ignored)
/// matches one of `patterns` (`type/subtype`, `type/*` or `*/*`).
pub fn content_type_matches(content_type: &str, patterns: &[String]) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim_matches([' ', '\t']);
    let Some((ty, sub)) = media.split_once('/') else {
        return false;
    };
    if ty.is_empty() || sub.is_empty() {
        return false;
    }
    patterns.iter().any(|p| {
        let Some((pt, ps)) = p.trim().split_once('/') else {
            return false;
        };
        (pt == "*" && ps == "*")
            || (pt.eq_ignore_ascii_case(ty) && (ps == "*" || ps.eq_ignore_ascii_case(sub)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Parse;

    const GOOD_REQ: &str =
        "GET /movie.mp4 HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n";
    const GOOD_RESP: &str = "HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\nAccept-Ranges: bytes\r\nETag: \"v1\"\r\nContent-Type: video/mp4\r\n\r\n";

    fn req(s: &str) -> RequestHead {
        match RequestHead::parse(s.as_bytes()).unwrap() {
            Parse::Complete { head, .. } => head,
            Parse::Partial => panic!("partial"),
        }
    }

    fn resp(s: &str) -> ResponseHead {
        match ResponseHead::parse(s.as_bytes()).unwrap() {
            Parse::Complete { head, .. } => head,
            Parse::Partial => panic!("partial"),
        }
    }

    /// Good request with one extra header line.
    fn req_with(extra: &str) -> RequestHead {
        req(&GOOD_REQ.replace("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n")))
    }

    /// Good response with `old` replaced by `new`.
    fn resp_sub(old: &str, new: &str) -> ResponseHead {
        assert!(GOOD_RESP.contains(old), "{old}");
        resp(&GOOD_RESP.replace(old, new))
    }

    fn pass(r: &RequestHead, s: &ResponseHead) -> PassReason {
        match decide(r, s, &EligibilityConfig::default()) {
            Decision::PassThrough(p) => p,
            d => panic!("expected pass-through, got {d:?}"),
        }
    }

    #[test]
    fn accelerates_good_download() {
        assert_eq!(
            decide(
                &req(GOOD_REQ),
                &resp(GOOD_RESP),
                &EligibilityConfig::default()
            ),
            Decision::Accelerate {
                body_len: 10 * 1024 * 1024,
                validator: Validator::ETag("\"v1\"".into())
            }
        );
    }

    #[test]
    fn accelerates_with_last_modified_only() {
        let r = resp_sub(
            "ETag: \"v1\"",
            "Last-Modified: Tue, 15 Nov 1994 08:12:31 GMT\r\nDate: Tue, 15 Nov 1994 08:13:00 GMT",
        );
        assert_eq!(
            decide(&req(GOOD_REQ), &r, &EligibilityConfig::default()),
            Decision::Accelerate {
                body_len: 10 * 1024 * 1024,
                validator: Validator::LastModified("Tue, 15 Nov 1994 08:12:31 GMT".into())
            }
        );
    }

    #[test]
    fn not_get() {
        let g = resp(GOOD_RESP);
        assert_eq!(
            pass(&req(&GOOD_REQ.replace("GET", "HEAD")), &g),
            PassReason::NotGet
        );
        assert_eq!(
            pass(&req(&GOOD_REQ.replace("GET", "POST")), &g),
            PassReason::NotGet
        );
        assert_eq!(
            pass(&req(&GOOD_REQ.replace("GET", "get")), &g),
            PassReason::NotGet
        );
    }

    #[test]
    fn not_http11() {
        let g = resp(GOOD_RESP);
        assert_eq!(
            pass(&req(&GOOD_REQ.replace("HTTP/1.1", "HTTP/1.0")), &g),
            PassReason::NotHttp11
        );
        assert_eq!(
            pass(
                &req(GOOD_REQ),
                &resp(&GOOD_RESP.replace("HTTP/1.1", "HTTP/1.0"))
            ),
            PassReason::NotHttp11
        );
    }

    #[test]
    fn has_range() {
        assert_eq!(
            pass(&req_with("Range: bytes=0-"), &resp(GOOD_RESP)),
            PassReason::HasRange
        );
        assert_eq!(
            pass(&req_with("range: bytes=5-9"), &resp(GOOD_RESP)),
            PassReason::HasRange
        );
    }

    #[test]
    fn conditional() {
        for h in [
            "If-None-Match: \"v1\"",
            "If-Modified-Since: x",
            "If-Range: \"v1\"",
            "if-match: *",
        ] {
            assert_eq!(
                pass(&req_with(h), &resp(GOOD_RESP)),
                PassReason::Conditional,
                "{h}"
            );
        }
    }

    #[test]
    fn has_cookie() {
        let r = req_with("Cookie: a=b");
        assert_eq!(pass(&r, &resp(GOOD_RESP)), PassReason::HasCookie);
        let cfg = EligibilityConfig {
            allow_cookie: true,
            ..Default::default()
        };
        assert!(matches!(
            decide(&r, &resp(GOOD_RESP), &cfg),
            Decision::Accelerate { .. }
        ));
    }

    #[test]
    fn has_authorization() {
        let r = req_with("Authorization: Basic eDp5");
        assert_eq!(pass(&r, &resp(GOOD_RESP)), PassReason::HasAuthorization);
        let cfg = EligibilityConfig {
            allow_authorization: true,
            ..Default::default()
        };
        assert!(matches!(
            decide(&r, &resp(GOOD_RESP), &cfg),
            Decision::Accelerate { .. }
        ));
    }

    #[test]
    fn upgrade() {
        assert_eq!(
            pass(&req_with("Upgrade: websocket"), &resp(GOOD_RESP)),
            PassReason::Upgrade
        );
        assert_eq!(
            pass(&req_with("Expect: 100-continue"), &resp(GOOD_RESP)),
            PassReason::Upgrade
        );
    }

    #[test]
    fn request_body() {
        let g = resp(GOOD_RESP);
        assert_eq!(
            pass(&req_with("Content-Length: 5"), &g),
            PassReason::RequestBody
        );
        assert_eq!(
            pass(&req_with("Transfer-Encoding: chunked"), &g),
            PassReason::RequestBody
        );
        assert!(matches!(
            decide(
                &req_with("Content-Length: 0"),
                &g,
                &EligibilityConfig::default()
            ),
            Decision::Accelerate { .. }
        ));
    }

    #[test]
    fn status() {
        for code in ["206", "304", "404", "302", "500"] {
            let r = resp_sub("200 OK", &format!("{code} X"));
            let want = PassReason::Status(code.parse().unwrap());
            assert_eq!(pass(&req(GOOD_REQ), &r), want);
            assert_eq!(want.as_str(), "status");
        }
    }

    #[test]
    fn transfer_encoding() {
        let r = resp_sub("Content-Length: 10485760", "Transfer-Encoding: chunked");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::TransferEncoding);
        // Both present (a smuggling vector): still refused.
        let r = resp_sub(
            "Accept-Ranges",
            "Transfer-Encoding: chunked\r\nAccept-Ranges",
        );
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::TransferEncoding);
    }

    #[test]
    fn content_encoding() {
        let r = resp_sub("Accept-Ranges", "Content-Encoding: gzip\r\nAccept-Ranges");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::ContentEncoding);
        let r = resp_sub(
            "Accept-Ranges",
            "Content-Encoding: identity\r\nAccept-Ranges",
        );
        assert!(matches!(
            decide(&req(GOOD_REQ), &r, &EligibilityConfig::default()),
            Decision::Accelerate { .. }
        ));
    }

    #[test]
    fn no_content_length() {
        let r = resp_sub("Content-Length: 10485760\r\n", "");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::NoContentLength);
    }

    #[test]
    fn bad_content_length() {
        let r = resp_sub(
            "Content-Length: 10485760",
            "Content-Length: 10485760\r\nContent-Length: 5",
        );
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::BadContentLength);
        let r = resp_sub("Content-Length: 10485760", "Content-Length: ten");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::BadContentLength);
    }

    #[test]
    fn too_small() {
        let r = resp_sub("10485760", "4194303");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::TooSmall);
        let r = resp_sub("10485760", "4194304");
        assert!(matches!(
            decide(&req(GOOD_REQ), &r, &EligibilityConfig::default()),
            Decision::Accelerate {
                body_len: 4194304,
                ..
            }
        ));
    }

    #[test]
    fn no_accept_ranges() {
        let r = resp_sub("Accept-Ranges: bytes\r\n", "");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::NoAcceptRanges);
        let r = resp_sub("Accept-Ranges: bytes", "Accept-Ranges: none");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::NoAcceptRanges);
    }

    #[test]
    fn no_strong_validator() {
        let r = resp_sub("ETag: \"v1\"\r\n", "");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::NoStrongValidator);
        let r = resp_sub("ETag: \"v1\"", "ETag: W/\"v1\"");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::NoStrongValidator);
        // Last-Modified within the second of Date is weak.
        let r = resp_sub(
            "ETag: \"v1\"",
            "Last-Modified: Tue, 15 Nov 1994 08:12:31 GMT\r\nDate: Tue, 15 Nov 1994 08:12:31 GMT",
        );
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::NoStrongValidator);
    }

    #[test]
    fn content_type() {
        let r = resp_sub("video/mp4", "text/html; charset=utf-8");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::ContentType);
        let r = resp_sub("Content-Type: video/mp4\r\n", "");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::ContentType);
        let r = resp_sub("video/mp4", "videomp4");
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::ContentType);
        let r = resp_sub("video/mp4", "Application/Octet-Stream; x=y");
        assert!(matches!(
            decide(&req(GOOD_REQ), &r, &EligibilityConfig::default()),
            Decision::Accelerate { .. }
        ));
    }

    #[test]
    fn has_content_range() {
        let r = resp_sub(
            "Accept-Ranges",
            "Content-Range: bytes 0-9/10\r\nAccept-Ranges",
        );
        assert_eq!(pass(&req(GOOD_REQ), &r), PassReason::HasContentRange);
    }

    #[test]
    fn first_reason_wins() {
        let r = req(&GOOD_REQ
            .replace("GET", "POST")
            .replace("HTTP/1.1", "HTTP/1.0"));
        let s = resp_sub("200 OK", "404 Not Found");
        assert_eq!(pass(&r, &s), PassReason::NotGet);
    }

    #[test]
    fn content_type_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(content_type_matches("video/mp4", &p(&["video/*"])));
        assert!(content_type_matches("VIDEO/MP4", &p(&["video/mp4"])));
        assert!(content_type_matches("text/plain", &p(&["*/*"])));
        assert!(!content_type_matches(
            "text/plain",
            &p(&["video/*", "audio/*"])
        ));
        assert!(!content_type_matches("", &p(&["*/*"])));
        assert!(!content_type_matches("video/", &p(&["video/*"])));
        assert!(!content_type_matches("video/mp4", &p(&["video"])));
        assert!(!content_type_matches("video/mp4", &p(&[])));
    }

    #[test]
    fn reason_names_are_stable_and_unique() {
        let all = [
            PassReason::NotGet,
            PassReason::NotHttp11,
            PassReason::HasRange,
            PassReason::Conditional,
            PassReason::HasCookie,
            PassReason::HasAuthorization,
            PassReason::Upgrade,
            PassReason::RequestBody,
            PassReason::Status(404),
            PassReason::TransferEncoding,
            PassReason::ContentEncoding,
            PassReason::NoContentLength,
            PassReason::BadContentLength,
            PassReason::TooSmall,
            PassReason::NoAcceptRanges,
            PassReason::NoStrongValidator,
            PassReason::ContentType,
            PassReason::HasContentRange,
        ];
        let names: Vec<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, PassReason::ALL_NAMES);
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len());
        assert_eq!(PassReason::Status(404).to_string(), "status 404");
    }
}
