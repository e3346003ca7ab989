//! tandem-fetch (placeholder, being built).
