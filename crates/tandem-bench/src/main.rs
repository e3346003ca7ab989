//! tandem-bench (being built): see docs/benchmarks.md.
fn main() {}
