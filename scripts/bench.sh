#!/usr/bin/env bash
# The tandem benchmark suite (issue 6): installs what it needs, builds the
# release binaries, runs every scenario and the cost rows, and writes the
# table, CSV/JSON and SVG plots. Not part of the test command.
#
#   sudo bash scripts/bench.sh                 # full suite (3 repetitions, ~40 min)
#   sudo bash scripts/bench.sh --quick         # 1 repetition, smaller sizes (~10 minutes)
#   sudo bash scripts/bench.sh --only two,cost --reps 5 --out bench-out
#
# Arguments are passed to tandem-bench (`tandem-bench --help`). Results go
# to bench-out/ unless --out says otherwise. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: run as root (network namespaces need it): sudo bash scripts/bench.sh" >&2
  exit 1
fi

need=()
for p in curl:curl socat:socat nginx:nginx-light mptcpize:mptcpd iptables:iptables \
         tc:iproute2 nstat:iproute2 ethtool:ethtool ping:iputils-ping; do
  command -v "${p%%:*}" >/dev/null 2>&1 || need+=("${p#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "bench.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
if [ "$(sysctl -n net.mptcp.enabled 2>/dev/null || echo 0)" != 1 ]; then
  echo "bench.sh: this kernel has no MPTCP (net.mptcp.enabled != 1); running without the MPTCP anchor" >&2
  set -- --no-mptcp "$@"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p tandem -p tandem-bench
exec "$CARGO_TARGET_DIR/release/tandem-bench" --tandem "$CARGO_TARGET_DIR/release/tandem" "$@"
