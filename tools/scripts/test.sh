#!/usr/bin/env bash
# Runs every test tier of xenvt. This is the README's test command and what CI runs.
#   tier 1: unit, integration and property tests (cargo test, whole workspace)
#   tier 2: loom model checks of the ring and notify protocol
#   tier 3: a short fuzz run of each cargo-fuzz target (hostile peer)
#   tier 4: the simulated host, multi-process: a channel smoke run and a quick ring benchmark
#   tier 5: the .deb packages (cargo-deb), checked by lintian
#   tier 6: the soak: `xenvt soak --short` (4 domains with desktops and viewers, about
#           2 minutes) under kill -9 faults; fails on a wrong byte or a leak (docs/reliability.md)
#   tier 7: real Xen: Xen 4.17 with a dom0 and PV domUs under QEMU (TCG), the lab's scenarios
#           (docs/testing.md); XENVT_LAB_SCENARIOS overrides the list
# Functions below run inside `if`, where `set -e` is off: each step says `|| return 1`.
# Set XENVT_FUZZ_SECONDS to change the fuzz time per target (default 20 for the ring's
# hostile-peer target, 10 for each of the proxy's decoders and parsers).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/setup.sh

# Every real peer (Xvnc, vncdotool, xenstore-utils...) was installed above: a test that cannot
# find one must fail, not skip.
export XENVT_REQUIRE_PEERS=1

passed=0
failed=0
tier() {
  local name=$1
  shift
  echo "=== tier: $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    echo "=== tier FAILED: $name"
    failed=$((failed + 1))
  fi
}

# The multi-process tests run the daemons' binaries, which `cargo test` of another package
# does not build: build every binary first.
cargo_test() {
  cargo build --workspace --bins --locked || return 1
  cargo test --workspace --locked
}
tier "cargo test" cargo_test

# loom rebuilds the ring crate under its own cfg; a separate target dir keeps the main cache warm.
tier "loom" env RUSTFLAGS="--cfg xenvt_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p xenvt-ring --release --locked --test loom

fuzz() {
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || return 1
  fuzz_crate ring/fuzz "${XENVT_FUZZ_SECONDS:-20}" || return 1
  fuzz_crate proxy/fuzz "${XENVT_FUZZ_SECONDS:-10}"
}
fuzz_crate() {
  local dir=$1 secs=$2
  (
    cd "$dir"
    for t in $(cargo fuzz list); do
      echo "fuzz: $t for ${secs}s"
      cargo fuzz run "$t" -s none -- -max_total_time="$secs" >"fuzz-$t.log" 2>&1 || {
        tail -n 40 "fuzz-$t.log"
        exit 1
      }
      tail -n 2 "fuzz-$t.log"
    done
  )
}
tier "fuzz" fuzz

# The .deb packages (docs/install.md): every release program, packaged and checked by
# lintian. The real-Xen tier installs them into its images.
packaged=0
packages() {
  bash tools/scripts/package.sh --lintian || return 1
  packaged=1
}

sim() {
  cargo build --release --locked -p xenvt || return 1
  ./target/release/xenvt smoke || return 1
  ./target/release/xenvt bench ring --quick
}
tier "simulated host" sim
tier "packages" packages

soak() {
  # The daemons run from the same directory as xenvt.
  cargo build --release --locked --bins || return 1
  ./target/release/xenvt soak --short
}
tier "soak" soak

realxen() {
  bash tools/lab/lab.sh setup || return 1
  # The images install the packages the packages tier built (else the lab builds its own).
  if [ "$packaged" = 1 ]; then export XENVT_LAB_DEBS="$PWD/target/debian"; fi
  # shellcheck disable=SC2086 # the list is words on purpose
  bash tools/lab/lab.sh run ${XENVT_LAB_SCENARIOS:-boot chan vchan-ref liveness interop xen-bench tunnel desktop}
}
tier "real Xen" realxen

echo "tiers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
