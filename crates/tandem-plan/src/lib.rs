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
//! * **Setup**: [`Planner::new`]`(body, config)`, then
//!   [`Planner::add_source`] for the original flow (A only, before anything
//!   else is assigned), A's local Range fetcher, and each committed peer.
//! * **The cut** (A only): [`Planner::requested_cut`] gives the offset to ask
//!   the splice engine for (`None`: do not accelerate); report what the
//!   engine achieved with [`Planner::set_cut`]. A neighbour has no original
//!   flow and plans from the start of its range.
//! * **Inputs**: [`Planner::on_delivered`] (bytes handed to the client; the
//!   original flow's progress before the cut), [`Planner::on_piece_data`]
//!   (more bytes of a piece, in order), [`Planner::on_piece_done`]
//!   (idempotent), [`Planner::on_piece_failed`], [`Planner::source_gone`],
//!   [`Planner::update_source_rate`] (new advertisement),
//!   [`Planner::handle_timeout`] when [`Planner::poll_timeout`] is reached.
//! * **Outputs**, after every input: [`Planner::next_assignment`] for every
//!   source until it returns `None` (send each range to its source), then
//!   [`Planner::poll_event`] until `None` ([`PlanEvent::Cancel`]: tell the
//!   source to stop; [`PlanEvent::SourceStalled`]; [`PlanEvent::Complete`];
//!   [`PlanEvent::SourcesExhausted`]: reset the client if past the cut), and
//!   re-arm the timer with [`Planner::poll_timeout`].
//!
//! ```
//! use std::time::Duration;
//! use tandem_plan::{PlanEvent, Planner, PlannerConfig, Rate, SourceSpec};
//!
//! let ms = Duration::from_millis;
//! let uplink = Rate::from_mbit(20.0);
//! let mut p = Planner::new(0..(32 << 20), PlannerConfig::default())?;
//! let _orig = p.add_source(SourceSpec::original_flow(uplink, ms(20)), ms(0))?;
//! let local = p.add_source(SourceSpec::local(uplink, ms(20)), ms(0))?;
//! let peer = p.add_source(SourceSpec::peer(uplink, Rate::from_mbit(54.0), ms(24)), ms(0))?;
//!
//! // The original flow has passed 10 kB to the client when the response
//! // head is judged eligible.
//! p.on_delivered(10_000, ms(5));
//! let cut = p.requested_cut(ms(5)).expect("a peer can help");
//! let actual = cut; // what splice.accelerate(cut) achieved
//! p.set_cut(actual, ms(5))?;
//!
//! // A toy driver: every source delivers each piece 100 ms after asking.
//! let mut now = ms(5);
//! let mut have = tandem_plan::RangeSet::new();
//! have.insert(0..actual);
//! let mut complete = false;
//! while !complete {
//!     let mut batch = Vec::new();
//!     for s in [local, peer] {
//!         while let Some(a) = p.next_assignment(s, now) {
//!             batch.push(a);
//!         }
//!     }
//!     now += ms(100);
//!     for a in batch {
//!         p.on_piece_data(a.piece, a.range.end - a.range.start, now)?;
//!         have.insert(a.range);
//!     }
//!     p.on_delivered(have.contiguous_end(0), now);
//!     while let Some(ev) = p.poll_event() {
//!         complete |= ev == PlanEvent::Complete;
//!     }
//! }
//! assert_eq!(p.cursor(), 32 << 20);
//! # Ok::<(), tandem_plan::PlanError>(())
//! ```
//!
//! **On a neighbour** (delegation runtime): one planner per piece requested
//! by the upstream router, over exactly that range, with no original flow
//! (so no cut: [`Planner::cut`] is the range start) and the neighbour's own
//! fetcher and committed peers as sources; `on_delivered` is what has been
//! forwarded upstream. Start the next requested piece's planner, with the
//! same sources, as soon as the current one's [`Planner::unassigned_bytes`]
//! is 0, so the sources never idle between pieces (docs/planner.md, the
//! nested simulation).
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

pub use advert::{AdvertRule, AdvertTree, NeighbourRate, UnknownSetting, advertise};
pub use planner::{
    Assignment, MAX_SOURCE_DEPTH, PieceId, PlanError, PlanEvent, PlanStats, Planner, PlannerConfig,
    Policy, SourceId, SourceKind, SourceSpec,
};
pub use ranges::RangeSet;
pub use rate::{Rate, RateEstimator};
pub use session::{Commitment, Released, SessionError, SessionKey, SessionLimits, SessionTable};
