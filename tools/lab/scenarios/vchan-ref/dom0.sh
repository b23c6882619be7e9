# Xen's vchan-socket-proxy moves checked data both ways (the images carry libxenvchan).
# dom0 is the vchan client (stdin/stdout mode); the domU is the server, granting the rings.
# Settings (lab.sh run --set NAME=VALUE): LAB_VCHAN_REF_BYTES (each way), LAB_UNIX_BYTES (the
# dom0 unix-socket baseline).

bytes=${LAB_VCHAN_REF_BYTES:-1048576}
[ -x "$(command -v vchan-socket-proxy)" ] || lab_fail "vchan-socket-proxy is not in the image"

head -c "$bytes" /dev/urandom >"$LAB_RUN/vref-a.bin"
sha_a=$(sha256sum "$LAB_RUN/vref-a.bin" | cut -d' ' -f1)

id=$(lab_domu_create lab-vchan-ref vchan-ref) || lab_fail "cannot create the domU"
d=/local/domain/$id/data/lab/vref
xenstore-write "$d/bytes" "$bytes" || lab_fail "cannot write $d/bytes"
lab_domu_start lab-vchan-ref

# -s in the domU writes "running" once ring-ref and event-channel are published.
lab_wait_node "$d/state" 120 running >/dev/null || lab_fail "the vchan server never published its rings"
sha_b=$(lab_wait_node "$d/sha-b" 10) || lab_fail "the domU published no sha-b"

# dom0's clock for when the domU has hashed all of a.bin (it sends after that).
(lab_wait_node "$d/got-a" 300 >/dev/null && lab_now >"$LAB_RUN/vref-t-a") &
t0=$(lab_now)
# Send a.bin, then keep stdin open until dom0 has all of the domU's bytes:
# closing it ends the vchan, and data still in flight would be lost.
{
    cat "$LAB_RUN/vref-a.bin"
    lab_wait_node "$d/got-b" 300 >/dev/null
} | vchan-socket-proxy -m client "$id" "$d/vchan" - | {
    head -c "$bytes" >"$LAB_RUN/vref-b.bin"
    lab_now >"$LAB_RUN/vref-t-b"
    xenstore-write "$d/got-b" "$(sha256sum "$LAB_RUN/vref-b.bin" | cut -d' ' -f1)"
    cat >/dev/null
}
got_a=$(xenstore-read "$d/got-a") || lab_fail "the domU reported no digest of what it received"
got_b=$(xenstore-read "$d/got-b") || lab_fail "dom0 received nothing"
wait
t_a=$(cat "$LAB_RUN/vref-t-a")

[ "$got_a" = "$sha_a" ] || lab_fail "dom0->domU: the domU hashed $got_a, dom0 sent $sha_a"
[ "$got_b" = "$sha_b" ] || lab_fail "domU->dom0: dom0 hashed $got_b, the domU sent $sha_b"
t_b=$(cat "$LAB_RUN/vref-t-b")
secs_a=$(awk -v a="$t0" -v b="$t_a" 'BEGIN { printf "%.2f", b - a }')
secs_b=$(awk -v a="$t_a" -v b="$t_b" 'BEGIN { printf "%.2f", b - a }')
lab_log "vchan-socket-proxy, $bytes bytes each way in turn, sha256 checked:" \
    "dom0->domU ${secs_a} s ($(lab_rate "$bytes" "$secs_a") MB/s)," \
    "domU->dom0 ${secs_b} s ($(lab_rate "$bytes" "$secs_b") MB/s)"
lab_domu_wait "$id" 60 || lab_fail "the domU side failed (status $?)"

# The same boot's dom0 unix-socket copy (socat to socat), the yardstick the
# design's figures use; TCG speed varies between boots, so only ratios within
# one boot mean anything.
ubytes=${LAB_UNIX_BYTES:-67108864}
rm -f "$LAB_RUN/unix.sock"
socat -u -b 65536 UNIX-LISTEN:"$LAB_RUN/unix.sock" - | wc -c >"$LAB_RUN/unix.count" &
sink=$!
i=0
until [ -S "$LAB_RUN/unix.sock" ]; do
    i=$((i + 1))
    [ "$i" -lt 500 ] || lab_fail "socat did not listen"
    usleep 20000
done
t0=$(lab_now)
socat -u -b 65536 OPEN:/dev/zero,readbytes="$ubytes" UNIX-CONNECT:"$LAB_RUN/unix.sock" ||
    lab_fail "unix-socket copy failed"
wait "$sink"
secs_u=$(lab_since "$t0")
[ "$(cat "$LAB_RUN/unix.count")" = "$ubytes" ] || lab_fail "unix-socket copy moved $(cat "$LAB_RUN/unix.count") bytes, want $ubytes"
rate_u=$(lab_rate "$ubytes" "$secs_u")
lab_log "dom0 unix-socket copy: $ubytes bytes in $secs_u s ($rate_u MB/s);" \
    "vchan-socket-proxy reaches $(lab_pct "$bytes" "$secs_a" "$ubytes" "$secs_u")% (dom0->domU)" \
    "and $(lab_pct "$bytes" "$secs_b" "$ubytes" "$secs_u")% (domU->dom0) of it"
