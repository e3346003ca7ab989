//! tandem-peer (placeholder, being built).
