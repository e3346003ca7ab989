//! tandem-lab: the network-namespace testbed of the tandem project.
//!
//! It builds hosts out of Linux network namespaces — a client behind router A,
//! neighbour routers B, C, … joined by a shaped "mesh", an "internet"
//! namespace joining every router's WAN, and an origin server — shapes links
//! with HTB, delays the internet with a user-space NFQUEUE delay line (the
//! project's kernels have no netem), and runs downloads, captures and the
//! `tandem lab` demonstration.
//!
//! Calling contract:
//! - Everything except the pure helpers needs root; [`netns::require_root`]
//!   says so clearly, and [`Topology::build`] calls it.
//! - A [`Topology`] owns everything it creates. Dropping it (also while a
//!   test panics) kills its processes and deletes its namespaces; SIGINT,
//!   SIGTERM and SIGHUP do the same for every topology of the process.
//!   Namespace names are `tdl<pid>-<n>-<role>`, so parallel tests and
//!   processes never collide, and leftovers of a SIGKILLed run are removed by
//!   the next one.
//! - Nothing is ever sent to an address outside the namespaces: every address
//!   is from the documentation ranges (see docs/lab.md).
//! - Entry points for the `tandem` binary: [`run_delayline`] (hidden
//!   subcommand `tandem delayline`) and [`run_lab`] (`tandem lab`).
//!   [`daemon::Daemons`] starts `tandem run` on routers for the tests.
//! - Errors are `anyhow::Error` with context: this is tooling whose errors
//!   go to a person (test output, terminal), and the entry points' signatures
//!   are fixed by the binary. The pure parts — [`delayline::DelayFifo`],
//!   [`plot`], [`capture::analyse_windows`], [`netns::parse_net_dev`] — take
//!   all inputs (including time) as arguments and are unit-tested without
//!   root.

pub mod capture;
pub mod daemon;
pub mod delayline;
pub mod lab;
pub mod netns;
pub mod origin;
pub mod plot;
pub mod topology;
pub mod transfer;

pub use delayline::{DelayArgs, run_delayline};
pub use lab::{LabArgs, LabOrigin, run_lab};

pub use nix::sys::signal::Signal;
pub use topology::{Dir, Proc, Rate, Topology, TopologySpec, Way};
