# xenvt's channel on real Xen: checked bytes both ways for several ring orders.
# The domU serves (grants the rings), dom0 connects; each end prints one JSON
# line, and the digests must agree across the ends.
# Settings (lab.sh run --set NAME=VALUE): LAB_CHAN_ORDERS, LAB_CHAN_BYTES (each way, each order),
# LAB_XENVT_LOG (XENVT_LOG for both ends, e.g. debug).

command -v xenvt >/dev/null || lab_skip "xenvt is not in the images (its build failed, or --no-build without a binary)"
xenvt chan --help >/dev/null 2>&1 || lab_skip "this xenvt has no 'chan' command yet"

orders=${LAB_CHAN_ORDERS:-10 11 12 16 20}
bytes=${LAB_CHAN_BYTES:-8388608}

id=$(lab_domu_create lab-chan chan) || lab_fail "cannot create the domU"
d=/local/domain/$id/data/lab/chan
{ xenstore-write "$d/orders" "$orders" && xenstore-write "$d/bytes" "$bytes" &&
    xenstore-write "$d/xenvt_log" "${LAB_XENVT_LOG:-warn}"; } || lab_fail "cannot write the settings"
export XENVT_LOG="${LAB_XENVT_LOG:-warn}"
lab_domu_start lab-chan

# check_end NAME JSON: the end moved every byte and printed its digests.
check_end() {
    [ -n "$2" ] || lab_fail "order $o: the $1 end printed no JSON"
    n=$(lab_json_field "$2" received)
    [ "$n" = "$bytes" ] || lab_fail "order $o: the $1 end received '$n' bytes, want $bytes ($2)"
    [ -n "$(lab_json_field "$2" received_sha256)" ] || lab_fail "order $o: the $1 end printed no received_sha256 ($2)"
}

moved=0
t_all=$(lab_now)
for o in $orders; do
    r=$(lab_wait_node "$d/$o/ready" 120) || lab_fail "order $o: the domU's server never became ready"
    [ "$r" = ready ] || lab_fail "order $o: the domU's server did not start: $r"
    t0=$(lab_now)
    xenvt chan connect --path "/local/domain/$id/data/xenvt-lab/$o" --peer "$id" \
        --send "$bytes" --recv "$bytes" --send-seed 2 --recv-seed 1 \
        >"$LAB_RUN/chan-$o.out" 2>"$LAB_RUN/chan-$o.err"
    rc=$?
    secs=$(lab_since "$t0")
    if [ "$rc" != 0 ]; then
        tail -n 20 "$LAB_RUN/chan-$o.err"
        lab_fail "order $o: xenvt chan connect exited $rc"
    fi
    mine=$(grep '^{' "$LAB_RUN/chan-$o.out" | tail -n 1)
    theirs=$(lab_wait_node "$d/$o/result" 120) || lab_fail "order $o: the domU reported no result"
    urc=$(lab_wait_node "$d/$o/rc" 10) || lab_fail "order $o: the domU reported no exit status"
    [ "$urc" = 0 ] || lab_fail "order $o: xenvt chan serve exited $urc"
    check_end dom0 "$mine"
    check_end domU "$theirs"
    if [ -n "$(lab_json_field "$mine" sent_sha256)" ] && [ -n "$(lab_json_field "$theirs" sent_sha256)" ]; then
        [ "$(lab_json_field "$mine" received_sha256)" = "$(lab_json_field "$theirs" sent_sha256)" ] ||
            lab_fail "order $o: domU->dom0 digests differ: dom0 $mine, domU $theirs"
        [ "$(lab_json_field "$theirs" received_sha256)" = "$(lab_json_field "$mine" sent_sha256)" ] ||
            lab_fail "order $o: dom0->domU digests differ: dom0 $mine, domU $theirs"
    else
        lab_log "order $o: an end printed no sent_sha256, so only the byte counts are cross-checked"
    fi
    moved=$((moved + 2 * bytes))
    lab_log "order $o: $bytes bytes each way at once in $secs s ($(lab_rate $((2 * bytes)) "$secs") MB/s together)"
done
lab_log "chan: $moved bytes checked in $(lab_since "$t_all") s"
lab_domu_wait "$id" 60 || lab_fail "the domU side failed (status $?)"
