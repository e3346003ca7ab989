#!/usr/bin/env bash
# Installs everything tandem's tests and lab need on a fresh Debian 12 machine
# (run as root). Idempotent: a second run only checks.
set -euo pipefail

want_apt=(iptables nftables iproute2 nginx-light curl wget aria2 tshark socat
          python3 qemu-user-static gcc-s390x-linux-gnu libc6-dev-s390x-cross
          ethtool procps psmisc tcpdump iputils-ping shellcheck busybox
          gcc-powerpc-linux-gnu libc6-dev-powerpc-cross mptcpd)
missing=()
for p in "${want_apt[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture: answer no, quietly.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nginx-light starts a system nginx on :80 after install; tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi
pkill -x nginx 2>/dev/null || true

for t in s390x-unknown-linux-gnu aarch64-unknown-linux-musl powerpc-unknown-linux-gnu; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
