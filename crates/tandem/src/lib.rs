//! The tandem daemon: configuration, firewall rules, the NFQUEUE/injection
//! platform layer, the runtime that joins the splice engine with the
//! delegation layer, and the status socket. The binary (`main.rs`) is a thin
//! command-line front over this library.

pub mod config;
pub mod platform;
pub mod rules;
pub mod runtime;
pub mod status;
