//! tandem-lab: the network-namespace testbed (placeholder, being built).
