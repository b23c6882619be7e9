# shellcheck shell=sh disable=SC3043,SC2015,SC2012 # busybox ash has local; A && B || fail is meant
# The tunnel on real Xen: xenvt-agent in a domU, xenvt-backend in dom0, checked
# streams both ways through them, then the clean-up cases.
#
# 1. guest -> dom0: the domU's `xenvt chan` sends to the agent's loopback
#    listener (service "up"); the backend delivers to a unix socket in dom0 where
#    `xenvt chan unix --expect-proxy-v2` checks the PROXY v2 header (domid, name,
#    service) and every byte.
# 2. dom0 -> guest: dom0's `xenvt chan` connects to <run_dir>/lab-tunnel/down.sock;
#    the agent connects the stream to a loopback server in the domU.
#    Digests are compared across the ends; dom0 holds the clock (MB/s each way).
#    The backend's socket directory must be 0700 and its socket 0600, root's.
# 3. kill -9 of the agent mid-transfer: dom0's end sees its stream cut and the
#    backend removes the guest's socket directory.
# 4. The agent restarts: the backend attaches again and a new stream works.
# 5. xl destroy: the backend removes the socket directory and unmaps (the domain
#    must leave `xl list`); the backend keeps running and stops cleanly on SIGTERM.
#
# Settings (lab.sh run --set NAME=VALUE): LAB_TUNNEL_BYTES (each way, default
# 67108864), LAB_TUNNEL_ORDER (the agent's ring order, default 17), LAB_TUNNEL_PROMPT
# (seconds the backend may take to clean up after a kill or a destroy, default 30:
# it includes the lab's own job round trip through xenstore, seconds under a loaded TCG),
# LAB_XENVT_LOG (the daemons' log filter, default info).

command -v xenvt >/dev/null || lab_skip "xenvt is not in the images"
command -v xenvt-backend >/dev/null || lab_skip "xenvt-backend is not in the dom0 image"
xenvt chan unix --help 2>/dev/null | grep -q -- --expect-proxy-v2 || lab_skip "this xenvt has no 'chan unix --expect-proxy-v2'"

bytes=${LAB_TUNNEL_BYTES:-67108864}
order=${LAB_TUNNEL_ORDER:-17}
prompt=${LAB_TUNNEL_PROMPT:-30}
log=${LAB_XENVT_LOG:-info}
huge=1099511627776 # never reached: the kill step cuts it
mid=4194304
name=lab-tunnel
run_dir=/run/xenvt
dir=$run_dir/$name
up=$LAB_RUN/tunnel-up.sock
G=". /lab/scenarios/tunnel/guest.sh;"
export XENVT_LOG=warn

# tfail REASON: fails with the backend's last log lines.
tfail() {
    tail -n 30 "$LAB_RUN/backend.log" | sed 's/^/[lab] backend: /'
    lab_fail "$*"
}

# alive: the backend runs (a dead child stays as a zombie until waited for,
# and kill -0 still reaches a zombie).
alive() { [ -r "/proc/$bpid/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$bpid/status"; }

# in_time SECS: SECS is within the prompt bound.
in_time() { awk -v s="$1" -v p="$prompt" 'BEGIN { exit !(s <= p) }'; }

# wait_gone PATH SECONDS: waits until PATH does not exist (bounded; nothing to
# watch for a directory in busybox).
wait_gone() {
    local _i=0 _n=$(($2 * 50))
    while [ -e "$1" ]; do
        _i=$((_i + 1))
        [ "$_i" -lt "$_n" ] || return 1
        usleep 20000
    done
}

# wait_sock PATH SECONDS: waits until PATH is a socket (bounded).
wait_sock() {
    local _i=0 _n=$(($2 * 50))
    until [ -S "$1" ]; do
        _i=$((_i + 1))
        [ "$_i" -lt "$_n" ] || return 1
        usleep 20000
    done
}

# check_digests WHAT RX TX N: both ends moved N bytes and the digests agree
# (RX is the receiving end's JSON report, TX the sending end's).
check_digests() {
    local what="$1" rx="$2" tx="$3" n="$4"
    [ -n "$rx" ] || tfail "$what: the receiving end printed no JSON"
    [ -n "$tx" ] || tfail "$what: the sending end printed no JSON"
    [ "$(lab_json_field "$rx" received)" = "$n" ] || tfail "$what: received $(lab_json_field "$rx" received) bytes, want $n ($rx)"
    [ "$(lab_json_field "$tx" sent)" = "$n" ] || tfail "$what: sent $(lab_json_field "$tx" sent) bytes, want $n ($tx)"
    [ -n "$(lab_json_field "$rx" received_sha256)" ] || tfail "$what: no received_sha256 ($rx)"
    [ "$(lab_json_field "$rx" received_sha256)" = "$(lab_json_field "$tx" sent_sha256)" ] ||
        tfail "$what: digests differ: receiver $rx, sender $tx"
}

# ---------------------------------------------------------------- set-up
cat >"$LAB_RUN/backend.toml" <<CFG
run_dir = "$run_dir"

[services.up]
deliver = "$up"

[services.down]
listen = true
CFG
xenvt-backend --config "$LAB_RUN/backend.toml" --log "$log" >"$LAB_RUN/backend.log" 2>&1 &
bpid=$!
id=$(lab_domu_create "$name" tunnel) || lab_fail "cannot create the domU"
d=/local/domain/$id/data/lab/tunnel
xenstore-write "$d/order" "$order" && xenstore-write "$d/log" "$log" || lab_fail "cannot write the settings"
lab_domu_start "$name"

t0=$(lab_now)
lab_job "$id" 1 "$G start_agent"
r=$(lab_job_ready "$id" 1 120) || tfail "the domU never started its agent"
case $r in "ready "*) ;; *) tfail "the agent did not start: $r $(lab_job_get "$id" 1 err)" ;; esac
wait_sock "$dir/down.sock" 60 || tfail "no $dir/down.sock 60 s after the agent started"
lab_log "agent up and backend attached ($dir/down.sock) $(lab_since "$t0") s after the domU's start"
alive || tfail "the backend died"

# Access: a dom0 -> guest socket is a door into the guest.
m=$(stat -c '%a %u %g' "$dir") || tfail "stat $dir"
[ "$m" = "700 0 0" ] || tfail "$dir: mode/owner/group $m, want 700 0 0"
m=$(stat -c '%a %u %g' "$dir/down.sock") || tfail "stat $dir/down.sock"
[ "$m" = "600 0 0" ] || tfail "$dir/down.sock: mode/owner/group $m, want 600 0 0"
lab_log "socket dir 0700 and socket 0600, owned by root"

# ---------------------------------------------------------------- 1. guest -> dom0
lab_fifo_start up xenvt chan unix --listen "$up" --expect-proxy-v2 --recv "$bytes" --recv-seed 1
lab_fifo_line 30 && [ "$LAB_LINE" = ready ] || tfail "up: dom0's end did not listen ('$LAB_LINE')"
lab_job "$id" 2 "$G up_send $bytes"
[ "$(lab_job_ready "$id" 2 60)" = connected ] || tfail "up: the domU's end did not connect: $(lab_job_get "$id" 2 err)"
lab_fifo_line 60 || tfail "up: no PROXY v2 header line in dom0 ($(cat "$LAB_RUN/up.err")); the domU's end: rc $(lab_job_rc "$id" 2 5) $(lab_job_get "$id" 2 err)"
want="proxy-v2 domid=$id domain=$name service=up"
[ "$LAB_LINE" = "$want" ] || tfail "up: the header said '$LAB_LINE', want '$want'"
lab_fifo_end up 600
[ "$LAB_RC" = 0 ] || tfail "up: dom0's end exited $LAB_RC: $(tail -n 3 "$LAB_RUN/up.err")"
rx=$(grep '^{' "$LAB_RUN/up.out" | tail -n 1)
urc=$(lab_job_rc "$id" 2 60) || tfail "up: the domU's end did not finish"
[ "$urc" = 0 ] || tfail "up: the domU's end exited $urc: $(lab_job_get "$id" 2 err)"
check_digests "up (guest -> dom0)" "$rx" "$(lab_job_get "$id" 2 result)" "$bytes"
up_secs=$(lab_json_field "$rx" secs)
up_rate=$(lab_rate "$bytes" "$up_secs")
lab_log "guest -> dom0: $bytes bytes checked, PROXY v2 header right, $up_secs s: $up_rate MB/s"

# ---------------------------------------------------------------- 2. dom0 -> guest
lab_job "$id" 3 "$G down_recv $bytes"
r=$(lab_job_ready "$id" 3 60)
[ "$r" = ready ] || tfail "down: the domU's end did not listen: $r $(lab_job_get "$id" 3 err)"
xenvt chan unix --connect "$dir/down.sock" --send "$bytes" --send-seed 2 --wait-ack \
    >"$LAB_RUN/down.out" 2>"$LAB_RUN/down.err"
rc=$?
[ "$rc" = 0 ] || tfail "down: dom0's end exited $rc: $(tail -n 3 "$LAB_RUN/down.err")"
tx=$(grep '^{' "$LAB_RUN/down.out" | tail -n 1)
urc=$(lab_job_rc "$id" 3 60) || tfail "down: the domU's end did not finish"
[ "$urc" = 0 ] || tfail "down: the domU's end exited $urc: $(lab_job_get "$id" 3 err)"
check_digests "down (dom0 -> guest)" "$(lab_job_get "$id" 3 result)" "$tx" "$bytes"
down_secs=$(lab_json_field "$tx" secs)
down_rate=$(lab_rate "$bytes" "$down_secs")
lab_log "dom0 -> guest: $bytes bytes checked, $down_secs s to the acknowledgement: $down_rate MB/s"
lab_log "tunnel MB/s: guest->dom0 $up_rate dom0->guest $down_rate ($bytes bytes each way, ring order $order; dom0 load $(cut -d' ' -f1-3 /proc/loadavg))"

# ---------------------------------------------------------------- 3. kill -9 of the agent
lab_job "$id" 4 "$G down_feed"
r=$(lab_job_ready "$id" 4 60)
[ "$r" = ready ] || tfail "kill: the domU's feeder did not listen: $r $(lab_job_get "$id" 4 err)"
lab_fifo_start k xenvt chan unix --connect "$dir/down.sock" --recv "$huge" --recv-seed 3 --progress "$mid"
lab_fifo_line 60 && [ "$LAB_LINE" = connected ] || tfail "kill: dom0 did not connect ('$LAB_LINE')"
lab_fifo_line 60 || tfail "kill: no progress ($(tail -n 3 "$LAB_RUN/k.err"))"
t0=$(lab_now)
lab_job "$id" 5 "$G kill_agent"
lab_fifo_end k 60
secs=$(lab_since "$t0")
err=$(tail -n 1 "$LAB_RUN/k.err")
[ "$LAB_RC" != 0 ] && [ "$LAB_RC" != 137 ] || tfail "kill: dom0's end exited $LAB_RC after the agent was killed ($err)"
case $err in *"peer closed after "*" of $huge bytes"*) ;; *) tfail "kill: dom0's end said '$err'" ;; esac
[ "$(lab_job_rc "$id" 5 30)" = 0 ] || tfail "kill: the domU could not kill its agent: $(lab_job_get "$id" 5 err)"
lab_log "kill -9 of the agent: dom0's stream was cut $secs s after the kill request (via xenstore): $err"
in_time "$secs" || tfail "kill: dom0's stream took $secs s (> $prompt s) to end"
wait_gone "$dir" "$prompt" || tfail "kill: $dir is still there $prompt s after the agent died"
lab_log "kill -9 of the agent: the backend removed $dir within $(lab_since "$t0") s of the kill request"
alive || tfail "the backend died"

# ---------------------------------------------------------------- 4. restart
t0=$(lab_now)
lab_job "$id" 6 "$G start_agent"
r=$(lab_job_ready "$id" 6 60)
case $r in "ready "*) ;; *) tfail "restart: the agent did not start: $r $(lab_job_get "$id" 6 err)" ;; esac
wait_sock "$dir/down.sock" 60 || tfail "restart: no $dir/down.sock 60 s after the agent restarted"
lab_log "restart: the backend attached again $(lab_since "$t0") s after the restart request"
small=1048576
lab_job "$id" 7 "$G down_recv $small"
[ "$(lab_job_ready "$id" 7 60)" = ready ] || tfail "restart: the domU's end did not listen: $(lab_job_get "$id" 7 err)"
xenvt chan unix --connect "$dir/down.sock" --send "$small" --send-seed 2 --wait-ack \
    >"$LAB_RUN/down2.out" 2>"$LAB_RUN/down2.err" || tfail "restart: dom0's end failed: $(tail -n 3 "$LAB_RUN/down2.err")"
[ "$(lab_job_rc "$id" 7 60)" = 0 ] || tfail "restart: the domU's end failed: $(lab_job_get "$id" 7 err)"
check_digests "restart (dom0 -> guest)" "$(lab_job_get "$id" 7 result)" "$(grep '^{' "$LAB_RUN/down2.out" | tail -n 1)" "$small"
lab_log "restart: a new stream moved $small bytes, checked"

# ---------------------------------------------------------------- 5. xl destroy
t0=$(lab_now)
xl destroy "$id" >"$LAB_RUN/destroy.log" 2>&1 || { cat "$LAB_RUN/destroy.log"; tfail "xl destroy failed"; }
wait_gone "$dir" "$prompt" || tfail "destroy: $dir is still there $prompt s after xl destroy"
lab_log "destroy: the backend removed $dir within $(lab_since "$t0") s"
lab_wait_until @releaseDomain "$prompt" _lab_no_domus || { xl list; tfail "destroy: the domain lingers (a mapping left?)"; }
lab_log "destroy: the domain left xl list $(lab_since "$t0") s after xl destroy"
alive || tfail "the backend died"
lab_log "backend: $(ls /proc/"$bpid"/fd | wc -l) fds open with no guest"
kill -TERM "$bpid"
(sleep 10; kill -9 "$bpid" 2>/dev/null) >/dev/null 2>&1 &
dog=$!
wait "$bpid"
brc=$?
kill "$dog" 2>/dev/null
[ "$brc" = 0 ] || tfail "the backend exited $brc on SIGTERM (137: it did not stop within 10 s)"
lab_log "backend stopped cleanly on SIGTERM"
