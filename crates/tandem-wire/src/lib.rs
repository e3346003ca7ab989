//! tandem-wire (placeholder, being built).
