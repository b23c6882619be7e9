# vsp-serve.sh NODE XENVT-CHAN-ARGS...: libxenvchan's server (vchan-socket-proxy -m
# server) publishes a vchan at xenstore NODE (absolute) for dom0, and hands each
# session to 'xenvt chan unix --listen ... XENVT-CHAN-ARGS' (one session). Prints
# "ready" once the vchan is published, then the xenvt report; exits with xenvt's
# status. Run by sh as a domU job.
. /lab/lib.sh
node=$1
shift
sock=$LAB_RUN/vsp-$$.sock
lab_fifo_start vsp-x xenvt chan unix --listen "$sock" "$@"
lab_fifo_line 30 && [ "$LAB_LINE" = ready ] || { echo "xenvt did not listen: '$LAB_LINE'" >&2; exit 1; }
xpid=$LAB_PID
vchan-socket-proxy -m server -s "$node-state" 0 "$node" "$sock" >/dev/null 2>"$LAB_RUN/vsp-$$.err" &
ppid=$!
lab_wait_node "$node-state" 60 running >/dev/null || { echo "vchan-socket-proxy never published its vchan" >&2; exit 1; }
echo ready
LAB_PID=$xpid
lab_fifo_end vsp-x "${LAB_VSP_TIMEOUT:-300}"
kill "$ppid" 2>/dev/null
cat "$LAB_RUN/vsp-x.out"
tail -n 2 "$LAB_RUN/vsp-x.err" >&2
tail -n 2 "$LAB_RUN/vsp-$$.err" >&2
exit "$LAB_RC"
