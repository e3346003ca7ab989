//! The delegation runtime of tandem (tokio): neighbours fetch pieces of a
//! download over their own uplinks and stream them back over the
//! authenticated peer protocol (`tandem-peer`).
//!
//! A router runs one [`Node`]:
//!
//! - **Serving side** ([`Node::serve`]): accepts neighbours listed in its
//!   config (Noise IK, unknown keys refused). On `Negotiate` it refuses
//!   requests that carried `Cookie`/`Authorization` (unless
//!   [`ServeConfig::allow_credentials`]), origins its SSRF guard
//!   ([`ServeConfig::target_policy`]) rejects, and session keys it already
//!   committed to (`tandem_plan::SessionTable`); otherwise it commits and
//!   serves `PieceRequest`s with a `RangeFetcher` (`Range` + `If-Range`),
//!   streaming `PieceData` chunks as they arrive, paced to
//!   `uplink_bps x neighbour_share` and at most `max_concurrent_pieces`
//!   pieces at once over all neighbours. `Cancel`, or the connection
//!   closing, releases the key.
//! - **Requesting side** ([`Node::open_session`] -> [`Session`]): negotiates
//!   with every neighbour that has an address, in parallel, and runs the
//!   `tandem_plan::Planner` over A's own fetcher and the committed
//!   neighbours; dead, stalled or failing sources get their pieces
//!   reassigned; `ResourceChanged` from any source aborts the session.
//! - **Sub-delegation** (relay): a neighbour that commits to a session with
//!   `hop_budget > 0` negotiates the same key with its own neighbours
//!   (never the requester; budget minus one) and serves each requested
//!   piece either itself or through one committed sub-delegate, forwarding
//!   the piece messages unchanged. Session tables refuse a key a router
//!   already holds, so overlapping neighbourhoods commit once per router.
//!
//! Calling contract: everything runs on a tokio runtime; the sans-IO parts
//! (planner, session table, peer protocol core) are driven here with
//! `tokio::time::Instant` as the clock. See [`Session`] for how the daemon
//! consumes a download. Not done yet: splitting one piece over several
//! sub-delegates (a relay gives each piece to one source), pooled peer
//! connections (one connection per session and neighbour), aggregated
//! rate advertisement of a relay's sub-tree.

mod limit;
mod node;
mod relay;
mod session;
mod stagger;
mod worker;

pub use node::{NeighbourConfig, Node, NodeConfig, NodeStats, ServeConfig};
pub use session::{
    Chunk, Download, Session, SessionConfig, SessionError, SessionStats, SourceStats,
};
