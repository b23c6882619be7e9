#!/usr/bin/env bash
# The real-Xen lab: Debian's Xen 4.17 with a PV dom0 and PV domUs under QEMU (TCG).
# See docs/testing.md. Usage: lab.sh help
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
CACHE=${XENVT_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xenvt-lab}
IMAGES=$CACHE/images

die() {
    echo "lab: $*" >&2
    exit 1
}
note() { echo "lab: $*" >&2; }

# shellcheck source=images.sh
. "$LAB_DIR/images.sh"

usage() {
    cat <<'EOF'
usage: lab.sh COMMAND [ARGS]

  setup                 get the packages and build the cached images (idempotent)
  run [OPTIONS] SCENARIO...|all
                        boot Xen once, run the scenarios in order, power off;
                        exits 0 only if every scenario printed XENVT-LAB PASS
      --allow-skip      a scenario that skips (e.g. a command not built yet) is not a failure
      --no-build        do not run cargo build; use target/release/xenvt if present
      --out DIR         where to keep the logs (default: a new dir under the cache)
      --set LAB_NAME=VALUE
                        a setting for the scenarios (see each scenario's dom0.sh)
      -v, --verbose     show the whole serial console, not only the lab lines
  shell [--no-build] [--set LAB_NAME=VALUE]...
                        boot dom0 with a shell on the serial console (stdio)
  list                  list the scenarios

A scenario may have a host side: host.sh in its directory, started on the host
when QEMU starts (see docs/testing.md, "A scenario's host side").
  clean                 remove the cache

environment:
  XENVT_LAB_CACHE       cache dir (default ~/.cache/xenvt-lab)
  XENVT_LAB_XENVT       a prebuilt <target>/release/xenvt: the programs beside it are packaged (skips cargo build)
  XENVT_LAB_DEBS        a directory of prebuilt .debs to install (skips building and packaging)
  XENVT_LAB_SMP         QEMU CPUs (default 2)
  XENVT_LAB_XEN_ARGS    extra Xen command line
  XENVT_LAB_DOM0_ARGS   extra dom0 kernel command line (no commas)
  XENVT_LAB_TIMEOUT     seconds before QEMU is killed (default: 120 + the scenarios' timeouts)
  XENVT_LAB_KERNEL_PKG  the Debian kernel package (default: what linux-image-amd64 depends on)
  XENVT_LAB_DOMU_GZ     1: give domUs a gzip -1 kernel (smaller dom0 image, slower xl create)
EOF
}

# ---------------------------------------------------------------- setup

need_host_tools() {
    local missing=() t
    for t in qemu-system-x86_64 cpio xz gzip dpkg-deb apt-get ldd; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local pkgs=(qemu-system-x86 cpio xz-utils)
    if [ "$(id -u)" = 0 ]; then
        note "installing host tools: ${pkgs[*]} (missing: ${missing[*]})"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null; } ||
            die "apt-get install ${pkgs[*]} failed"
    else
        die "missing host tools: ${missing[*]}; run: sudo apt-get install ${pkgs[*]}"
    fi
}

# download_debs DIR: fetches the packages that are not already in DIR.
download_debs() {
    local dir=$1 uris want=() f
    mkdir -p "$dir"
    # shellcheck disable=SC2046
    uris=$(apt-get download --print-uris $(lab_packages) 2>/dev/null) || {
        [ "$(id -u)" = 0 ] || die "apt-get download failed; run apt-get update"
        note "apt-get update"
        apt-get update -qq >/dev/null
        # shellcheck disable=SC2046
        uris=$(apt-get download --print-uris $(lab_packages))
    }
    # Lines: 'URI' FILE SIZE HASH
    local names=()
    while read -r _ f _; do
        names+=("$f")
        [ -f "$dir/$f" ] || want+=("$f")
    done <<<"$uris"
    [ ${#names[@]} -gt 0 ] || die "apt-get printed no packages"
    if [ ${#want[@]} -gt 0 ]; then
        note "downloading ${#want[@]} packages"
        # apt-get names the files itself; the package name is the file name's first field.
        # (As root apt warns that its sandbox user cannot write here; that is harmless.)
        local pkgs
        mapfile -t pkgs < <(printf '%s\n' "${want[@]}" | cut -d_ -f1)
        (cd "$dir" && apt-get download -q "${pkgs[@]}" 2>&1 >/dev/null |
            grep -v "unsandboxed as root" >&2) || true
        for f in "${want[@]}"; do [ -f "$dir/$f" ] || die "apt-get download did not fetch $f"; done
    fi
    # Drop versions that are no longer wanted.
    for f in "$dir"/*.deb; do
        printf '%s\n' "${names[@]}" | grep -qxF "$(basename "$f")" || rm -f "$f"
    done
    printf '%s\n' "${names[@]}" | LC_ALL=C sort
}

cmd_setup() {
    mkdir -p "$CACHE"
    # One setup at a time per cache; a second run waits for the first one's images.
    exec 9>"$CACHE/.lock"
    flock 9
    need_host_tools
    local names key
    names=$(download_debs "$CACHE/debs")
    key=$({ echo "$names" "${XENVT_LAB_DOMU_GZ:-0}"; x_layer_versions; cat "$LAB_DIR/images.sh"; } | sha256sum | cut -d' ' -f1)
    if [ -f "$IMAGES/key" ] && [ "$(cat "$IMAGES/key")" = "$key" ]; then
        flock -u 9
        return 0
    fi
    note "building the images in $IMAGES"
    local t0=$SECONDS
    build_images "$CACHE/debs" "$IMAGES"
    echo "$key" >"$IMAGES/key"
    note "images built in $((SECONDS - t0)) s ($(du -sh "$CACHE" | cut -f1) in the cache)"
    flock -u 9
}

# ---------------------------------------------------------------- run

# The project's packages each image installs (tools/scripts/package.sh): the
# xenvt tool everywhere, the agent in domUs, the backend and the proxy in dom0.
DOMU_PROGS=(xenvt-tools xenvt-agent)
DOM0_PROGS=(xenvt-tools xenvt-dom0)

# xenvt_bindir BUILD: prints the directory that holds the project's .deb
# packages, or nothing when there are none (scenarios that need them skip).
# BUILD=1 builds the release programs and packages them; BUILD=0 packages the
# programs already in <target>/release.
xenvt_bindir() {
    local build=$1
    if [ -n "${XENVT_LAB_DEBS:-}" ]; then
        compgen -G "$XENVT_LAB_DEBS/*.deb" >/dev/null || die "XENVT_LAB_DEBS=$XENVT_LAB_DEBS holds no .deb"
        echo "$XENVT_LAB_DEBS"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    if [ -n "${XENVT_LAB_XENVT:-}" ]; then
        # A prebuilt <target>/release/xenvt: package the programs beside it.
        [ -x "$XENVT_LAB_XENVT" ] || die "XENVT_LAB_XENVT=$XENVT_LAB_XENVT is not executable"
        target=$(cd "$(dirname "$XENVT_LAB_XENVT")/.." && pwd)
        build=0
    fi
    local args=()
    if [ "$build" = 0 ]; then
        [ -x "$target/release/xenvt" ] || return 0
        args=(--no-build)
    fi
    note "packaging (tools/scripts/package.sh ${args[*]})"
    if ! CARGO_TARGET_DIR=$target bash "$REPO/tools/scripts/package.sh" "${args[@]}" >&2; then
        note "WARNING: packaging failed; the images carry no xenvt and scenarios that need it skip"
        return 0
    fi
    echo "$target/debian"
}

# stage_overlay DIR DEBDIR PACKAGE...: the per-run files of an image, with the
# packages installed by dpkg into DIR as into a root file system, with their
# own dpkg database (DEBDIR may be empty: no packages).
stage_overlay() {
    local img=$1 debdir=$2 p f
    shift 2
    mkdir -p "$img/lab" "$img/usr/bin"
    cp "$LAB_DIR/guest/init" "$img/init"
    cp "$LAB_DIR/guest/lib.sh" "$img/lab/lib.sh"
    cp "$LAB_DIR/guest/lab-run" "$img/usr/bin/lab-run"
    chmod 0755 "$img/init" "$img/usr/bin/lab-run"
    cp -r "$LAB_DIR/scenarios" "$img/lab/scenarios"
    [ -n "$debdir" ] || return 0
    local debs=()
    for p in "$@"; do
        f=$(compgen -G "$debdir/${p}_*.deb" | head -n 1) ||
            { note "WARNING: no $p package in $debdir; the images go without it"; continue; }
        debs+=("$f")
    done
    [ ${#debs[@]} -gt 0 ] || return 0
    mkdir -p "$img/var/lib/dpkg/info" "$img/var/lib/dpkg/updates"
    : >"$img/var/lib/dpkg/status"
    : >"$img/var/lib/dpkg/available"
    # The maintainer scripts run chrooted into DIR: a static busybox is its
    # /bin/sh for that time (the image's own comes with its base). Their systemd
    # steps find no systemd there and do nothing, as in a chroot.
    local sh_tmp=0
    if [ ! -e "$img/bin" ]; then
        f=$(compgen -G "$CACHE/debs/busybox-static_*.deb" | head -n 1) || die "no busybox-static in $CACHE/debs"
        mkdir -p "$img/bin"
        dpkg-deb --fsys-tarfile "$f" | tar -xO ./bin/busybox >"$img/bin/sh"
        chmod 0755 "$img/bin/sh"
        sh_tmp=1
    fi
    # --force-depends: the libraries they depend on come from the base image,
    # which has no dpkg database. --force-not-root lets a non-root user unpack
    # (its maintainer scripts then fail: the lab runs as root).
    # Its output is shown only on failure: the chroot has no /dev/null, which the
    # scripts' systemd steps redirect to, and no systemd helpers, both harmless.
    dpkg --root="$img" --log=/dev/null --force-depends --force-not-root \
        -i "${debs[@]}" >"$img.dpkg.log" 2>&1 ||
        { cat "$img.dpkg.log" >&2; die "dpkg -i ${debs[*]##*/} into $img failed"; }
    rm -f "$img.dpkg.log"
    [ "$sh_tmp" = 0 ] || rm -rf "${img:?}/bin"
    # The programs the packages put in /usr/bin, with the libraries they need.
    local progs=()
    mapfile -t progs < <(cat "$img"/var/lib/dpkg/info/*.list | grep '^/usr/bin/.' | sed "s|^|$img|")
    [ ${#progs[@]} -eq 0 ] || install_libs "$img" / "${progs[@]}"
}

# scenario_timeout NAME: seconds the scenario may take (file 'timeout' in its dir).
scenario_timeout() {
    local f="$LAB_DIR/scenarios/$1/timeout"
    if [ -f "$f" ]; then tr -dc 0-9 <"$f"; else echo 180; fi
}

# scenario_layers NAME: the image layers the scenario's domUs need (file 'layers').
scenario_layers() {
    local f="$LAB_DIR/scenarios/$1/layers"
    [ -f "$f" ] && tr -c 'a-z0-9\n' ' ' <"$f"
    return 0
}

# scenario_ports NAME: the dom0 TCP ports the scenario's host side reaches (file 'ports').
scenario_ports() {
    local f="$LAB_DIR/scenarios/$1/ports"
    [ -f "$f" ] && tr -c '0-9\n' ' ' <"$f"
    return 0
}

# Guest (dom0) TCP ports forwarded from the host, for the scenarios' host sides.
LAB_PORTS=()

# collect_ports SCENARIO...: fills LAB_PORTS.
collect_ports() {
    local s p
    for s in "$@"; do
        for p in $(scenario_ports "$s"); do
            if [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then die "scenario $s: bad port '$p'"; fi
            printf '%s\n' "${LAB_PORTS[@]}" | grep -qx "$p" || LAB_PORTS+=("$p")
        done
    done
}

# qemu_args RUNDIR: sets QEMU_ARGS, all but the serial port.
qemu_args() {
    local run=$1
    QEMU_ARGS=(-accel "tcg,thread=multi" -cpu qemu64 -m 2048 -smp "${XENVT_LAB_SMP:-2}"
        -display none -no-reboot -nodefaults
        -kernel "$IMAGES/xen"
        -append "console=com1 com1=115200,8n1 dom0_mem=768M,max:768M dom0_max_vcpus=1 loglvl=all guest_loglvl=all noreboot ${XENVT_LAB_XEN_ARGS:-}"
        -initrd "$IMAGES/vmlinux console=hvc0 earlyprintk=xen loglevel=5 ${XENVT_LAB_DOM0_ARGS:-},$run/dom0.cpio")
    if [ ${#LAB_PORTS[@]} -eq 0 ]; then
        QEMU_ARGS+=(-monitor none)
        return
    fi
    # An emulated NIC with user networking: nothing leaves QEMU but the forwarded
    # ports, each bound to a free port on the host's loopback (port 0), which
    # host_ports reads back through the monitor.
    local nic="user,model=e1000,restrict=on" p
    for p in "${LAB_PORTS[@]}"; do nic+=",hostfwd=tcp:127.0.0.1:0-:$p"; done
    QEMU_ARGS+=(-nic "$nic" -monitor "unix:$run/monitor.sock,server=on,wait=off")
}

# host_ports RUNDIR: prints GUEST_PORT=HOST_PORT for each forwarded port, from
# QEMU's 'info usernet' (QEMU reports the port it bound for a host port of 0).
host_ports() {
    local sock=$1/monitor.sock i=0
    until [ -S "$sock" ]; do
        i=$((i + 1))
        [ "$i" -lt 200 ] || die "QEMU's monitor did not appear"
        sleep 0.05
    done
    python3 - "$sock" <<'PY'
import re, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"info usernet\n")
buf = b""
# The monitor answers, then prints its prompt again.
while buf.count(b"(qemu)") < 2:
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
for m in re.finditer(rb"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+(\d+)", buf):
    print(f"{int(m.group(2))}={int(m.group(1))}")
PY
}

# Settings passed to the scenarios (--set NAME=VALUE).
LAB_SETS=()

# add_set NAME=VALUE: checks and records a --set.
add_set() {
    [[ "$1" =~ ^LAB_[A-Z0-9_]+=[^\']*$ ]] || die "--set takes LAB_NAME=VALUE (no quotes in VALUE): $1"
    LAB_SETS+=("$1")
}

# prepare RUNDIR MODE BUILD SCENARIOS...: writes the dom0 initramfs for this run.
prepare() {
    local run=$1 mode=$2 build=$3
    shift 3
    local debdir
    debdir=$(xenvt_bindir "$build")
    rm -rf "$run/ov-domu" "$run/ov-dom0"
    stage_overlay "$run/ov-domu" "$debdir" "${DOMU_PROGS[@]}"
    make_cpio "$run/ov-domu" "$run/domu-overlay.cpio"
    stage_overlay "$run/ov-dom0" "$debdir" "${DOM0_PROGS[@]}"
    mkdir -p "$run/ov-dom0/lab/domu"
    cp "$run/domu-overlay.cpio" "$run/ov-dom0/lab/domu/overlay.cpio"
    # Image layers the scenarios ask for (a file 'layers' in their directory):
    # dom0 carries them only when asked, so the other runs stay small.
    local s l
    for s in "$@"; do
        for l in $(scenario_layers "$s"); do
            [ -f "$run/ov-dom0/lab/domu/$l.cpio" ] && continue
            if [ -f "$IMAGES/domu-$l.cpio" ]; then
                cp "$IMAGES/domu-$l.cpio" "$run/ov-dom0/lab/domu/$l.cpio"
            else
                note "WARNING: no $l layer in the images; scenario $s will skip"
            fi
        done
    done
    {
        echo "LAB_MODE=$mode"
        [ ${#LAB_PORTS[@]} -eq 0 ] || echo "export LAB_NET=1"
        echo "LAB_SCENARIOS='$*'"
        for s in "$@"; do echo "LAB_TIMEOUT_$(echo "$s" | tr -c 'A-Za-z0-9\n' _)=$(scenario_timeout "$s")"; done
        for s in "${LAB_SETS[@]}"; do echo "export ${s%%=*}='${s#*=}'"; done
    } >"$run/ov-dom0/lab/run.conf"
    make_cpio "$run/ov-dom0" "$run/dom0-overlay.cpio"
    cat "$IMAGES/dom0-base.cpio" "$run/dom0-overlay.cpio" >"$run/dom0.cpio"
    rm -rf "$run/ov-domu" "$run/ov-dom0" "$run/domu-overlay.cpio" "$run/dom0-overlay.cpio"
}

# now_ms: wall-clock milliseconds.
now_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    echo $((t / 1000))
}

# ms_to_s MS: seconds with one decimal.
ms_to_s() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

# stamp_lines T0_MS: prefixes each line with the seconds since T0_MS.
stamp_lines() {
    local line
    while IFS= read -r line; do
        printf '%7ss %s\n' "$(ms_to_s $(($(now_ms) - $1)))" "${line%$'\r'}"
    done
}

# prune_runs: keeps the logs of the last 10 runs in the cache.
prune_runs() {
    mkdir -p "$CACHE/runs"
    local old
    old=$(find "$CACHE/runs" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +10 | cut -d' ' -f2-)
    [ -z "$old" ] || xargs -d '\n' rm -rf <<<"$old"
}

cmd_run() {
    local build=1 verbose=0 allow_skip=0 out=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --no-build) build=0 ;;
        --allow-skip) allow_skip=1 ;;
        -v | --verbose) verbose=1 ;;
        --out) out=$2; shift ;;
        --set) add_set "$2"; shift ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
        esac
        shift
    done
    [ $# -gt 0 ] || die "name at least one scenario (lab.sh list)"
    if [ "$*" = all ]; then
        local all
        mapfile -t all < <(cd "$LAB_DIR/scenarios" && ls)
        set -- "${all[@]}"
    fi
    local s total=120
    for s in "$@"; do
        [ -f "$LAB_DIR/scenarios/$s/dom0.sh" ] || die "no scenario '$s' (lab.sh list)"
        total=$((total + $(scenario_timeout "$s")))
    done
    collect_ports "$@"
    cmd_setup
    if [ -z "$out" ]; then
        prune_runs
        out=$(mktemp -d "$CACHE/runs/$(date +%Y%m%d-%H%M%S).XXXX")
    fi
    mkdir -p "$out"
    # The run's initramfs is big: never leave it behind, even on Ctrl-C.
    # shellcheck disable=SC2064
    trap "rm -f '$out/dom0.cpio'" EXIT
    prepare "$out" run "$build" "$@"
    qemu_args "$out"
    local log=$out/serial.log
    : >"$log"
    note "booting Xen (scenarios: $*; log: $log)"
    local t0 t1 rc=0
    t0=$(now_ms)
    timeout -k 5 "${XENVT_LAB_TIMEOUT:-$total}" qemu-system-x86_64 "${QEMU_ARGS[@]}" \
        -chardev "file,id=ser0,path=$log" -serial chardev:ser0 </dev/null &
    local qpid=$!
    local hosts=()
    start_hosts "$out" "$log" "$@"
    # A panicked dom0 or hypervisor never powers off: stop QEMU at once.
    # (grep reads a process substitution so that it need not wait for tail to end.)
    (grep -m 1 -E 'Kernel panic - not syncing|Panic on CPU [0-9]+' \
        < <(tail --pid="$qpid" -n +1 -F "$log" 2>/dev/null) >"$out/panic" &&
        kill "$qpid" 2>/dev/null) &
    local watch=$!
    # Live view, each line stamped with the seconds since QEMU started.
    local pattern='^(XENVT-LAB|\[lab\])'
    [ "$verbose" = 1 ] && pattern=''
    tail --pid="$qpid" -n +1 -F "$log" 2>/dev/null |
        grep --line-buffered -E "$pattern" | stamp_lines "$t0" || true
    wait "$qpid" || rc=$?
    kill "$watch" 2>/dev/null || true
    wait "$watch" 2>/dev/null || true
    [ -s "$out/panic" ] && note "stopped QEMU after a panic: $(tr -d '\r' <"$out/panic")"
    end_hosts "$out"
    t1=$(now_ms)
    rm -f "$out/dom0.cpio"
    [ "$rc" = 124 ] && note "QEMU timed out"
    report "$out" "$allow_skip" "$(ms_to_s $((t1 - t0)))" "$@"
}

# start_hosts OUT LOG SCENARIO...: starts each scenario's host.sh in the
# background (its pid in hosts[], its output in OUT/host-NAME.log). It gets
# LAB_OUT, LAB_SERIAL (the serial log to wait on), LAB_SCENARIO, LAB_XENVT (the
# host's xenvt, if built), LAB_VNCDO (vncdotool, if set up) and LAB_PORT_<dom0
# port>=<host port> for each forwarded port.
start_hosts() {
    local out=$1 log=$2 s fw="" bindir vncdo
    shift 2
    if [ ${#LAB_PORTS[@]} -gt 0 ]; then
        fw=$(host_ports "$out") || { kill "$qpid" 2>/dev/null; die "cannot read the forwarded ports"; }
    fi
    bindir="${CARGO_TARGET_DIR:-$REPO/target}/release"
    [ -z "${XENVT_LAB_XENVT:-}" ] || bindir=$(dirname "$XENVT_LAB_XENVT")
    vncdo="${CARGO_TARGET_DIR:-$REPO/target}/vncdo-venv/bin/vncdo"
    for s in "$@"; do
        [ -f "$LAB_DIR/scenarios/$s/host.sh" ] || continue
        (
            cd "$LAB_DIR/scenarios/$s"
            export LAB_OUT=$out LAB_SERIAL=$log LAB_SCENARIO=$s LAB_LIB=$LAB_DIR/host-lib.sh
            # How long the whole run may take: the scenario may come late in it.
            export LAB_RUN_TIMEOUT=${XENVT_LAB_TIMEOUT:-$total}
            export LAB_XENVT="" LAB_VNCDO=""
            [ -x "$bindir/xenvt" ] && LAB_XENVT=$bindir/xenvt
            [ -x "$vncdo" ] && LAB_VNCDO=$vncdo
            local kv
            for kv in $fw; do export "LAB_PORT_${kv%%=*}=${kv#*=}"; done
            exec setsid bash ./host.sh
        ) >"$out/host-$s.log" 2>&1 </dev/null &
        hosts+=("$s:$!")
    done
}

# end_hosts OUT: waits (at most 30 s) for the host sides, then kills what is
# left; each one's exit status goes to OUT/host-NAME.rc (124: killed).
end_hosts() {
    local out=$1 h s pid rc i
    for h in "${hosts[@]}"; do
        s=${h%%:*} pid=${h#*:}
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            rc=124
        else
            rc=0
            wait "$pid" || rc=$?
        fi
        echo "$rc" >"$out/host-$s.rc"
        sed "s/^/[host $s] /" "$out/host-$s.log" >&2
    done
}

# report OUT ALLOW_SKIP SECONDS SCENARIO...: judges the serial log.
report() {
    local out=$1 allow_skip=$2 secs=$3
    shift 3
    local log=$out/serial.log clean=$out/serial.txt
    tr -d '\r' <"$log" >"$clean"
    # One file per guest console, for reading.
    sed -n 's/^\[domU \([A-Za-z0-9_.-]*\)\] \{0,1\}/\1 /p' "$clean" |
        awk -v dir="$out" '{n=$1; sub(/^[^ ]* /, ""); print > (dir "/guest-" n ".log")}'
    # Each requested scenario counts once: passed, skipped, or failed (which
    # includes never reported, e.g. after a panic or a timeout).
    local s ok=1 pass=0 fail=0 skip=0
    for s in "$@"; do
        local hrc=0
        [ -f "$out/host-$s.rc" ] && hrc=$(cat "$out/host-$s.rc")
        if [ "$hrc" != 0 ] && ! grep -q "^XENVT-LAB SKIP $s\(:\|$\)" "$clean"; then
            fail=$((fail + 1))
            ok=0
            note "scenario $s: its host side failed (exit $hrc; $out/host-$s.log)"
        elif grep -qxF "XENVT-LAB PASS $s" "$clean"; then
            pass=$((pass + 1))
        elif grep -q "^XENVT-LAB SKIP $s\(:\|$\)" "$clean"; then
            skip=$((skip + 1))
            [ "$allow_skip" = 1 ] || { ok=0; note "scenario $s skipped (--allow-skip accepts that)"; }
        else
            fail=$((fail + 1))
            ok=0
            note "scenario $s did not pass"
        fi
    done
    if grep -q '^XENVT-LAB FAIL' "$clean"; then ok=0; fi
    grep -q '^XENVT-LAB DONE' "$clean" || { ok=0; note "the run did not finish (no XENVT-LAB DONE)"; }
    note "boot to power-off: ${secs} s"
    echo "lab: $pass passed, $fail failed, $skip skipped"
    if [ "$ok" = 1 ]; then
        return 0
    fi
    note "FAILED; logs kept in $out (serial.txt, guest-*.log)"
    return 1
}

cmd_shell() {
    local build=1
    while [ $# -gt 0 ]; do
        case "$1" in
        --no-build) build=0 ;;
        --set) add_set "$2"; shift ;;
        *) die "unknown option $1" ;;
        esac
        shift
    done
    cmd_setup
    local run
    prune_runs
    run=$(mktemp -d "$CACHE/runs/shell.XXXX")
    # shellcheck disable=SC2064
    trap "rm -f '$run/dom0.cpio'" EXIT
    prepare "$run" shell "$build"
    qemu_args "$run"
    note "dom0 shell on this terminal; 'lab-run SCENARIO' runs one, 'poweroff -f' leaves"
    qemu-system-x86_64 "${QEMU_ARGS[@]}" \
        -chardev "stdio,id=ser0,signal=off,logfile=$run/serial.log" -serial chardev:ser0 || true
    rm -f "$run/dom0.cpio"
}

cmd_list() {
    local d
    for d in "$LAB_DIR"/scenarios/*/; do
        d=${d%/}
        printf '%-12s %s\n' "$(basename "$d")" "$(sed -n 's/^# *//p;q' "$d/dom0.sh")"
    done
}

case "${1:-help}" in
setup) shift; cmd_setup "$@"; note "ready: $IMAGES" ;;
run) shift; cmd_run "$@" ;;
shell) shift; cmd_shell "$@" ;;
list) cmd_list ;;
clean) rm -rf "$CACHE" ;;
help | -h | --help) usage ;;
*) usage >&2; exit 2 ;;
esac
