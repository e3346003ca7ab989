//! Network-namespace integration tests of the tandem daemon live in `tests/*.rs`
//! beside this file (root only; run by `scripts/test.sh`).
