//! tandem-splice (placeholder, being built).
