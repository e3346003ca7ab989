#!/usr/bin/env bash
# The namespace lab: two routers, two shaped 20 Mbit/s uplinks with 10 ms
# one-way delay, a 32 MiB download through A alone and then with B helping.
# Installs what it needs, builds tandem, runs `tandem lab`, cleans up.
#
#   sudo bash scripts/lab.sh [tandem lab options, e.g. --size-mib 64 --routers 3]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "lab.sh: run as root (network namespaces need it): sudo bash scripts/lab.sh" >&2
  exit 1
fi
bash scripts/install-deps.sh
cargo build --release --locked -p tandem
exec ./target/release/tandem lab "$@"
