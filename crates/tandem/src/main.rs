//! The tandem daemon (being built).
fn main() {}
