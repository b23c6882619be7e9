# shellcheck shell=bash disable=SC2034 # HOST_CONTROL_PORT is read by host-lib.sh
# The host side of 'desktop': vncdotool through QEMU's user networking captures the
# console view (its text read back cell by cell with the proxy's font) and then the
# desktop (checked in pixels). Screenshots go to the run's directory.
set -uo pipefail
# shellcheck source=../../host-lib.sh
. "$LAB_LIB"
HOST_CONTROL_PORT=5999

[ -n "$LAB_VNCDO" ] || host_fail "no vncdotool (tools/scripts/setup.sh makes target/vncdo-venv)"
[ -n "$LAB_XENVT" ] || host_fail "no xenvt built on the host"
py=$(dirname "$LAB_VNCDO")/python3
viewer=$(host_port 5900)
[ -n "$viewer" ] || host_fail "dom0 port 5900 is not forwarded"

# capture NAME: a screenshot of the viewer port, as NAME.png and NAME.ppm.
capture() {
    timeout -k 5 60 "$LAB_VNCDO" --nocursor -t 40 -s "127.0.0.1::$viewer" capture "$LAB_OUT/$1.png" ||
        return 1
    "$py" - "$LAB_OUT/$1.png" "$LAB_OUT/$1.ppm" <<'PY'
import sys
from PIL import Image
Image.open(sys.argv[1]).convert("RGB").save(sys.argv[2])
PY
}

# 1. The console view: the console's size, and the kernel's boot messages on it. The
# kernel's first lines scroll off the 25 rows when a loaded host makes it warn more,
# so the proxy's scrollback (shift-PgUp) is looked at too, a page at a time.
host_wait console "${LAB_RUN_TIMEOUT:-600}"
marks=(--expect "Linux version" --expect "Kernel command line:")
capture console || host_fail "cannot capture the console view"
size=$("$py" -c 'import sys; from PIL import Image; print("%dx%d" % Image.open(sys.argv[1]).size)' "$LAB_OUT/console.png")
[ "$size" = 640x400 ] || host_fail "the console view is $size, want 640x400"
shot=console
back=0
until "$LAB_XENVT" screen text "$LAB_OUT/$shot.ppm" "${marks[@]}" >"$LAB_OUT/$shot.txt"; do
    [ "$back" -lt 6 ] || host_fail "no kernel boot message on the console view or 6 pages back (see console*.txt)"
    back=$((back + 1))
    shot=console-back$back
    # The domain's console keeps its scroll position: one more page back, then the capture.
    timeout -k 5 60 "$LAB_VNCDO" --nocursor -t 40 -s "127.0.0.1::$viewer" key shift-pgup capture "$LAB_OUT/$shot.png" ||
        host_fail "cannot scroll the console view back"
    "$py" - "$LAB_OUT/$shot.png" "$LAB_OUT/$shot.ppm" <<'PY'
import sys
from PIL import Image
Image.open(sys.argv[1]).convert("RGB").save(sys.argv[2])
PY
done
host_log "console view $size ($shot):"
sed 's/^/host:   | /' "$LAB_OUT/$shot.txt" >&2
host_send 5999 "ok console $size ($shot)"

# 2. The desktop: its own size, the root colour and the xterm (drawn a moment after
# the reverse connection, so a few captures are allowed).
host_wait desktop 200
geometry=$HOST_LINE
n=0
until capture desktop && "$py" check-desktop.py "$LAB_OUT/desktop.png" "$geometry" >"$LAB_OUT/desktop-check.txt" 2>&1; do
    n=$((n + 1))
    [ "$n" -lt 10 ] || host_fail "the desktop is not what Xvnc drew: $(tail -n 1 "$LAB_OUT/desktop-check.txt")"
done
host_log "desktop: $(tail -n 1 "$LAB_OUT/desktop-check.txt") (capture $((n + 1)))"
host_send 5999 "ok desktop $geometry, from console 640x400"
