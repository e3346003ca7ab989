#!/usr/bin/env bash
# The whole tandem test suite: format, lints, unit + simulation tests,
# big-endian (s390x) run of the core crates under qemu, and the root-only
# network-namespace integration tests. Installs what it needs first.
#
#   sudo bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root (network namespaces need it): sudo bash scripts/test.sh" >&2
  exit 1
fi
bash scripts/install-deps.sh

step() { printf '\n=== %s\n' "$*"; }
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, simulation, loopback and netns integration)"
cargo test --workspace --locked 2>&1 | tee "$target/test-host.log"
# Fail loudly if any test binary reported a failure that tee masked.
if grep -qE '^test result: FAILED' "$target/test-host.log"; then exit 1; fi

step "OpenWrt feed: init script, UCI mapping, fw4/fw3 rules, package Makefile"
cargo build --locked -p tandem
bash openwrt-feed/tests/run.sh "$target/debug/tandem"

step "router binary builds for a 32-bit target without 64-bit atomics (as MIPS)"
cargo check --locked --target powerpc-unknown-linux-gnu -p tandem

step "packet and planner crates on arm64 under qemu-user"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static \
  cargo test --locked --target aarch64-unknown-linux-musl -p tandem-wire -p tandem-plan

step "core crates on big-endian s390x under qemu-user"
export CARGO_TARGET_S390X_UNKNOWN_LINUX_GNU_LINKER=s390x-linux-gnu-gcc
export CARGO_TARGET_S390X_UNKNOWN_LINUX_GNU_RUNNER="qemu-s390x-static -L /usr/s390x-linux-gnu"
cargo test --locked --target s390x-unknown-linux-gnu \
  -p tandem-wire -p tandem-http -p tandem-splice -p tandem-plan -p tandem-peer

step "all tests passed"
