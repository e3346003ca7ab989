//! tandem-plan (placeholder, being built).
