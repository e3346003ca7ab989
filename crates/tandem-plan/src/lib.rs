//! tandem-plan: the sans-IO piece planner, multi-hop rate advertisement and
//! session-key commitments of tandem, plus a deterministic simulator.
//!
//! Nothing here does I/O, spawns tasks or reads a clock. **Time** is a
//! [`std::time::Duration`] since an origin the caller picks (e.g. the
//! daemon's start: `now = Instant::now() - origin`), passed into every call
//! that needs it, in non-decreasing order. That makes every decision
//! reproducible in tests and simulations.
//!
//! # The planner ([`Planner`])
//!
//! One planner per accelerated download at router A (or per delegated range
//! at a neighbour, for multi-hop). The calling contract, quinn-style:
//!
//! ```text
//! let mut p = Planner::new(body_start..body_end, PlannerConfig::default())?;
//! let orig  = p.add_source(SourceSpec::original_flow(uplink, wan_rtt), now)?; // A only
//! let local = p.add_source(SourceSpec::local(uplink, wan_rtt), now)?;
//! let b     = p.add_source(SourceSpec::peer(advertised, link_rate, rtt_via_b), now)?;
//!
//! // The cut (A only; a neighbour has no original flow and plans from the
//! // start of its range):
//! if let Some(c) = p.requested_cut(now) {
//!     let actual = splice.accelerate(c);   // may be later than c
//!     p.set_cut(actual, now)?;
//! }
//!
//! // After EVERY input below, for every source with a free request slot:
//! while let Some(a) = p.next_assignment(source, now) { send a.range to a.source }
//! while let Some(ev) = p.poll_event() { Cancel → tell the source; Complete → done }
//! arm a timer for p.poll_timeout(); when it fires: p.handle_timeout(now)
//!
//! // Inputs:
//! p.on_delivered(cursor, now);             // bytes handed to the client (before
//!                                          // the cut: the original flow's progress)
//! p.on_piece_data(piece, n, now)?;         // n more bytes of a piece, in order
//! p.on_piece_done(piece, now)?;            // source says finished (idempotent)
//! p.on_piece_failed(piece, now)?;          // bytes go back to the pool
//! p.source_gone(source, now)?;             // link lost
//! p.update_source_rate(source, advert)?;   // new advertisement
//! ```
//!
//! Guarantees: an assignment's range ends at most `window` bytes past the
//! delivery cursor at the time it is made, so the caller's reorder buffer
//! never holds more than `window` bytes (counting overlapping duplicate
//! bytes once: keep the first copy of each byte). Every range is inside the
//! body and at or after the cut. Non-duplicate assignments never overlap
//! each other or received bytes. Errors ([`PlanError`]) report misuse or a
//! misbehaving source (e.g. more bytes than a piece has); the planner's state
//! is unchanged by a call that returns an error.
//!
//! Two policies ([`Policy`]): `Dynamic` (default) and `Proportional` (the
//! seed's rule, kept as a baseline). docs/planner.md describes the model,
//! the cut rule, rate estimation, link cost, the endgame and the figures of
//! the simulations.
//!
//! # Advertisement ([`advertise`], [`AdvertRule`], [`AdvertTree`])
//!
//! What a router tells a neighbour it can bring to a download, from its own
//! rate, the link to the asker and its other neighbours' advertisements.
//! `CappedSum` (default) or the seed's `Average`.
//!
//! # Session commitments ([`SessionTable`], [`SessionKey`])
//!
//! A router commits at most once per random 128-bit session key until
//! cancel, completion or idle expiry; the table records sub-delegates so a
//! cancel can be forwarded down the delegation tree. Bounded in entries and
//! sub-delegates.
//!
//! # Simulation ([`sim`])
//!
//! A discrete-event model of A, its neighbours, their uplinks, the
//! inter-router links, HTTP Range requests (RTT, slow-start ramp), the
//! original flow, the cut and in-order delivery through the bounded window;
//! and a session-negotiation flood over random meshes. `examples/plansim.rs`
//! prints the tables; `tests/sim.rs` holds the assertions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod advert;
mod planner;
mod ranges;
mod rate;
mod session;
pub mod sim;

pub use advert::{AdvertRule, AdvertTree, NeighbourRate, advertise};
pub use planner::{
    Assignment, PieceId, PlanError, PlanEvent, PlanStats, Planner, PlannerConfig, Policy, SourceId,
    SourceKind, SourceSpec,
};
pub use ranges::RangeSet;
pub use rate::{Rate, RateEstimator};
pub use session::{Commitment, Released, SessionError, SessionKey, SessionLimits, SessionTable};
