#!/usr/bin/env bash
# The README's demo command: builds xenvt, then `xenvt demo` starts a simulated Xen host with two
# guest domains, each with a shell on its console and a real X desktop (Xvnc) that reverse-connects
# through the guest agent, the shared-memory channel and the dom0 backend to the VNC proxy. It
# prints the viewer addresses; ctrl-c stops everything. Extra arguments go to `xenvt demo`
# (`--check` runs it headless, captures each view and exits).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/setup.sh
echo "demo: building xenvt (release; the first build takes a few minutes)..."
cargo build --release --locked -p xenvt -p xenvt-agent -p xenvt-backend -p xenvt-proxy
exec ./target/release/xenvt demo "$@"
