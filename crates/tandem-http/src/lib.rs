//! HTTP/1.x heads for tandem, sans-IO.
//!
//! This crate parses request and response heads (with `httparse`), decides
//! whether a download is eligible for acceleration ([`decide`]), and builds
//! and parses what piece fetches exchange: the Range request
//! ([`range_request`]), the `Content-Range` of the answer
//! ([`ContentRange`]) and, for origin servers, the `Range` header
//! ([`RangeHeader`]).
//!
//! Calling contract: every function takes bytes or parsed heads and returns
//! a value; nothing here does I/O, reads a clock or allocates without bound.
//! Input is untrusted: heads are limited to [`MAX_HEAD_LEN`] bytes and
//! [`MAX_HEADERS`] fields, and no input makes any function panic. A caller
//! that reads a head from a socket appends bytes to a buffer and calls
//! `parse` again while it returns [`Parse::Partial`]; `parse` itself fails
//! with [`HeadError::TooLarge`] once the buffer reaches [`MAX_HEAD_LEN`]
//! bytes, so the caller never needs to buffer more than that.

mod eligibility;
mod head;
mod range;

pub use eligibility::{
    DEFAULT_MIN_SIZE, Decision, EligibilityConfig, PassReason, content_type_matches, decide,
};
pub use head::{
    HeadError, Headers, MAX_HEAD_LEN, MAX_HEADERS, Parse, RequestHead, ResponseHead, Validator,
    is_strong_etag, parse_http_date,
};
pub use range::{
    ByteRangeSpec, ContentRange, ContentRangeError, FORWARDED_HEADERS, RangeHeader,
    RangeRequestError, range_request,
};
