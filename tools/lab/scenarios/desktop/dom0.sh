# A real X desktop in a domU, seen from the host: the console view shows the domU's kernel boot, then its Xvnc desktop.
# Xvnc and the agent in the domU; the backend and the proxy in dom0; vncdotool on
# the host (host.sh) through QEMU's user networking, dom0 port 5900 relayed to the
# domain's viewer port. The host captures the console view (kernel messages, read
# back cell by cell), then dom0 starts Xvnc, which reverse-connects through the
# agent (vncconfig -connect); the host captures the desktop and checks its pixels.
# Settings: LAB_DESKTOP_GEOMETRY (default 1024x768), LAB_XENVT_LOG (the daemons' log
# filter, default info), LAB_DESKTOP_SCROLL (lines the domU prints before the console is
# captured, to make the host look through the scrollback; default 0).

CONTROL=5999
VIEWER=5900
for p in xenvt xenvt-backend xenvt-proxy; do
    command -v $p >/dev/null || lab_skip "$p is not in the images (its build failed, or --no-build without it)"
done
lab_layer_ok x11 || lab_skip "the images have no X layer (the host has no Xtigervnc; run tools/scripts/setup.sh)"
[ "${LAB_NET:-0}" = 1 ] || lab_skip "dom0 has no network (run through lab.sh run)"
geometry=${LAB_DESKTOP_GEOMETRY:-1024x768}
log=${LAB_XENVT_LOG:-info}

# answer WHAT: the host side's answer to the last lab_host_say.
answer() {
    lab_host_hear 180 || lab_fail "the host side did not answer after '$1'"
    case "$LAB_LINE" in
    ok*) lab_log "host: $1: $LAB_LINE" ;;
    *) lab_fail "host: $1: ${LAB_LINE:-no answer}" ;;
    esac
}

t0=$(lab_now)
lab_xenvt_dom0 "$log"

id=$(LAB_DOMU_LAYERS=x11 LAB_DOMU_ARGS=loglevel=6 lab_domu_create lab-desktop desktop 512) ||
    lab_fail "cannot create the domU"
# The domU is paused: the proxy opens its console before the kernel prints a line.
lab_flag proxy console 60
socat "TCP-LISTEN:$VIEWER,bind=10.0.2.15,fork,reuseaddr" "TCP:127.0.0.1:$((5900 + id))" \
    >/dev/null 2>"$LAB_RUN/relay.err" &
xenstore-write "/local/domain/$id/data/lab/desktop/log" "$log"
xenstore-write "/local/domain/$id/data/lab/desktop/scroll" "${LAB_DESKTOP_SCROLL:-0}"
lab_domu_start lab-desktop
lab_wait_node "/local/domain/$id/data/lab/desktop/up" 120 >/dev/null || lab_fail "the domU did not come up"
lab_flag backend attached 60
lab_log "domU $id up, its agent attached, in $(lab_since "$t0") s"

# 1. The console view, captured by the host.
lab_host_listen $CONTROL
lab_host_say console
answer console

# 2. Xvnc in the domU reverse-connects through the agent; the proxy switches to it.
t1=$(lab_now)
lab_job "$id" 1 "sh /lab/scenarios/desktop/start-x.sh $geometry"
r=$(lab_job_ready "$id" 1 120) || lab_fail "the desktop did not start"
[ "$r" = ready ] || lab_fail "the desktop did not start: $r $(lab_job_get "$id" 1 err)"
lab_flag proxy desktop 60
lab_wait_view "$id" desktop 30 || lab_fail "the proxy did not switch to the desktop"
lab_log "desktop on the proxy $(lab_since "$t1") s after Xvnc was asked to start"
lab_host_listen $CONTROL
lab_host_say desktop "$geometry"
answer desktop

lab_job "$id" 2 exit
lab_domu_wait "$id" 60 || lab_fail "the domU side failed (status $?)"
lab_log "desktop: $(lab_since "$t0") s from the daemons' start"
