#!/usr/bin/env bash
# Builds xenvt's Debian packages into <target>/debian/ (docs/install.md):
#   xenvt-agent  the domU agent, its unit and /etc/xenvt/agent.toml
#   xenvt-dom0   the backend and the proxy, their units and /etc/xenvt/{backend,proxy}.toml
#   xenvt-tools  the xenvt command
# and a -dbgsym .ddeb beside each with the debug symbols.
# Usage: package.sh [--no-build] [--lintian]
#   --no-build   package the release programs already built (cargo build --release --bins)
#   --lintian    run lintian on the packages; exits non-zero on an error it reports
# Needs cargo-deb (tools/scripts/setup.sh installs it). Prints the paths of the .debs.
set -euo pipefail
cd "$(dirname "$0")/../.."

build=1
lint=0
for a in "$@"; do
    case "$a" in
    --no-build) build=0 ;;
    --lintian) lint=1 ;;
    *) echo "usage: package.sh [--no-build] [--lintian]" >&2; exit 2 ;;
    esac
done

command -v cargo-deb >/dev/null || {
    echo "package: cargo-deb not found; run tools/scripts/setup.sh" >&2
    exit 1
}

target=${CARGO_TARGET_DIR:-target}
out=$target/debian
if [ "$build" = 1 ]; then
    cargo build --release --bins --locked >&2
fi
mkdir -p "$out"
# The manual pages, made from each program's clap definition and compressed as
# Debian wants them (-n: no name or time inside, so the same build gives the same
# file); the packages' assets name them under target/release/man.
man=$target/release/man
mkdir -p "$man"
for prog in xenvt-agent xenvt-backend xenvt-proxy xenvt; do
    case "$prog" in
    xenvt) "$target/release/$prog" print-man ;;
    *) "$target/release/$prog" --print-man ;;
    esac | gzip -9n >"$man/$prog.1.gz"
done
# Only this run's packages are left in the directory, so a caller can take them all.
rm -f "$out"/*.deb "$out"/*.ddeb

for crate in xenvt-agent xenvt-backend xenvt; do
    # --no-build: the build above made every program; cargo-deb takes them from
    # <target>/release and strips them, the symbols going to the .ddeb. --fast: a
    # lighter xz level, which saves most of the time (the .ddebs are large).
    cargo deb --quiet --no-build --fast --dbgsym -p "$crate" -o "$out/" >/dev/null
done

debs=("$out"/*.deb)
[ ${#debs[@]} -eq 3 ] || { echo "package: want 3 .debs in $out, got ${#debs[@]}" >&2; exit 1; }

if [ "$lint" = 1 ]; then
    command -v lintian >/dev/null || {
        echo "package: lintian not found (apt-get install lintian)" >&2
        exit 1
    }
    # Errors fail; warnings are shown.
    lintian --fail-on error "${debs[@]}" >&2
fi
printf '%s\n' "${debs[@]}"
