# One domU Xvnc, three paths to it, measured in dom0: xenvt, a vif, vchan-socket-proxy; fps and CPU per frame, Raw and ZRLE.
# The paths: xenvt (Xvnc reverse-connects through the agent, the channel and the
# backend to the proxy; the meter is a viewer of the proxy), a Xen virtual NIC
# (netfront/netback on a routed link; the meter connects to Xvnc's TCP port), and
# Xen's vchan-socket-proxy (its server in the domU on Xvnc's unix socket, its client
# in dom0). The meter is 'xenvt bench fps' in dom0, which asks for the next update as
# soon as one ends; X clients animate the desktop (a screen-sized xterm flipping video; LAB_DBENCH_ANIMATE). CPU
# is dom0 + domU seconds from 'xl list' per frame. Prints '[lab] ratio NAME VALUE'.
# Goals: xenvt >= the vif's Raw fps at no more CPU per frame; >= 10x vchan-socket-proxy's
# Raw fps. Misses are logged, not failed, unless LAB_BENCH_STRICT=1.
# Settings: LAB_DBENCH_SECS (seconds per measurement, default 10), LAB_DBENCH_GEOMETRY
# (default 1024x768), LAB_DBENCH_ENCODINGS (default "raw zrle"), LAB_DBENCH_ANIMATE (X
# clients that animate the desktop: "ico", "xterm", "flood", "flash" or several; default "flash": whole-screen frames, so the transports' bandwidth shows), LAB_BENCH_STRICT.

for p in xenvt xenvt-backend xenvt-proxy; do
    command -v $p >/dev/null || lab_skip "$p is not in the images"
done
xenvt bench fps --help >/dev/null 2>&1 || lab_skip "this xenvt has no 'bench fps'"
lab_layer_ok x11 || lab_skip "the images have no X layer (the host has no Xtigervnc)"
secs=${LAB_DBENCH_SECS:-10}
geometry=${LAB_DBENCH_GEOMETRY:-1024x768}
encodings=${LAB_DBENCH_ENCODINGS:-raw zrle}
animate=${LAB_DBENCH_ANIMATE:-flash}
here=$(pwd)

insmod /lab/modules/xen-netback.ko || lab_fail "insmod xen-netback failed"
lab_xenvt_dom0 info

id=$(LAB_DOMU_LAYERS=x11 LAB_DOMU_VIF="mac=00:16:3e:5a:00:02,script=$here/vif-lab" \
    lab_domu_create lab-dbench desktop-bench 512) || lab_fail "cannot create the domU"
lab_domu_start lab-dbench
lab_wait_node "/local/domain/$id/data/lab/desktop/up" 120 >/dev/null || lab_fail "the domU did not come up"
lab_flag backend attached 60

lab_job "$id" 1 "sh /lab/scenarios/desktop/start-x.sh $geometry -rfbport 5900 -interface 10.9.0.2"
r=$(lab_job_ready "$id" 1 120) || lab_fail "the desktop did not start"
[ "$r" = ready ] || lab_fail "the desktop did not start: $r $(lab_job_get "$id" 1 err)"
lab_flag proxy desktop 60
lab_job "$id" 2 "sh $here/animate.sh $animate"
[ "$(lab_job_ready "$id" 2 60)" = ready ] || lab_fail "the animation did not start: $(lab_job_get "$id" 2 err)"
lab_wait_view "$id" desktop 30 || lab_fail "the proxy did not switch to the desktop"

# cpu: dom0 + domU CPU seconds so far (xl list's Time(s)).
cpu() { xl list | awk -v id="$id" '$2 == 0 || $2 == id { t += $6 } END { printf "%.1f", t }'; }

# vchan_pair / vchan_unpair: a fresh vchan-socket-proxy pair for each measurement, its
# server (a job) in the domU on Xvnc's unix socket, its client in dom0: a pair that
# was cut mid-frame hands the next session the rest of the old stream.
job=3
vsp=
vchan_pair() {
    lab_job "$id" $job "exec vchan-socket-proxy -m server -s data/vchan-state-$job 0 data/vchan/bench-$job /run/xvnc.sock"
    lab_wait_node "/local/domain/$id/data/vchan-state-$job" 60 running >/dev/null ||
        lab_fail "vchan-socket-proxy's server did not start: $(lab_job_get "$id" $job err)"
    rm -f /run/vchan.sock
    vchan-socket-proxy -m client "$id" "/local/domain/$id/data/vchan/bench-$job" /run/vchan.sock \
        >/dev/null 2>>"$LAB_RUN/vsp-client.err" &
    vsp=$!
    lab_wait_socket /run/vchan.sock || lab_fail "vchan-socket-proxy's client did not listen"
}
vchan_unpair() {
    kill "$vsp" 2>/dev/null
    wait "$vsp" 2>/dev/null
    lab_job_kill "$id" $job
    lab_job_rc "$id" $job 60 >/dev/null || lab_fail "vchan-socket-proxy's server did not stop"
    job=$((job + 1))
}

# meter PATH ENC: one measurement; sets FPS_<path>_<enc> and CPF_<path>_<enc> (ms per frame).
meter() {
    case $1 in
    xenvt) where=tcp:127.0.0.1:$((5900 + id)) ;;
    vif) where=tcp:10.9.0.2:5900 ;;
    vchan) vchan_pair; where=unix:/run/vchan.sock ;;
    esac
    c0=$(cpu)
    out=$(xenvt bench fps --connect "$where" --encoding "$2" --secs "$secs" --timeout 120 2>"$LAB_RUN/fps-$1-$2.err")
    rc=$?
    c1=$(cpu)
    [ "$1" != vchan ] || vchan_unpair
    if [ "$rc" != 0 ]; then
        lab_log "$1 $2: the meter failed: $(tail -n 1 "$LAB_RUN/fps-$1-$2.err")"
        eval "FPS_$1_$2=0 CPF_$1_$2=0"
        return 1
    fi
    fr=$(lab_json_field "$out" frames)
    fps=$(lab_json_field "$out" fps)
    by=$(lab_json_field "$out" bytes)
    took=$(lab_json_field "$out" secs)
    cpf=$(awk -v a="$c0" -v b="$c1" -v f="$fr" 'BEGIN { if (f < 1) f = 1; printf "%.1f", (b - a) * 1000 / f }')
    lab_log "$1 $2: $fps fps ($fr frames in $took s, $(lab_rate "$by" "$took") MB/s), dom0+domU CPU $cpf ms/frame"
    eval "FPS_$1_$2=$fps CPF_$1_$2=$cpf"
}

# ratio NAME A B [GOAL]: prints A/B, and whether it meets GOAL ('>= X' or '<= X').
missed=0
ratio() {
    v=$(awk -v a="$2" -v b="$3" 'BEGIN { if (b <= 0) { print "inf"; exit } printf "%.2f", a / b }')
    if [ -z "${4-}" ]; then
        lab_log "ratio $1 $v"
        return
    fi
    ok=$(awk -v v="$v" -v op="${4%% *}" -v g="${4#* }" 'BEGIN { if (v == "inf") v = 1e9; print ((op == ">=" && v >= g) || (op == "<=" && v <= g)) ? "met" : "MISSED" }')
    [ "$ok" = met ] || missed=$((missed + 1))
    lab_log "ratio $1 $v (goal $4: $ok)"
}

lab_log "desktop $geometry animated by $animate, $secs s per measurement; paths: xenvt, vif, vchan-socket-proxy"
for enc in $encodings; do
    for path in xenvt vif vchan; do
        meter $path "$enc"
    done
done
for enc in $encodings; do
    # shellcheck disable=SC2154 # fx..cc are set by these evals
    eval "fx=\$FPS_xenvt_$enc fv=\$FPS_vif_$enc fc=\$FPS_vchan_$enc"
    eval "cx=\$CPF_xenvt_$enc cv=\$CPF_vif_$enc cc=\$CPF_vchan_$enc"
    if [ "$enc" = raw ]; then
        ratio fps_xenvt_vs_vif_raw "$fx" "$fv" ">= 1"
        ratio cpu_per_frame_xenvt_vs_vif_raw "$cx" "$cv" "<= 1"
        ratio fps_xenvt_vs_vchan_raw "$fx" "$fc" ">= 10"
        ratio cpu_per_frame_xenvt_vs_vchan_raw "$cx" "$cc"
    else
        ratio "fps_xenvt_vs_vif_$enc" "$fx" "$fv"
        ratio "cpu_per_frame_xenvt_vs_vif_$enc" "$cx" "$cv"
        ratio "fps_xenvt_vs_vchan_$enc" "$fx" "$fc"
        ratio "cpu_per_frame_xenvt_vs_vchan_$enc" "$cx" "$cc"
    fi
done
lab_job "$id" $job exit
lab_domu_wait "$id" 60 || lab_fail "the domU side failed (status $?)"
if [ "$missed" -gt 0 ] && [ "${LAB_BENCH_STRICT:-0}" = 1 ]; then
    lab_fail "$missed goal(s) missed"
fi
