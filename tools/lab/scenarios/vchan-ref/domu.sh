# The guest side of 'vchan-ref': a vchan server whose local peer (peer.sh, under
# socat) sends b.bin and hashes what dom0 sends.

domid=$(xenstore-read domid) || lab_fail "cannot read domid"
d=/local/domain/$domid/data/lab/vref
bytes=$(xenstore-read "$d/bytes") || lab_fail "no $d/bytes"
head -c "$bytes" /dev/urandom >/run/vref-b.bin
xenstore-write "$d/sha-b" "$(sha256sum /run/vref-b.bin | cut -d' ' -f1)"

socat UNIX-LISTEN:/run/vref.sock,unlink-early SYSTEM:"sh /lab/scenarios/vchan-ref/peer.sh $d $bytes" &
socat_pid=$!
# socat creates its socket at once; the proxy only connects to it when dom0's
# client arrives, which is after "running", so this bounded look is enough.
i=0
until [ -S /run/vref.sock ]; do
    i=$((i + 1))
    [ "$i" -lt 500 ] || lab_fail "socat did not listen"
    usleep 20000
done
vchan-socket-proxy -m server -s "$d/state" 0 "$d/vchan" /run/vref.sock &
proxy_pid=$!
wait "$socat_pid" || lab_fail "the local peer failed"
kill "$proxy_pid" 2>/dev/null
[ -n "$(xenstore-read "$d/got-b" 2>/dev/null)" ] || lab_fail "dom0 never confirmed"
