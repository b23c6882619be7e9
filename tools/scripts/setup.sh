#!/usr/bin/env bash
# Installs what xenvt's demo and tests need on a fresh Debian 12 machine (run as root).
# Idempotent: a second run only checks.
set -euo pipefail

need_apt=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# xenstore-utils: Debian's real xenstore clients, pointed at the simulated xenstored in tests.
# tigervnc-standalone-server, x11-xserver-utils: a real Xvnc desktop (and xsetroot to draw on
# it) for the RFB tests against a real server.
for pkg in xenstore-utils tigervnc-standalone-server x11-xserver-utils; do
  have "$pkg" || need_apt+=("$pkg")
done

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a Rust toolchain (1.85 or newer) first" >&2
  exit 1
fi
