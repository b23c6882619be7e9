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
# chromium: a real browser for noVNC; tigervnc-viewer, xvfb, x11-apps: TigerVNC's viewer in a
# virtual X server, and xwd to capture its screen.
# lintian: checks the .deb packages (tools/scripts/package.sh --lintian).
for pkg in xenstore-utils tigervnc-standalone-server x11-xserver-utils xterm xdotool x11-utils \
  python3-venv procps less vim chromium tigervnc-viewer xvfb x11-apps lintian; do
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

# noVNC and a browser driver for it, in the build directory (the web tests look for them there).
if ! command -v npm >/dev/null; then
  echo "setup: installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
peers=target/web-peers
if [ ! -d "$peers/node_modules/@novnc/novnc" ] || [ ! -d "$peers/node_modules/playwright-core" ]; then
  echo "setup: installing noVNC and playwright-core into $peers"
  mkdir -p "$peers"
  (cd "$peers" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund playwright-core @novnc/novnc >/dev/null)
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a Rust toolchain (1.85 or newer) first" >&2
  exit 1
fi

# cargo-deb builds the .deb packages (tools/scripts/package.sh). A pinned version, built
# once: a second run only asks it its version.
cargo_deb_version=3.8.0
if [ "$(cargo-deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
  echo "setup: installing cargo-deb $cargo_deb_version"
  cargo install cargo-deb --version "$cargo_deb_version" --locked --quiet
fi
