# Liveness on real Xen: kill -9 of either end and 'xl destroy' of the domU mid-transfer.
# Each time the surviving end must stop promptly with "peer closed after N of M bytes"
# (or "domain N went away"), and the destroyed domain must not linger as a zombie.
# Settings: LAB_LIVE_ORDER (ring order, default 16), LAB_LIVE_PROMPT (seconds each
# end may take to notice, default 5; TCG is slow), LAB_LIVE_WATCH (0: run the
# destroy step without --watch-domain, to see what an end that does not watch does).

command -v xenvt >/dev/null || lab_skip "xenvt is not in the images"
xenvt chan connect --help 2>/dev/null | grep -q -- --watch-domain || lab_skip "this xenvt has no 'chan connect --watch-domain'"

order=${LAB_LIVE_ORDER:-16}
prompt=${LAB_LIVE_PROMPT:-5}
huge=1099511627776 # never reached: every transfer here is cut
mid=4194304        # "mid-transfer": this many bytes have arrived

id=$(lab_domu_create lab-live liveness) || lab_fail "cannot create the domU"
lab_domu_start lab-live
base=/local/domain/$id/data/xenvt-lab

# in_time SECS: SECS is within the prompt bound.
in_time() { awk -v s="$1" -v p="$prompt" 'BEGIN { exit !(s <= p) }'; }

# --- 1. kill -9 the domU's end while dom0 receives.
lab_job "$id" 1 "exec xenvt chan serve --path data/xenvt-lab/l1 --peer 0 --order $order --send $huge --recv 0 --send-seed 1"
[ "$(lab_job_ready "$id" 1 120)" = ready ] || lab_fail "step 1: the domU's server did not start: $(lab_job_get "$id" 1 err)"
lab_fifo_start l1 xenvt chan connect --path "$base/l1" --peer "$id" --recv "$huge" --recv-seed 1 --progress "$mid"
lab_fifo_line 60 && [ "$LAB_LINE" = connected ] || lab_fail "step 1: dom0 did not connect ('$LAB_LINE')"
lab_fifo_line 60 || lab_fail "step 1: no progress"
t0=$(lab_now)
lab_job_kill "$id" 1
lab_fifo_end l1 60
secs=$(lab_since "$t0")
err=$(tail -n 1 "$LAB_RUN/l1.err")
[ "$LAB_RC" != 0 ] && [ "$LAB_RC" != 137 ] || lab_fail "step 1: dom0's end exited $LAB_RC after its peer was killed ($err)"
case $err in *"peer closed after "*" of $huge bytes"*) ;; *) lab_fail "step 1: dom0's end said '$err'" ;; esac
urc=$(lab_job_rc "$id" 1 30) || lab_fail "step 1: the domU never reported the killed job"
[ "$urc" = 137 ] || lab_fail "step 1: the domU's end exited $urc, not by kill -9"
lab_log "step 1: kill -9 of the domU's end: dom0 stopped in $secs s (from the kill request, via xenstore): $err"
in_time "$secs" || lab_fail "step 1: dom0 took $secs s (> $prompt s)"

# --- 2. kill -9 dom0's end while both ends send and receive.
lab_job "$id" 2 "exec xenvt chan serve --path data/xenvt-lab/l2 --peer 0 --order $order --send $huge --recv $huge --send-seed 1 --recv-seed 2"
[ "$(lab_job_ready "$id" 2 60)" = ready ] || lab_fail "step 2: the domU's server did not start: $(lab_job_get "$id" 2 err)"
lab_fifo_start l2 xenvt chan connect --path "$base/l2" --peer "$id" --send "$huge" --recv "$huge" --send-seed 2 --recv-seed 1 --progress "$mid"
lab_fifo_line 60 && [ "$LAB_LINE" = connected ] || lab_fail "step 2: dom0 did not connect ('$LAB_LINE')"
lab_fifo_line 60 || lab_fail "step 2: no progress"
t0=$(lab_now)
kill -9 "$LAB_PID"
lab_fifo_end l2 10
urc=$(lab_job_rc "$id" 2 60) || lab_fail "step 2: the domU's end did not stop within 60 s"
secs=$(lab_since "$t0")
err=$(lab_job_get "$id" 2 err | tail -n 1)
[ "$urc" != 0 ] || lab_fail "step 2: the domU's end exited 0 after its peer was killed"
case $err in *"peer closed after "*" of $huge bytes"*) ;; *) lab_fail "step 2: the domU's end said '$err'" ;; esac
lab_log "step 2: kill -9 of dom0's end: the domU's end stopped (exit $urc) and reported within $secs s: $err"
in_time "$secs" || lab_fail "step 2: the domU took $secs s (> $prompt s)"

# --- 3. xl destroy the domU while dom0 receives.
watch=--watch-domain
[ "${LAB_LIVE_WATCH:-1}" = 0 ] && watch=
lab_job "$id" 3 "exec xenvt chan serve --path data/xenvt-lab/l3 --peer 0 --order $order --send $huge --recv 0 --send-seed 1"
[ "$(lab_job_ready "$id" 3 60)" = ready ] || lab_fail "step 3: the domU's server did not start: $(lab_job_get "$id" 3 err)"
# shellcheck disable=SC2086 # $watch is one flag or nothing
lab_fifo_start l3 xenvt chan connect --path "$base/l3" --peer "$id" --recv "$huge" --recv-seed 1 --progress "$mid" $watch
lab_fifo_line 60 && [ "$LAB_LINE" = connected ] || lab_fail "step 3: dom0 did not connect ('$LAB_LINE')"
lab_fifo_line 60 || lab_fail "step 3: no progress"
xl dmesg >"$LAB_RUN/l3-dmesg-before"
t0=$(lab_now)
xl destroy "$id" >"$LAB_RUN/l3-destroy.log" 2>&1 || { cat "$LAB_RUN/l3-destroy.log"; lab_fail "step 3: xl destroy failed"; }
t_destroy=$(lab_since "$t0")
# Racy with a watching end (it may be gone already); telling without one: the
# domain stays, dying, while dom0 still maps its pages.
lab_log "step 3: right after xl destroy, xl list shows: $(xl list | awk 'NR > 2 { printf "%s ", $0 }')"
lab_fifo_end l3 30
secs=$(lab_since "$t0")
err=$(tail -n 1 "$LAB_RUN/l3.err")
lab_log "step 3: xl destroy took $t_destroy s; dom0's end exited $LAB_RC after $secs s: $err"
if [ -z "$watch" ]; then
    lab_log "step 3 (no --watch-domain): $(xl list | awk 'NR > 2' | wc -l) domU(s) listed after dom0's end ended"
fi
[ "$LAB_RC" != 0 ] && [ "$LAB_RC" != 137 ] || lab_fail "step 3: dom0's end exited $LAB_RC (137: it hung and was killed)"
case $err in *"domain $id went away after "*|*"peer closed after "*) ;; *) lab_fail "step 3: dom0's end said '$err'" ;; esac
in_time "$secs" || lab_fail "step 3: dom0 took $secs s (> $prompt s)"
# dom0's end has exited and unmapped: Xen can finish the domain.
lab_wait_until @releaseDomain 10 _lab_no_domus || { xl list; lab_fail "step 3: the destroyed domain lingers"; }
lab_log "step 3: the domain is gone $(lab_since "$t0") s after xl destroy"
xl dmesg >"$LAB_RUN/l3-dmesg-after"
n=$(wc -l <"$LAB_RUN/l3-dmesg-before")
tail -n +"$((n + 1))" "$LAB_RUN/l3-dmesg-after" | tr -d '\r' >"$LAB_RUN/l3-dmesg-new"
if [ -s "$LAB_RUN/l3-dmesg-new" ]; then
    sed 's/^/[lab] step 3: new in the Xen log: /' "$LAB_RUN/l3-dmesg-new"
else
    lab_log "step 3: nothing new in the Xen log"
fi
