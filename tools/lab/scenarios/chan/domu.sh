# The guest side of 'chan': one 'xenvt chan serve' per order, in turn.

command -v xenvt >/dev/null || lab_fail "xenvt is not in the domU image"
domid=$(xenstore-read domid) || lab_fail "cannot read domid"
d=/local/domain/$domid/data/lab/chan
{ orders=$(xenstore-read "$d/orders") && bytes=$(xenstore-read "$d/bytes"); } || lab_fail "no settings under $d"
XENVT_LOG=$(xenstore-read "$d/xenvt_log") || XENVT_LOG=warn
export XENVT_LOG

for o in $orders; do
    # Two rings inside the control page need different orders (10 and 11), as in vchan.
    case $o in 10) other=11 ;; 11) other=10 ;; *) other=$o ;; esac
    {
        xenvt chan serve --path "data/xenvt-lab/$o" --peer 0 --left-order "$o" --right-order "$other" \
            --send "$bytes" --recv "$bytes" --send-seed 1 --recv-seed 2 2>"/run/serve-$o.err"
        echo $? >"/run/serve-$o.rc"
    } | {
        # The server prints "ready" once its channel is published.
        if read -r first && [ "$first" = ready ]; then
            xenstore-write "$d/$o/ready" ready
        else
            xenstore-write "$d/$o/ready" "no ready line (first line: '${first-}')"
        fi
        cat >"/run/serve-$o.out"
    }
    rc=$(cat "/run/serve-$o.rc")
    [ "$rc" = 0 ] || tail -n 20 "/run/serve-$o.err"
    cat "/run/serve-$o.out"
    # rc first: dom0 reads it once the result is there.
    xenstore-write "$d/$o/rc" "$rc"
    xenstore-write "$d/$o/result" "$(grep '^{' "/run/serve-$o.out" | tail -n 1)"
    [ "$rc" = 0 ] || exit 1
done
