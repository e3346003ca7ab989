//! Fetching byte ranges from origins, guarding which origins may be
//! fetched, and a Range-capable origin server for tests.
//!
//! - [`RangeFetcher`] fetches pieces (`Range` + `If-Range`) of one resource
//!   from one origin address over a reused keep-alive connection and
//!   streams each body in bounded chunks. Every failure is a
//!   [`FetchError`] whose [`FetchError::class`] tells the session what to
//!   do (notably [`FetchErrorClass::ResourceChanged`]).
//! - [`check_target`] / [`TargetPolicy`] is the SSRF guard: only public
//!   unicast addresses on allowed ports, never our own.
//! - [`serve_origin`] is tandem's own HTTP/1.1 origin server (files from a
//!   directory or memory, single ranges, If-Range, ETag, rate limit).
//!
//! Calling contract: this crate is the I/O edge. The fetcher and the
//! server need a tokio runtime (net, io-util, time); the fetcher reads no
//! clock except through tokio's timers for its timeouts. All HTTP parsing
//! is done by `tandem-http` (sans-IO, bounded). Memory is bounded: one
//! fetcher holds one buffer of `max(chunk_size, 16 KiB)` bytes; one server
//! connection holds a 16 KiB head buffer and a 64 KiB body buffer.

mod fetcher;
mod origin;
mod target;

pub use fetcher::{
    DEFAULT_CHUNK_SIZE, FetchConfig, FetchError, FetchErrorClass, FetchStats, MAX_CHUNK_SIZE,
    Phase, PieceBody, RangeFetcher, Resource,
};
pub use origin::{OriginFiles, http_date, serve_origin};
pub use target::{TargetPolicy, TargetRefused, check_target, classify};
