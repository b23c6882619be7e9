#!/usr/bin/env bash
# The README's demo command: builds xenvt, starts a simulated Xen host, creates a guest domain and
# moves checked data both ways over a shared-memory channel between a guest process and a dom0
# process. Later the same command brings up the full console-and-desktop demo.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/setup.sh
echo "demo: building xenvt (release)..."
cargo build --release --locked -p xenvt
exec ./target/release/xenvt smoke --verbose "$@"
