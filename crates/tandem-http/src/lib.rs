//! tandem-http (placeholder, being built).
