# The domU's local end of a vchan-socket-proxy session (stdin/stdout is the
# socket): hashes what arrives, then sends /run/vref-b.bin.
# usage: peer.sh XENSTORE-DIR BYTES
. /lab/lib.sh
d=$1 bytes=$2
# One direction after the other, so each one's rate is its own.
got=$(head -c "$bytes" | sha256sum | cut -d' ' -f1)
xenstore-write "$d/got-a" "$got"
cat /run/vref-b.bin
# Hold the connection until dom0 has everything: a close here is not passed on
# and could cut what the proxy still buffers.
lab_wait_node "$d/got-b" 120 >/dev/null
