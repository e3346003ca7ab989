#!/usr/bin/env bash
# Tests of the OpenWrt feed that run here, without the OpenWrt SDK:
#
#  - the init script (files/tandem.init) under busybox ash and dash with
#    stubbed UCI/procd/network functions (tests/lib/openwrt-stubs.sh): the
#    UCI -> TOML mapping covers every key of docs/configuration.md, the
#    generated TOML passes `tandem run --check-config`, what procd is asked
#    for, error paths (bad values, missing peers, network down);
#  - the firewall: the nft rules pass `nft -c` except for the `queue`
#    statements this kernel cannot load, the fw4 path loads and removes the
#    table, the fw3 path loads iptables rules in a namespace and the fw3
#    include restores them after a firewall flush (root; skipped otherwise);
#  - the package Makefile against a stand-in of the OpenWrt build system
#    (tests/sdk-stub): it parses, names only real OpenWrt packages, copies a
#    workspace cargo can load, installs the expected file tree;
#  - shellcheck of the shipped scripts, uci-defaults registration.
#
#   bash openwrt-feed/tests/run.sh <path-to-tandem-binary>
#   ONLY=keygen bash openwrt-feed/tests/run.sh ...   (just t_*keygen*)
#
# Exits non-zero when any test fails; the last line is "N passed, M failed"
# (", K skipped" when some could not run here).
set -uo pipefail

if [ $# -ne 1 ] || [ ! -x "$1" ]; then
  echo "usage: bash $0 <path-to-tandem-binary>" >&2
  exit 2
fi
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
FEED=$(dirname "$HERE")
REPO=$(dirname "$FEED")
PKG="$FEED/net/tandem"
FILES="$PKG/files"
STUBS="$HERE/lib/openwrt-stubs.sh"
TOMLCHECK="$HERE/lib/tomlcheck.py"
FIX="$HERE/fixtures"

# Tools the tests use; installed when missing and we may (root + apt).
need=()
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v busybox >/dev/null || need+=(busybox)
command -v dash >/dev/null || need+=(dash)
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
command -v make >/dev/null || need+=(make)
if ((${#need[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "openwrt tests: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${need[@]}" >/dev/null; }
fi

WORK=$(mktemp -d /tmp/tandem-openwrt.XXXXXX)
NETNS="tandem-owrt-$$"
cleanup() {
  ip netns del "$NETNS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

passed=0 failed=0 skipped=0
SKIP=77 # a test returns this when it cannot run here

# run_test <name> <function> [args]: the function runs in a subshell with
# `set -e` (effective: the subshell is not in a condition context).
run_test() {
  local name=$1 log="$WORK/test.log" rc
  shift
  # ONLY=<regex> runs only the test functions whose name matches.
  [[ -z "${ONLY:-}" || "$1" =~ $ONLY ]] || return 0
  ( set -e; "$@" ) >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    passed=$((passed + 1))
    echo "ok      $name"
  elif [ $rc = $SKIP ]; then
    skipped=$((skipped + 1))
    echo "skipped $name: $(tail -n 1 "$log")"
  else
    failed=$((failed + 1))
    echo "FAILED  $name"
    sed 's/^/        | /' "$log" | tail -n 40
  fi
}

fail() { echo "FAIL: $*"; exit 1; }
skip() { echo "$*"; exit $SKIP; }

# Shells the init script runs under: busybox ash (what OpenWrt has) first.
SHELLS=()
command -v busybox >/dev/null && SHELLS+=("busybox sh")
command -v dash >/dev/null && SHELLS+=("dash")
[ ${#SHELLS[@]} -gt 0 ] || SHELLS+=("sh")
INIT_SHELL=${SHELLS[0]}

# --- a case: a fake router file system for one init-script run -------------

# new_case <dir> <uci fixture file>: UCI config, hostname, empty /sbin, a
# stub `nft` that only records (so no test touches the host's firewall).
new_case() {
  local c=$1
  rm -rf "$c"
  mkdir -p "$c/uci" "$c/var" "$c/sbin" "$c/bin" "$c/etc/tandem"
  cp "$2" "$c/uci/tandem"
  echo "testrouter" >"$c/hostname"
  : >"$c/procd.log"
  : >"$c/logger.log"
  # A key so start does not need `tandem keygen` (tested on its own).
  echo "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" >"$c/etc/tandem/key"
  sed -i "s|/etc/tandem/|$c/etc/tandem/|" "$c/uci/tandem"
  cat >"$c/bin/nft" <<EOF
#!/bin/sh
echo "nft \$*" >>"$c/nft.log"
case "\$1" in list) exit 1 ;; esac
exit 0
EOF
  chmod +x "$c/bin/nft"
}

# init <case> <shell function and args...>: sources the stubs and the init
# script in $INIT_SHELL, points its paths into the case, runs the function.
# Environment NETDEV_<network> (default lan=br-lan, wan=wan), NFT_CMD
# (default: the case's recording stub) and NS_EXEC (a command prefix, e.g.
# `ip netns exec NS`) may be set by the caller.
init() {
  local c=$1
  shift
  ${NS_EXEC:-} env UCI_CONFIG_DIR="$c/uci" PROCD_LOG="$c/procd.log" LOGGER_LOG="$c/logger.log" \
    NETDEV_lan="${NETDEV_lan-br-lan}" NETDEV_wan="${NETDEV_wan-wan}" \
    NETDEV_guest="${NETDEV_guest-}" NETDEV_wan6="${NETDEV_wan6-}" \
    CASE="$c" BIN="$BIN" STUBS="$STUBS" INIT="$FILES/tandem.init" \
    NFT_CMD="${NFT_CMD:-$c/bin/nft}" \
    $INIT_SHELL -c '
      . "$STUBS"
      . "$INIT"
      PROG="$BIN"
      VAR_DIR="$CASE/var"
      CONF_FILE="$VAR_DIR/tandem.toml"
      NFT_FILE="$VAR_DIR/tandem.nft"
      IPT_FILE="$VAR_DIR/firewall.sh"
      FW4="$CASE/sbin/fw4"
      FW3="$CASE/sbin/fw3"
      NFT="$NFT_CMD"
      NETWORK_SH=/dev/null
      HOSTNAME_FILE="$CASE/hostname"
      "$@"' init "$@"
}

# --- static checks ----------------------------------------------------------

t_shellcheck() {
  command -v shellcheck >/dev/null || skip "shellcheck not installed"
  # SC2034: START/STOP/USE_PROCD/EXTRA_* are read by /etc/rc.common.
  # SC3043: `local` exists in busybox ash (OpenWrt's /bin/sh) and dash.
  shellcheck -s sh -e SC2034,SC3043 "$FILES/tandem.init" "$FILES/firewall3.include" \
    "$FILES/tandem.uci-defaults" "$STUBS"
}

t_syntax_all_shells() {
  local sh f
  for sh in "${SHELLS[@]}"; do
    for f in "$FILES/tandem.init" "$FILES/firewall3.include" "$FILES/tandem.uci-defaults"; do
      $sh -n "$f" || fail "$sh -n $f"
    done
  done
}

# --- UCI -> TOML --------------------------------------------------------------

# The UCI equivalent of docs/tandem.example.toml gives the same configuration.
t_example_matches_docs() {
  local sh c
  for sh in "${SHELLS[@]}"; do
    c="$WORK/example"
    new_case "$c" "$FIX/example.uci"
    INIT_SHELL=$sh init "$c" start_service || { cat "$c/logger.log"; fail "start_service under $sh"; }
    [ -f "$c/var/tandem.toml" ] || fail "no TOML written under $sh"
    cat "$c/var/tandem.toml"
    # the key lives in the case directory, not in /etc of this machine
    sed "s|$c/etc/tandem/key|/etc/tandem/key|" "$c/var/tandem.toml" >"$c/var/normalized.toml"
    python3 "$TOMLCHECK" equal "$c/var/normalized.toml" "$REPO/docs/tandem.example.toml" ||
      fail "under $sh: generated TOML differs from docs/tandem.example.toml"
    "$BIN" run --config "$c/var/tandem.toml" --check-config | grep -q ': ok (1 peer)' ||
      fail "check-config"
  done
}

# Every option set to a non-default value maps to its key, and every key
# docs/configuration.md lists is produced.
t_full_mapping() {
  local sh c
  for sh in "${SHELLS[@]}"; do
    c="$WORK/full"
    new_case "$c" "$FIX/full.uci"
    sed -i "s|$c/etc/tandem/other.key|/etc/tandem/other.key|" "$c/uci/tandem"
    echo "x" >"$c/etc/tandem/key" # not the configured key file: must not matter
    NETDEV_guest=br-guest NETDEV_wan6=wan INIT_SHELL=$sh init "$c" eval 'config_load tandem && write_config' ||
      { cat "$c/logger.log"; fail "write_config under $sh"; }
    cat "$c/var/tandem.toml"
    python3 "$TOMLCHECK" equal "$c/var/tandem.toml" "$FIX/full.expected.toml" ||
      fail "under $sh: generated TOML differs from full.expected.toml"
    # node.testbed: lab and tests only ("never on a real router"), no UCI option.
    python3 "$TOMLCHECK" documented "$c/var/tandem.toml" "$REPO/docs/configuration.md" node.testbed ||
      fail "a documented key has no UCI option"
    "$BIN" run --config "$c/var/tandem.toml" --check-config | grep -q ': ok (2 peers)' ||
      fail "check-config"
  done
}

# The options the shipped /etc/config/tandem mentions (set or commented out)
# are exactly the options the init script maps (those in full.uci).
t_shipped_config_lists_every_option() {
  local shipped mapped
  shipped=$(sed -n 's/^[#[:space:]]*\(option\|list\) \([a-z_]*\) .*/\2/p' \
    "$FILES/tandem.config" | sort -u)
  mapped=$(sed -n 's/^[[:space:]]*\(option\|list\) \([a-z_]*\) .*/\2/p' \
    "$FIX/full.uci" | sort -u)
  echo "shipped: $(echo $shipped)"
  echo "mapped:  $(echo $mapped)"
  # full.uci leaves out options it cannot give a non-default value here.
  [ "$shipped" = "$mapped" ] || {
    diff <(echo "$shipped") <(echo "$mapped")
    fail "tandem.config and full.uci name different options"
  }
  local o
  for o in $mapped; do
    grep -qw -- "$o" "$FILES/tandem.init" || fail "option $o is not read by tandem.init"
  done
}

t_shipped_config_is_off() {
  local c="$WORK/shipped"
  new_case "$c" "$FILES/tandem.config"
  init "$c" start_service || fail "start_service"
  ! grep -q open_instance "$c/procd.log" || fail "the shipped config started the daemon"
  # enabled, but no peer yet
  sed -i "s/option enabled '0'/option enabled '1'/" "$c/uci/tandem"
  init "$c" start_service || fail "start_service"
  ! grep -q open_instance "$c/procd.log" || fail "started without peers"
  grep -q "no enabled 'config peer'" "$c/logger.log" || fail "no log line about missing peers"
  # the commented example peer, uncommented: now it runs
  sed -i 's/^#config peer/config peer/; s/^#\t\(option\)/\t\1/; s/^#\t#/\t#/' "$c/uci/tandem"
  grep -n peer -A8 "$c/uci/tandem"
  init "$c" start_service || { cat "$c/logger.log"; fail "start_service with a peer"; }
  grep -q "open_instance tandem" "$c/procd.log" || fail "no instance with a peer"
  "$BIN" run --config "$c/var/tandem.toml" --check-config
  [ "$(python3 "$TOMLCHECK" get "$c/var/tandem.toml" node.name)" = testrouter ] ||
    fail "node.name does not default to the hostname"
}

t_procd_instance() {
  local c="$WORK/procd"
  new_case "$c" "$FIX/full.uci"
  cp "$c/etc/tandem/key" "$c/etc/tandem/other.key"
  NETDEV_guest=br-guest init "$c" start_service || { cat "$c/logger.log"; fail "start_service"; }
  cat "$c/procd.log"
  grep -qx "open_instance tandem" "$c/procd.log" || fail "open_instance"
  grep -qx "set_param command $BIN run --config $c/var/tandem.toml" "$c/procd.log" || fail "command"
  grep -qx "set_param respawn 3600 5 5" "$c/procd.log" || fail "respawn"
  grep -qx "set_param stdout 1" "$c/procd.log" || fail "stdout to logd"
  grep -qx "set_param stderr 1" "$c/procd.log" || fail "stderr to logd"
  grep -qx "set_param env TANDEM_LOG=debug NO_COLOR=1" "$c/procd.log" || fail "log level, no ANSI colours in logd"
  grep -qx "set_param file $c/var/tandem.toml $c/etc/tandem/other.key" "$c/procd.log" ||
    fail "file (restart on config/key change)"
  grep -qx "close_instance" "$c/procd.log" || fail "close_instance"
  # firewall 'none': no rules file, no nft call beyond looking
  [ ! -e "$c/var/tandem.nft" ] && [ ! -e "$c/var/firewall.sh" ] || fail "rules written for 'none'"
}

t_triggers() {
  local c="$WORK/triggers"
  new_case "$c" "$FIX/full.uci"
  init "$c" service_triggers
  cat "$c/procd.log"
  grep -qx "reload_trigger tandem" "$c/procd.log" || fail "config reload trigger"
  for n in lan guest wan wan6; do
    grep -qx "interface_trigger $n" "$c/procd.log" || fail "interface trigger $n"
  done
}

t_bad_value_names_key() {
  local c="$WORK/bad"
  new_case "$c" "$FIX/example.uci"
  sed -i "s/option uplink_mbit '20.0'/option uplink_mbit 'fast'/" "$c/uci/tandem"
  init "$c" start_service && fail "start_service accepted uplink_mbit 'fast'"
  cat "$c/logger.log"
  ! grep -q open_instance "$c/procd.log" || fail "started with a bad value"
  grep -q "daemon.err tandem: config: .*rate_mbit" "$c/logger.log" || fail "error does not name rate_mbit"
  [ -f "$c/var/tandem.toml.rejected" ] || fail "rejected file not kept"
  [ ! -f "$c/var/tandem.toml" ] || fail "a rejected config was installed"

  new_case "$c" "$FIX/example.uci"
  sed -i "s/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=/Zm9v/" "$c/uci/tandem"
  init "$c" start_service && fail "start_service accepted a short key"
  grep -q "peer\[0\].public_key" "$c/logger.log" || { cat "$c/logger.log"; fail "error does not name peer[0].public_key"; }

  new_case "$c" "$FIX/example.uci"
  sed -i "s/option allow_cookie '0'/option allow_cookie 'maybe'/" "$c/uci/tandem"
  init "$c" start_service && fail "start_service accepted allow_cookie 'maybe'"
  grep -q "allow_cookie" "$c/logger.log" || { cat "$c/logger.log"; fail "error does not name allow_cookie"; }

  new_case "$c" "$FIX/example.uci"
  sed -i "s/option firewall 'none'/option firewall 'iptables'/" "$c/uci/tandem"
  init "$c" start_service && fail "start_service accepted firewall 'iptables'"
  grep -q "expected auto, fw4, fw3 or none" "$c/logger.log" || fail "firewall option error"
}

# Values are TOML-escaped: quotes and backslashes survive, control
# characters (which could start a new TOML line) are refused.
t_quoting() {
  local c="$WORK/quote" want got
  new_case "$c" "$FIX/example.uci"
  want='router "a" \ one'
  sed -i "s/option name 'router-a'/option name 'router \"a\" \\\\ one'/" "$c/uci/tandem"
  grep "option name" "$c/uci/tandem"
  init "$c" start_service || { cat "$c/logger.log"; fail "start_service"; }
  got=$(python3 "$TOMLCHECK" get "$c/var/tandem.toml" node.name)
  [ "$got" = "$want" ] || fail "node.name: got [$got], want [$want]"

  new_case "$c" "$FIX/example.uci"
  sed -i "s/option policy 'dynamic'/option policy \"\$(printf 'dyn\\\\namic')\"/" "$c/uci/tandem"
  grep "option policy" "$c/uci/tandem"
  init "$c" start_service && fail "a value with a newline was accepted"
  grep -q "control character" "$c/logger.log" || { cat "$c/logger.log"; fail "no control character error"; }
  ! grep -q open_instance "$c/procd.log" || fail "started"
}

t_network_down() {
  local c="$WORK/netdown"
  new_case "$c" "$FIX/example.uci"
  NETDEV_wan='' init "$c" start_service && fail "started without a WAN device"
  cat "$c/logger.log"
  grep -q "network 'wan' has no device yet" "$c/logger.log" || fail "no warning for wan"
  grep -q "no LAN or no WAN device" "$c/logger.log" || fail "no 'not starting' line"
  ! grep -q open_instance "$c/procd.log" || fail "started"
}

t_firewall_kind() {
  local c="$WORK/kind" k
  new_case "$c" "$FIX/example.uci"
  sed -i "s/option firewall 'none'/option firewall 'auto'/" "$c/uci/tandem"
  k=$(init "$c" eval 'config_load tandem; firewall_kind')
  [ "$k" = none ] || fail "no fw3/fw4: got $k"
  printf '#!/bin/sh\n' >"$c/sbin/fw3" && chmod +x "$c/sbin/fw3"
  k=$(init "$c" eval 'config_load tandem; firewall_kind')
  [ "$k" = fw3 ] || fail "fw3 only: got $k"
  printf '#!/bin/sh\n' >"$c/sbin/fw4" && chmod +x "$c/sbin/fw4"
  k=$(init "$c" eval 'config_load tandem; firewall_kind')
  [ "$k" = fw4 ] || fail "fw4 and fw3 (firewall4 ships a fw3 wrapper): got $k"
}

t_keygen() {
  "$BIN" keygen --help >/dev/null 2>&1 || skip "this tandem binary has no keygen subcommand yet"
  local c="$WORK/keygen"
  new_case "$c" "$FIX/example.uci"
  rm -f "$c/etc/tandem/key"
  sed -i "s|option private_key_file '.*'|option private_key_file '$c/etc/tandem/new/key'|" "$c/uci/tandem"
  grep -q "$c/etc/tandem/new/key" "$c/uci/tandem" || fail "fixture edit"
  init "$c" start_service || { cat "$c/logger.log"; fail "start_service"; }
  cat "$c/logger.log"
  [ -s "$c/etc/tandem/new/key" ] || fail "no key written"
  [ "$(stat -c %a "$c/etc/tandem/new/key")" = 600 ] || fail "key mode $(stat -c %a "$c/etc/tandem/new/key")"
  grep -qE "created private key .*neighbours: [A-Za-z0-9+/]{43}=" "$c/logger.log" ||
    fail "no log line with the public key"
  # second start keeps the key
  local sum
  sum=$(md5sum <"$c/etc/tandem/new/key")
  init "$c" start_service
  [ "$sum" = "$(md5sum <"$c/etc/tandem/new/key")" ] || fail "key replaced on restart"
}

t_check_command() {
  local c="$WORK/checkcmd" out
  new_case "$c" "$FIX/example.uci"
  out=$(init "$c" check) || fail "check failed on a good config"
  echo "$out"
  echo "$out" | grep -q ': ok (1 peer)' || fail "check output"
  [ ! -e "$c/var/tandem.toml" ] || fail "check installed a config"
  sed -i "s/option max_hops '2'/option max_hops '99'/" "$c/uci/tandem"
  out=$(init "$c" check 2>&1) && fail "check passed max_hops 99"
  grep -q "planner.max_hops" "$c/logger.log" || { cat "$c/logger.log"; fail "check error does not name planner.max_hops"; }
}

# --- firewall ----------------------------------------------------------------

need_netns() {
  [ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
  ip netns add "$NETNS" 2>/dev/null || ip netns list | grep -q "^$NETNS" ||
    skip "cannot create a network namespace"
}

# nft with `queue ... bypass` rewritten to `accept`: this kernel has no
# CONFIG_NFT_QUEUE (docs: shared TESTBED.md); every other statement is
# checked for real.
make_nft_noqueue() {
  cat >"$WORK/nft-noqueue" <<'EOF'
#!/bin/sh
# usage as nft; rewrites the file given to -f
out=
for a in "$@"; do
  if [ "$prev" = "-f" ]; then
    sed -E 's/queue num [0-9]+ bypass/accept/' "$a" >"$a.noqueue"
    a="$a.noqueue"
  fi
  out="$out '$a'"
  prev="$a"
done
eval "exec nft $out"
EOF
  chmod +x "$WORK/nft-noqueue"
}

t_nft_rules_check() {
  need_netns
  local c="$WORK/nftcheck" errs bad nq nb ni
  new_case "$c" "$FIX/example.uci"
  init "$c" eval 'config_load tandem && write_config' || fail "write_config"
  "$BIN" rules nft --config "$c/var/tandem.toml" >"$c/tandem.nft"
  # every queue statement goes to the configured queue (7) or, for the
  # client's INVALID packets, the next one (8), with bypass
  nq=$(grep -v '^[[:space:]]*#' "$c/tandem.nft" | grep -c 'queue')
  nb=$(grep -cE 'queue num (7|8) bypass' "$c/tandem.nft")
  ni=$(grep -c 'ct state invalid queue num 8 bypass' "$c/tandem.nft")
  echo "$nq queue statements, $nb with 'num 7|8 bypass', $ni for INVALID packets on 8"
  [ "$nq" -ge 1 ] || fail "no queue rule"
  [ "$nq" = "$nb" ] || fail "a queue statement without bypass (or another queue number)"
  [ "$ni" -ge 1 ] || fail "INVALID client packets not on queue 8"
  errs=$(ip netns exec "$NETNS" nft -c -f "$c/tandem.nft" 2>&1) && {
    echo "this kernel accepted nft queue rules: fine, nothing left to check"
    return 0
  }
  echo "$errs"
  # Every error must point at a line with a queue statement.
  bad=$(echo "$errs" | grep -E '^[^ ]+:[0-9]+:[0-9-]+: Error' | while IFS=: read -r _ line _; do
    sed -n "${line}p" "$c/tandem.nft" | grep -q 'queue num' || echo "line $line"
  done)
  [ -z "$bad" ] || fail "nft errors on non-queue lines: $bad"
  echo "$errs" | grep -qE ': Error' || fail "nft failed without an error line"
  sed -E 's/queue num [0-9]+ bypass/accept/' "$c/tandem.nft" >"$c/noqueue.nft"
  ip netns exec "$NETNS" nft -c -f "$c/noqueue.nft" || fail "rules without queue statements rejected"
}

# fw4 path: start loads table inet tandem (through nft -c first), stop
# removes it and the included file.
t_fw4_start_stop() {
  need_netns
  make_nft_noqueue
  local c="$WORK/fw4"
  new_case "$c" "$FIX/example.uci"
  sed -i "s/option firewall 'none'/option firewall 'fw4'/" "$c/uci/tandem"
  NS_EXEC="ip netns exec $NETNS" NFT_CMD="$WORK/nft-noqueue" init "$c" start_service ||
    { cat "$c/logger.log"; fail "start_service"; }
  [ -f "$c/var/tandem.nft" ] || fail "no $c/var/tandem.nft"
  ip netns exec "$NETNS" nft list table inet tandem >"$c/loaded" || fail "table inet tandem not loaded"
  cat "$c/loaded"
  for ch in forward_mangle forward_guard output_raw; do
    grep -q "chain $ch" "$c/loaded" || fail "chain $ch missing"
  done
  grep -q 'iifname "br-lan"' "$c/loaded" || fail "LAN device not in the rules"
  grep -q 'oifname "wan"' "$c/loaded" || fail "WAN device not in the rules"
  grep -q "open_instance tandem" "$c/procd.log" || fail "daemon not started"
  # reload (start again) replaces the table, does not duplicate it
  NS_EXEC="ip netns exec $NETNS" NFT_CMD="$WORK/nft-noqueue" init "$c" start_service
  [ "$(ip netns exec "$NETNS" nft list tables | grep -c 'inet tandem')" = 1 ] || fail "table duplicated"
  # a reload with a broken configuration leaves no stale rules behind
  cp "$c/uci/tandem" "$c/uci/tandem.good"
  sed -i "s/option uplink_mbit '20.0'/option uplink_mbit '0'/" "$c/uci/tandem"
  NS_EXEC="ip netns exec $NETNS" NFT_CMD="$WORK/nft-noqueue" init "$c" start_service &&
    fail "reload accepted uplink_mbit 0"
  ! ip netns exec "$NETNS" nft list table inet tandem >/dev/null 2>&1 || fail "stale table after a failed reload"
  [ ! -e "$c/var/tandem.nft" ] || fail "stale include after a failed reload"
  cp "$c/uci/tandem.good" "$c/uci/tandem"
  NS_EXEC="ip netns exec $NETNS" NFT_CMD="$WORK/nft-noqueue" init "$c" start_service || fail "start again"
  ip netns exec "$NETNS" nft list table inet tandem >/dev/null || fail "table not back"
  NS_EXEC="ip netns exec $NETNS" NFT_CMD="$WORK/nft-noqueue" init "$c" stop_service
  ! ip netns exec "$NETNS" nft list table inet tandem >/dev/null 2>&1 || fail "table left after stop"
  [ ! -e "$c/var/tandem.nft" ] || fail "rules file left after stop (fw4 would include it)"
}

# What fw4 does with the include on every (re)start: one `nft -f` of its
# own table plus `include` of each /usr/share/nftables.d/ruleset-post file
# (the symlink the package installs, resolved to the generated rules).
# Loading that twice (a firewall reload) keeps one tandem table next to fw4's.
t_fw4_ruleset_include() {
  need_netns
  local c="$WORK/fw4inc" link
  new_case "$c" "$FIX/example.uci"
  init "$c" eval 'config_load tandem && write_config' || fail "write_config"
  "$BIN" rules nft --config "$c/var/tandem.toml" |
    sed -E 's/queue num [0-9]+ bypass/accept/' >"$c/var/tandem.nft" # no CONFIG_NFT_QUEUE here
  mkdir -p "$c/usr/share/nftables.d/ruleset-post"
  link="$c/usr/share/nftables.d/ruleset-post/30-tandem.nft"
  ln -s "$c/var/tandem.nft" "$link"
  cat >"$c/fw4-ruleset.nft" <<EOF
table inet fw4
flush table inet fw4

table inet fw4 {
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
	}
}

include "$link"
EOF
  ip netns exec "$NETNS" nft -c -f "$c/fw4-ruleset.nft" || fail "fw4-style ruleset with the include rejected"
  ip netns exec "$NETNS" nft -f "$c/fw4-ruleset.nft" || fail "first load"
  ip netns exec "$NETNS" nft -f "$c/fw4-ruleset.nft" || fail "reload"
  ip netns exec "$NETNS" nft list tables
  [ "$(ip netns exec "$NETNS" nft list tables | grep -c '^table inet tandem$')" = 1 ] || fail "tandem table not there once"
  [ "$(ip netns exec "$NETNS" nft list tables | grep -c '^table inet fw4$')" = 1 ] || fail "fw4 table not there once"
  ip netns exec "$NETNS" nft list chain inet tandem forward_mangle >/dev/null || fail "forward_mangle missing"
  ip netns exec "$NETNS" nft delete table inet fw4
  ip netns exec "$NETNS" nft delete table inet tandem
}

# fw4 must never be handed a file nft rejects: a failing `nft -c` keeps the
# daemon (and the include) out.
t_fw4_rejected_rules_not_installed() {
  local c="$WORK/fw4bad"
  new_case "$c" "$FIX/example.uci"
  sed -i "s/option firewall 'none'/option firewall 'fw4'/" "$c/uci/tandem"
  cat >"$c/bin/nft" <<EOF
#!/bin/sh
echo "nft \$*" >>"$c/nft.log"
case "\$1" in list) exit 1 ;; -c) echo "Error: Could not process rule: No such file or directory (queue)" >&2; exit 1 ;; esac
exit 0
EOF
  init "$c" start_service && fail "started although nft -c failed"
  cat "$c/logger.log"
  grep -q "kmod-nft-queue" "$c/logger.log" || fail "error does not point at kmod-nft-queue"
  [ ! -e "$c/var/tandem.nft" ] && [ ! -e "$c/var/tandem.nft.new" ] || fail "rejected rules left where fw4 includes them"
  ! grep -q open_instance "$c/procd.log" || fail "daemon started"
  ! grep -q -- "^nft -f" "$c/nft.log" || fail "rules loaded after a failed check"
}

# fw3 path: start loads the iptables rules in a namespace; after a firewall
# flush the fw3 include puts them back; stop removes them.
t_fw3_start_include_stop() {
  need_netns
  local c="$WORK/fw3" inc
  new_case "$c" "$FIX/example.uci"
  sed -i "s/option firewall 'none'/option firewall 'fw3'/" "$c/uci/tandem"
  NS_EXEC="ip netns exec $NETNS" NFT_CMD=nft init "$c" start_service ||
    { cat "$c/logger.log"; fail "start_service"; }
  ip netns exec "$NETNS" iptables -w -t mangle -S TANDEM >"$c/mangle" || fail "no mangle TANDEM chain"
  cat "$c/mangle"
  grep -q -- "-j NFQUEUE --queue-num 7 --queue-bypass" "$c/mangle" || fail "no NFQUEUE rule with bypass"
  ! grep -- "-j NFQUEUE" "$c/mangle" | grep -v -- "--queue-bypass" || fail "NFQUEUE rule without bypass"
  ip netns exec "$NETNS" iptables -w -t mangle -C FORWARD -j TANDEM || fail "no FORWARD jump"
  ip netns exec "$NETNS" ip6tables -w -t mangle -C FORWARD -j TANDEM || fail "no ip6tables FORWARD jump"
  ip netns exec "$NETNS" iptables -w -t raw -C OUTPUT -j TANDEM_RAW || fail "no raw OUTPUT jump"
  # fw3 restart: everything flushed, then includes run
  for T in iptables ip6tables; do
    for tb in mangle filter raw; do
      ip netns exec "$NETNS" $T -w -t $tb -F
      ip netns exec "$NETNS" $T -w -t $tb -X
    done
  done
  ! ip netns exec "$NETNS" iptables -w -t mangle -S TANDEM >/dev/null 2>&1 || fail "flush did not flush"
  inc="$c/firewall3.include"
  sed "s|^IPT_FILE=.*|IPT_FILE=$c/var/firewall.sh|" "$FILES/firewall3.include" >"$inc"
  ip netns exec "$NETNS" sh "$inc" || fail "include failed"
  ip netns exec "$NETNS" iptables -w -t mangle -C FORWARD -j TANDEM || fail "include did not restore the FORWARD jump"
  ip netns exec "$NETNS" iptables -w -t mangle -S TANDEM | grep -q -- "--queue-bypass" || fail "include did not restore the rules"
  # running the include twice does not duplicate the hooks
  ip netns exec "$NETNS" sh "$inc"
  [ "$(ip netns exec "$NETNS" iptables -w -t mangle -S FORWARD | grep -c -- '-j TANDEM')" = 1 ] || fail "hook duplicated"
  NS_EXEC="ip netns exec $NETNS" NFT_CMD=nft init "$c" stop_service
  ! ip netns exec "$NETNS" iptables -w -t mangle -S TANDEM >/dev/null 2>&1 || fail "chain left after stop"
  ! ip netns exec "$NETNS" iptables -w -t mangle -C FORWARD -j TANDEM 2>/dev/null || fail "hook left after stop"
  [ ! -e "$c/var/firewall.sh" ] || fail "rules script left after stop"
  # with the service stopped the include does nothing and succeeds
  ip netns exec "$NETNS" sh "$inc" || fail "include failed with the service stopped"
  ! ip netns exec "$NETNS" iptables -w -t mangle -S TANDEM >/dev/null 2>&1 || fail "include loaded rules for a stopped service"
}

# End to end on a router-like namespace: the service set up from UCI (fw3
# rules, key from keygen), then the exact command procd was given runs,
# answers `tandem status` and stops cleanly on SIGTERM (what procd sends).
t_daemon_runs_from_generated_config() {
  need_netns
  "$BIN" keygen --help >/dev/null 2>&1 || skip "this tandem binary has no keygen subcommand yet"
  local c="$WORK/daemon" cmd envs pid st
  new_case "$c" "$FIX/example.uci"
  rm -f "$c/etc/tandem/key"
  sed -i "s/option firewall 'none'/option firewall 'fw3'/; s|option status_socket '.*'|option status_socket '$c/var/tandem.sock'|" "$c/uci/tandem"
  ip -n "$NETNS" link add br-lan type veth peer name wan 2>/dev/null || true
  ip -n "$NETNS" link set lo up
  NS_EXEC="ip netns exec $NETNS" NFT_CMD=nft init "$c" start_service ||
    { cat "$c/logger.log"; fail "start_service"; }
  cmd=$(sed -n 's/^set_param command //p' "$c/procd.log")
  [ -n "$cmd" ] || fail "no command in the procd instance"
  envs=$(sed -n 's/^set_param env //p' "$c/procd.log")
  echo "procd would run: $envs $cmd"
  ip netns exec "$NETNS" env -i PATH="$PATH" $envs $cmd >"$c/daemon.log" 2>&1 &
  pid=$!
  st=1
  for _ in $(seq 1 100); do # bounded wait for the socket, not a timing assertion
    if ip netns exec "$NETNS" "$BIN" status --socket "$c/var/tandem.sock" >"$c/status.txt" 2>&1; then
      st=0
      break
    fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.2
  done
  cat "$c/status.txt"
  kill -TERM $pid 2>/dev/null
  wait $pid
  local rc=$?
  cat "$c/daemon.log"
  [ $st = 0 ] || fail "tandem status got no answer from the daemon"
  [ $rc = 0 ] || fail "the daemon exited with $rc on SIGTERM"
  ! grep -q $'\e\[' "$c/daemon.log" || fail "ANSI escape codes in the log"
  NS_EXEC="ip netns exec $NETNS" NFT_CMD=nft init "$c" stop_service
}

t_uci_defaults() {
  local c="$WORK/ucidef" s
  rm -rf "$c" && mkdir -p "$c/sbin" "$c/bin"
  cat >"$c/bin/uci" <<EOF
#!/bin/sh
echo "uci \$*" >>"$c/uci.log"
[ "\$2" = batch ] && cat >>"$c/uci.log"
exit 0
EOF
  chmod +x "$c/bin/uci"
  s="$c/90-tandem"
  sed "s|/sbin/|$c/sbin/|g" "$FILES/tandem.uci-defaults" >"$s"
  # neither firewall: nothing registered
  PATH="$c/bin:$PATH" sh "$s" || fail "exit status"
  ! grep -q batch "$c/uci.log" 2>/dev/null || fail "registered without fw3"
  # fw3: script include registered, pointing at the installed include
  printf '#!/bin/sh\n' >"$c/sbin/fw3" && chmod +x "$c/sbin/fw3"
  PATH="$c/bin:$PATH" sh "$s" || fail "exit status"
  cat "$c/uci.log"
  grep -qx "	*set firewall.tandem=include" "$c/uci.log" || fail "no include section"
  grep -qx "	*set firewall.tandem.type=script" "$c/uci.log" || fail "not a script include"
  grep -qx "	*set firewall.tandem.path=/usr/share/tandem/firewall3.include" "$c/uci.log" || fail "path"
  grep -qx "	*set firewall.tandem.reload=1" "$c/uci.log" || fail "reload"
  grep -qx "	*commit firewall" "$c/uci.log" || fail "commit"
  # fw4 (which also ships /sbin/fw3): nothing in UCI, nftables.d does it
  : >"$c/uci.log"
  printf '#!/bin/sh\n' >"$c/sbin/fw4" && chmod +x "$c/sbin/fw4"
  PATH="$c/bin:$PATH" sh "$s" || fail "exit status"
  ! grep -q batch "$c/uci.log" || fail "registered a fw3 include on fw4"
}

# --- the package Makefile ----------------------------------------------------

# Real OpenWrt package names the Makefile may depend on, and where each is
# defined (checked against the openwrt/openwrt and openwrt/packages trees):
ALLOWED_PACKAGES=(
  rust                          # openwrt/packages lang/rust/Makefile (rust/host)
  kmod-nft-queue                # openwrt/openwrt package/kernel/linux/modules/netfilter.mk, KernelPackage/nft-queue
  iptables-mod-nfqueue          # openwrt/openwrt package/network/utils/iptables/Makefile
  iptables-mod-conntrack-extra  # openwrt/openwrt package/network/utils/iptables/Makefile (connbytes, connmark, CONNMARK)
  kmod-ipt-raw                  # openwrt/openwrt package/kernel/linux/modules/netfilter.mk, KernelPackage/ipt-raw
  kmod-ipt-raw6                 # openwrt/openwrt package/kernel/linux/modules/netfilter.mk, KernelPackage/ipt-raw6
  firewall                      # openwrt/openwrt package/network/config/firewall (fw3), as PACKAGE_firewall
  firewall4                     # openwrt/openwrt package/network/config/firewall4 (fw4), as PACKAGE_firewall4
)
# Kconfig symbols that are not packages.
ALLOWED_SYMBOLS=(IPV6 aarch64 arm i386 loongarch64 mips mips64 mips64el mipsel powerpc powerpc64 riscv64 x86_64)

stub_make() { # <out dir> <make args...>
  local out=$1
  shift
  mkdir -p "$out"
  make -s -C "$PKG" TOPDIR="$HERE/sdk-stub" STUB_OUT="$out" BUILD_DIR="$WORK/build_dir" "$@"
}

allowed() {
  local x
  for x in "${ALLOWED_PACKAGES[@]}" "${ALLOWED_SYMBOLS[@]}"; do [ "$x" = "$1" ] && return 0; done
  return 1
}

t_makefile_metadata() {
  local out="$WORK/mk" dep sym pkg names want_version
  stub_make "$out" metadata || fail "the Makefile does not parse"
  cat "$out/depends"; echo; cat "$out/build-depends"; echo
  names=()
  for dep in $(cat "$out/depends") $(cat "$out/build-depends"); do
    case "$dep" in
    @*) # @(a||b): architecture symbols
      for sym in $(echo "${dep#@}" | tr -c 'A-Za-z0-9_-' ' '); do
        allowed "$sym" || fail "unknown symbol $sym in $dep"
      done ;;
    +*:*) # +COND:pkg
      pkg=${dep##*:}
      for sym in $(echo "${dep%:*}" | tr -c 'A-Za-z0-9_-' ' '); do
        allowed "${sym#PACKAGE_}" || fail "unknown condition $sym in $dep"
      done
      names+=("$pkg") ;;
    +*) names+=("${dep#+}") ;;
    */host) names+=("${dep%/host}") ;;
    *) names+=("$dep") ;;
    esac
  done
  for pkg in "${names[@]}"; do
    allowed "$pkg" || fail "$pkg is not on the list of known OpenWrt packages"
  done
  for pkg in kmod-nft-queue iptables-mod-nfqueue iptables-mod-conntrack-extra; do
    grep -q -- "$pkg" "$out/depends" || fail "does not depend on $pkg"
  done
  grep -q '+PACKAGE_firewall4:kmod-nft-queue' "$out/depends" || fail "kmod-nft-queue not tied to fw4"
  grep -q '+PACKAGE_firewall:iptables-mod-nfqueue' "$out/depends" || fail "iptables-mod-nfqueue not tied to fw3"
  grep -qx 'rust/host' "$out/build-depends" || fail "PKG_BUILD_DEPENDS is not rust/host"
  grep -qx '/etc/config/tandem' "$out/conffiles" || fail "/etc/config/tandem is not a conffile"
  grep -qx '/etc/tandem/key' "$out/conffiles" || fail "the key is not kept across upgrades"
  want_version=$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))["workspace"]["package"]["version"])' "$REPO/Cargo.toml")
  [ "$(cat "$out/version")" = "$want_version" ] ||
    fail "PKG_VERSION $(cat "$out/version") != workspace version $want_version"
  [ "$(cat "$out/source-dir")" = "$REPO" ] || fail "source dir $(cat "$out/source-dir") != $REPO"
  grep -q "$REPO/Cargo.lock" "$out/file-depends" || fail "PKG_FILE_DEPENDS misses Cargo.lock"
  sh -n "$out/prerm" || fail "prerm is not valid sh"
  # prerm on a router: drops the fw3 include uci-defaults registered
  mkdir -p "$out/bin"
  printf '#!/bin/sh\necho "uci $*" >>"%s"\n[ "$*" = "-q get firewall.tandem" ] && echo include\nexit 0\n' \
    "$out/uci.log" >"$out/bin/uci"
  chmod +x "$out/bin/uci"
  PATH="$out/bin:$PATH" IPKG_INSTROOT='' sh "$out/prerm" || fail "prerm failed"
  cat "$out/uci.log"
  grep -qx "uci -q delete firewall.tandem" "$out/uci.log" || fail "prerm does not delete the include"
  grep -qx "uci -q commit firewall" "$out/uci.log" || fail "prerm does not commit"
  # building an image (IPKG_INSTROOT set): touches nothing
  : >"$out/uci.log"
  PATH="$out/bin:$PATH" IPKG_INSTROOT=/some/rootfs sh "$out/prerm" || fail "prerm failed"
  [ ! -s "$out/uci.log" ] || fail "prerm ran uci while building an image"
}

# With the feed added by src-link, OpenWrt runs make in
# package/feeds/<feed>/tandem, a symlink into the feed: the source
# directory must still resolve to the repository.
t_makefile_src_link() {
  local root="$WORK/buildroot" out="$WORK/mk-link"
  mkdir -p "$root/feeds" "$root/package/feeds/tandem"
  ln -sfn "$FEED" "$root/feeds/tandem"
  ln -sfn ../../../feeds/tandem/net/tandem "$root/package/feeds/tandem/tandem"
  mkdir -p "$out"
  make -s -C "$root/package/feeds/tandem/tandem" TOPDIR="$HERE/sdk-stub" STUB_OUT="$out" \
    BUILD_DIR="$WORK/build_dir" metadata || fail "make through the feed symlinks"
  [ "$(cat "$out/source-dir")" = "$REPO" ] || fail "source dir via src-link: $(cat "$out/source-dir")"
}

t_makefile_prepare_compile() {
  command -v cargo >/dev/null || skip "cargo not installed"
  local out="$WORK/mk-build" bd
  stub_make "$out" prepare || fail "Build/Prepare"
  bd="$WORK/build_dir/tandem-$(cat "$out/version")"
  for f in Cargo.toml Cargo.lock crates/tandem/Cargo.toml crates/tandem/src/main.rs; do
    [ -f "$bd/$f" ] || fail "$f not copied"
  done
  [ ! -e "$bd/target" ] || fail "build output copied"
  [ ! -e "$bd/.git" ] || fail ".git copied"
  [ ! -e "$bd/openwrt-feed" ] || fail "the feed copied into its own build"
  stub_make "$out" compile | tee "$out/compile.log" || fail "Build/Compile (workspace does not load)"
  grep -q -- "--path $bd/crates/tandem" "$out/compile.log" || fail "cargo install path"
}

t_makefile_install() {
  local out="$WORK/mk-inst" dest="$WORK/rootfs" pid nftfile
  pid="$WORK/build_dir/tandem-inst/ipkg-install"
  mkdir -p "$pid/bin"
  cp "$BIN" "$pid/bin/tandem"
  stub_make "$out" install DEST="$dest" PKG_INSTALL_DIR="$pid" || fail "Package/tandem/install"
  (cd "$dest" && find . | sort)
  check_mode() { [ "$(stat -c %a "$dest$1")" = "$2" ] || fail "$1 mode $(stat -c %a "$dest$1"), want $2"; }
  check_mode /usr/bin/tandem 755
  check_mode /etc/init.d/tandem 755
  check_mode /etc/config/tandem 600
  check_mode /etc/uci-defaults/90-tandem 755
  check_mode /usr/share/tandem/firewall3.include 755
  [ -d "$dest/etc/tandem" ] || fail "/etc/tandem missing"
  cmp -s "$dest/etc/config/tandem" "$FILES/tandem.config" || fail "config differs"
  # fw4 auto-include: a symlink to the file the init script writes
  nftfile=$(sh -c '. "$1"; echo "$NFT_FILE"' _ "$FILES/tandem.init")
  [ -L "$dest/usr/share/nftables.d/ruleset-post/30-tandem.nft" ] || fail "no fw4 include symlink"
  [ "$(readlink "$dest/usr/share/nftables.d/ruleset-post/30-tandem.nft")" = "$nftfile" ] ||
    fail "fw4 include points to $(readlink "$dest/usr/share/nftables.d/ruleset-post/30-tandem.nft"), init writes $nftfile"
  # the fw3 include reads the file the init script writes
  grep -qx "IPT_FILE=$(sh -c '. "$1"; echo "$IPT_FILE"' _ "$FILES/tandem.init")" \
    "$dest/usr/share/tandem/firewall3.include" || fail "fw3 include reads another file than init writes"
  # the uci-defaults script registers the path the package installs
  grep -q "path=/usr/share/tandem/firewall3.include" "$dest/etc/uci-defaults/90-tandem" || fail "uci-defaults path"
}

# --- run ---------------------------------------------------------------------

echo "openwrt feed tests (init script under: ${SHELLS[*]}; binary: $BIN)"
run_test "shellcheck of the shipped scripts" t_shellcheck
run_test "scripts parse under ${SHELLS[*]}" t_syntax_all_shells
run_test "UCI form of the docs example gives docs/tandem.example.toml" t_example_matches_docs
run_test "every UCI option maps; every documented key is produced" t_full_mapping
run_test "shipped /etc/config/tandem names every mapped option" t_shipped_config_lists_every_option
run_test "shipped config is off until enabled and a peer exists" t_shipped_config_is_off
run_test "procd instance: command, respawn, logd, reload files" t_procd_instance
run_test "reload triggers: config and interfaces" t_triggers
run_test "bad values stop the start and name the key" t_bad_value_names_key
run_test "values are TOML-escaped; control characters refused" t_quoting
run_test "network down: no start, a clear log line" t_network_down
run_test "firewall auto-detection fw4/fw3/none" t_firewall_kind
run_test "private key created on first start (keygen)" t_keygen
run_test "/etc/init.d/tandem check" t_check_command
run_test "nft rules: only queue statements fail nft -c here" t_nft_rules_check
run_test "fw4: start loads table inet tandem, reload replaces, stop removes" t_fw4_start_stop
run_test "fw4: rules nft rejects are never installed" t_fw4_rejected_rules_not_installed
run_test "fw4: a fw4-style ruleset including the symlink loads and reloads" t_fw4_ruleset_include
run_test "fw3: iptables rules load, include restores them, stop removes" t_fw3_start_include_stop
run_test "daemon runs from the generated config, answers status, stops on TERM" t_daemon_runs_from_generated_config
run_test "uci-defaults registers the fw3 include (only on fw3)" t_uci_defaults
run_test "Makefile parses and depends only on real OpenWrt packages" t_makefile_metadata
run_test "Makefile finds the source through src-link symlinks" t_makefile_src_link
run_test "Makefile Build/Prepare copies a workspace cargo loads" t_makefile_prepare_compile
run_test "Makefile installs the expected file tree" t_makefile_install

if [ $skipped -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ $failed = 0 ]
