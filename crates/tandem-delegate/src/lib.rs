//! tandem-delegate (placeholder, being built).
