#!/usr/bin/env bash
# Installs what xenvt's demo and tests need on a fresh Debian 12 machine (run as root).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# xenstore-utils: Debian's real xenstore clients, pointed at the simulated xenstored in tests.
# tigervnc-standalone-server, x11-xserver-utils, xterm, xdotool, x11-utils: a real Xvnc desktop,
# X clients that draw on it and check what a viewer typed, for the tests against real peers.
# python3-venv: a venv for vncdotool, a real VNC viewer from PyPI.
# procps, less, vim: real full-screen programs the console view must render.
for pkg in xenstore-utils tigervnc-standalone-server x11-xserver-utils xterm xdotool x11-utils \
  python3-venv procps less vim; do
  have "$pkg" || need_apt+=("$pkg")
done

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# vncdotool, in a venv inside the build directory (the tests look for it there).
venv=target/vncdo-venv
if [ ! -x "$venv/bin/vncdo" ]; then
  echo "setup: installing vncdotool into $venv"
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q vncdotool
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a Rust toolchain (1.85 or newer) first" >&2
  exit 1
fi
