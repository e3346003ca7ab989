//! HTTP/1.x heads for tandem, sans-IO.
//!
//! This crate parses request and response heads (with `httparse`), decides
//! whether a download is eligible for acceleration, and builds/parses the
//! Range requests and `Content-Range` fields that piece fetches use.
//!
//! Calling contract: every function takes bytes or parsed heads and returns
//! a value; nothing here does I/O, reads a clock or allocates without bound.
//! Input is untrusted: heads are limited to [`MAX_HEAD_LEN`] bytes and
//! [`MAX_HEADERS`] fields, and no input makes any function panic. A caller
//! that reads a head from a socket appends bytes to a buffer and calls
//! `parse` again while it returns [`Parse::Partial`]; `parse` itself fails
//! with [`HeadError::TooLarge`] once the buffer reaches [`MAX_HEAD_LEN`].

mod head;

pub use head::{
    HeadError, Headers, MAX_HEAD_LEN, MAX_HEADERS, Parse, RequestHead, ResponseHead, Validator,
    is_strong_etag,
};
