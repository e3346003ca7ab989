//! Simulation (being built).
