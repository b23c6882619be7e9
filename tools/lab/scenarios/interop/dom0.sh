# Interop with libxenvchan, both roles, every byte checked: our server (domU
# 'xenvt chan serve') with its client (dom0 vchan-socket-proxy -m client), and its
# server (domU vchan-socket-proxy -m server) with our client (dom0 'xenvt chan
# connect'). Then the end of stream of OUR channel, both ways: every byte written
# before a close arrives, then the close. vchan-socket-proxy's own end-of-stream
# faults are logged, not failed.
# Settings: LAB_INTEROP_BYTES (each way, each run, default 1048576),
# LAB_EOF_BYTES (default 3149825: 3 MiB and a page and a byte), LAB_VSP_EOF_BYTES (the same
# through vchan-socket-proxy, default 1048577).

command -v xenvt >/dev/null || lab_skip "xenvt is not in the images"
xenvt chan unix --help >/dev/null 2>&1 || lab_skip "this xenvt has no 'chan unix'"
[ -x "$(command -v vchan-socket-proxy)" ] || lab_fail "vchan-socket-proxy is not in the image"

bytes=${LAB_INTEROP_BYTES:-1048576}
eof=${LAB_EOF_BYTES:-3149825}
veof=${LAB_VSP_EOF_BYTES:-1048577}
id=$(lab_domu_create lab-interop interop) || lab_fail "cannot create the domU"
lab_domu_start lab-interop
base=/local/domain/$id/data/xenvt-lab
n=0

# check_pair WHAT DOM0_JSON DOMU_JSON: both ends got every byte, digests agree across.
check_pair() {
    for f in received sent; do
        [ "$(lab_json_field "$2" $f)" = "$bytes" ] || lab_fail "$1: dom0 $f '$(lab_json_field "$2" $f)', want $bytes ($2)"
        [ "$(lab_json_field "$3" $f)" = "$bytes" ] || lab_fail "$1: domU $f '$(lab_json_field "$3" $f)', want $bytes ($3)"
    done
    [ "$(lab_json_field "$2" received_sha256)" = "$(lab_json_field "$3" sent_sha256)" ] || lab_fail "$1: domU->dom0 digests differ"
    [ "$(lab_json_field "$3" received_sha256)" = "$(lab_json_field "$2" sent_sha256)" ] || lab_fail "$1: dom0->domU digests differ"
}

# domu_end N WHAT: job N's report once it ended with status 0.
domu_end() {
    _rc=$(lab_job_rc "$id" "$1" 120) || lab_fail "$2: the domU's end did not finish"
    [ "$_rc" = 0 ] || lab_fail "$2: the domU's end exited $_rc: $(lab_job_get "$id" "$1" err)"
    lab_job_get "$id" "$1" result
}

# Both pairs below frame the transfer with an acknowledgement (--ack/--wait-ack),
# and the domU's end lingers until dom0 says bye: vchan-socket-proxy drops what is
# in flight when either side closes (logged at the end), and that is not under test here.

# --- our server, libxenvchan's client (their client maps our rings).
for orders in "10 11" "20 20"; do
    set -- $orders
    n=$((n + 1))
    what="our server (orders $1/$2), vchan-socket-proxy client"
    lab_job "$id" $n "exec xenvt chan serve --path data/xenvt-lab/i$n --peer 0 --left-order $1 --right-order $2 --send $bytes --recv $bytes --send-seed 1 --recv-seed 2 --ack --linger"
    [ "$(lab_job_ready "$id" $n 60)" = ready ] || lab_fail "$what: no server: $(lab_job_get "$id" $n err)"
    sock=$LAB_RUN/i$n.sock
    rm -f "$sock"
    vchan-socket-proxy -m client "$id" "$base/i$n" "$sock" >/dev/null 2>"$LAB_RUN/i$n-vsp.err" &
    vsp=$!
    lab_wait_socket "$sock" || lab_fail "$what: vchan-socket-proxy did not listen"
    t0=$(lab_now)
    out=$(xenvt chan unix --connect "$sock" --send "$bytes" --recv "$bytes" --send-seed 2 --recv-seed 1 --wait-ack --bye 2>"$LAB_RUN/i$n.err") ||
        lab_fail "$what: dom0's end failed: $(tail -n 2 "$LAB_RUN/i$n.err")"
    secs=$(lab_since "$t0")
    kill "$vsp" 2>/dev/null
    check_pair "$what" "$(echo "$out" | grep '^{' | tail -n 1)" "$(domu_end $n "$what")"
    lab_log "$what: $bytes bytes each way at once, checked, in $secs s"
done

# --- libxenvchan's server, our client (we map their 1024/2048-byte rings).
n=$((n + 1))
what="vchan-socket-proxy server, our client"
lab_job "$id" $n "sh /lab/scenarios/interop/vsp-serve.sh $base/i$n --send $bytes --recv $bytes --send-seed 1 --recv-seed 2 --ack --linger"
[ "$(lab_job_ready "$id" $n 60)" = ready ] || lab_fail "$what: no server: $(lab_job_get "$id" $n err)"
t0=$(lab_now)
out=$(xenvt chan connect --path "$base/i$n" --peer "$id" --send "$bytes" --recv "$bytes" --send-seed 2 --recv-seed 1 --wait-ack --bye 2>"$LAB_RUN/i$n.err") ||
    lab_fail "$what: dom0's end failed: $(tail -n 2 "$LAB_RUN/i$n.err")"
secs=$(lab_since "$t0")
check_pair "$what" "$(echo "$out" | grep '^{' | tail -n 1)" "$(domu_end $n "$what")"
lab_log "$what: $bytes bytes each way at once, checked, in $secs s"

# --- end of stream on our channel: the writer closes at once after its last write,
# with up to a ring of it unread; the reader reads until EOF and must count every byte.
for dir in domU-to-dom0 dom0-to-domU; do
    n=$((n + 1))
    if [ $dir = domU-to-dom0 ]; then
        lab_job "$id" $n "exec xenvt chan serve --path data/xenvt-lab/i$n --peer 0 --order 20 --send $eof --recv 0 --send-seed 5"
        [ "$(lab_job_ready "$id" $n 60)" = ready ] || lab_fail "eof $dir: no server"
        out=$(xenvt chan connect --path "$base/i$n" --peer "$id" --recv-seed 5 2>"$LAB_RUN/i$n.err") ||
            lab_fail "eof $dir: dom0's end failed: $(tail -n 2 "$LAB_RUN/i$n.err")"
        got=$(lab_json_field "$(echo "$out" | grep '^{' | tail -n 1)" received)
        domu_end $n "eof $dir" >/dev/null
    else
        lab_job "$id" $n "exec xenvt chan serve --path data/xenvt-lab/i$n --peer 0 --order 20 --recv-seed 6"
        [ "$(lab_job_ready "$id" $n 60)" = ready ] || lab_fail "eof $dir: no server"
        xenvt chan connect --path "$base/i$n" --peer "$id" --send "$eof" --recv 0 --send-seed 6 >/dev/null 2>"$LAB_RUN/i$n.err" ||
            lab_fail "eof $dir: dom0's end failed: $(tail -n 2 "$LAB_RUN/i$n.err")"
        got=$(lab_json_field "$(domu_end $n "eof $dir")" received)
    fi
    [ "$got" = "$eof" ] || lab_fail "eof $dir: the reader counted '$got' bytes before the close, want $eof"
    lab_log "eof $dir: all $eof bytes, then the close"
done

# --- the same through vchan-socket-proxy (its server in the domU): observed, not failed.
n=$((n + 1))
lab_job "$id" $n "LAB_VSP_TIMEOUT=20 sh /lab/scenarios/interop/vsp-serve.sh $base/i$n --send $veof --recv 0 --send-seed 5"
if [ "$(lab_job_ready "$id" $n 60)" = ready ]; then
    lab_fifo_start i$n xenvt chan connect --path "$base/i$n" --peer "$id" --recv-seed 5
    lab_fifo_end i$n 20
    got=$(lab_json_field "$(grep '^{' "$LAB_RUN/i$n.out" | tail -n 1)" received)
    if [ "$LAB_RC" = 0 ] && [ "$got" = "$veof" ]; then
        lab_log "eof through vchan-socket-proxy, domU->dom0: all $veof bytes, then the close"
    elif [ "$LAB_RC" = 0 ]; then
        lab_log "eof through vchan-socket-proxy, domU->dom0 (its fault, not ours): the close came" \
            "after ${got:-?} of $veof bytes; $((veof - ${got:-0})) bytes written before it were lost"
    else
        lab_log "eof through vchan-socket-proxy, domU->dom0 (its fault, not ours): dom0's end exited" \
            "$LAB_RC (137: no close within 20 s): $(tail -n 1 "$LAB_RUN/i$n.err")"
    fi
    lab_job_rc "$id" $n 60 >/dev/null
else
    lab_log "eof through vchan-socket-proxy: its server did not start"
fi
n=$((n + 1))
lab_job "$id" $n "LAB_VSP_TIMEOUT=20 sh /lab/scenarios/interop/vsp-serve.sh $base/i$n --recv-seed 6"
if [ "$(lab_job_ready "$id" $n 60)" = ready ]; then
    xenvt chan connect --path "$base/i$n" --peer "$id" --send "$veof" --recv 0 --send-seed 6 >/dev/null 2>"$LAB_RUN/i$n.err" ||
        lab_log "eof through vchan-socket-proxy, dom0->domU: dom0's end failed: $(tail -n 1 "$LAB_RUN/i$n.err")"
    urc=$(lab_job_rc "$id" $n 60)
    got=$(lab_json_field "$(lab_job_get "$id" $n result)" received)
    if [ "$urc" = 0 ] && [ "$got" = "$veof" ]; then
        lab_log "eof through vchan-socket-proxy, dom0->domU: all $veof bytes, then the close"
    elif [ "$urc" = 0 ]; then
        lab_log "eof through vchan-socket-proxy, dom0->domU (its fault, not ours): the close came" \
            "after ${got:-?} of $veof bytes; $((veof - ${got:-0})) bytes written before it were lost"
    else
        lab_log "eof through vchan-socket-proxy, dom0->domU (its fault, not ours): the domU's end exited" \
            "$urc (137: no close within 20 s): $(lab_job_get "$id" $n err | tail -n 1)"
    fi
else
    lab_log "eof through vchan-socket-proxy: its server did not start"
fi
lab_job "$id" $((n + 1)) exit
lab_domu_wait "$id" 60 || lab_fail "the domU side failed (status $?)"
