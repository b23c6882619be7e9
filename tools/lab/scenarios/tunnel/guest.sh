# shellcheck shell=sh disable=SC3043 # busybox ash has local
# The tunnel scenario's domU steps, run as lab jobs (". ./guest.sh; STEP ARGS").
# A job's first line of output is its "ready" report, its last JSON line its result.
#
# The data ends are `xenvt chan unix` (pattern data, sha256); socat bridges them to
# the agent's loopback TCP ports:
#   guest -> dom0: chan --connect /run/up.sock -> socat -> 127.0.0.1:5601 (agent, service "up")
#   dom0 -> guest: agent ("down") -> 127.0.0.1:5602 -> socat -> chan --listen /run/down.sock

T_HOME=/local/domain/$(xenstore-read domid)/data/lab/tunnel
UP_PORT=5601
DOWN_PORT=5602
SOCAT_BUF=131072

# tcp_listening PORT: something listens on 127.0.0.1:PORT.
tcp_listening() {
    grep -q " 0100007F:$(printf '%04X' "$1") 00000000:0000 0A " /proc/net/tcp
}

# wait_tcp PORT: waits (bounded, 10 s) until 127.0.0.1:PORT listens.
wait_tcp() {
    local _i=0
    until tcp_listening "$1"; do
        _i=$((_i + 1))
        [ "$_i" -lt 500 ] || return 1
        usleep 20000
    done
}

# start_agent: writes the agent's config and starts it in the background; prints
# "ready PID".
start_agent() {
    local order log
    order=$(xenstore-read "$T_HOME/order") || order=17
    log=$(xenstore-read "$T_HOME/log") || log=info
    command -v xenvt-agent >/dev/null || { echo "xenvt-agent is not in the domU image"; return 1; }
    cat >/run/agent.toml <<CFG
[channel]
ring_order = $order

[[listen]]
address = "127.0.0.1:$UP_PORT"
service = "up"

[services.down]
connect = "127.0.0.1:$DOWN_PORT"
CFG
    # The lab's init leaves the loopback interface down, and every end here is on it.
    ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up || { echo "cannot bring lo up"; return 1; }
    # The log goes to a file (on a console the agent would colour it), copied to the
    # console, which is printed after the scenario.
    if [ ! -f /run/agent.log ]; then
        : >/run/agent.log
        tail -f /run/agent.log >/dev/console 2>&1 &
    fi
    xenvt-agent --config /run/agent.toml --log "$log" >>/run/agent.log 2>&1 &
    echo $! >/run/agent.pid
    echo "ready $!"
}

# kill_agent: kill -9 of the agent.
kill_agent() { kill -9 "$(cat /run/agent.pid)" && echo killed; }

# up_send BYTES: sends BYTES (seed 1) to dom0 through the agent's "up" listener.
up_send() {
    socat -b "$SOCAT_BUF" "UNIX-LISTEN:/run/up.sock,unlink-early" "TCP:127.0.0.1:$UP_PORT" >/run/socat-up.log 2>&1 &
    lab_wait_socket /run/up.sock || { echo "socat did not listen on /run/up.sock"; return 1; }
    exec xenvt chan unix --connect /run/up.sock --send "$1" --send-seed 1
}

# down_recv BYTES: receives BYTES (seed 2) that dom0 sends to service "down",
# then acknowledges them; prints "ready" once everything listens.
down_recv() {
    socat -b "$SOCAT_BUF" "TCP-LISTEN:$DOWN_PORT,bind=127.0.0.1,reuseaddr" UNIX-CONNECT:/run/down.sock >/run/socat-down.log 2>&1 &
    wait_tcp "$DOWN_PORT" || { echo "socat did not listen on port $DOWN_PORT"; return 1; }
    exec xenvt chan unix --listen /run/down.sock --recv "$1" --recv-seed 2 --ack
}

# down_feed: in the background, sends an endless stream (seed 3) to whoever
# connects to service "down"; prints "ready" once everything listens.
down_feed() {
    xenvt chan unix --listen /run/feed.sock --send 1099511627776 --send-seed 3 >/run/feed.out 2>/run/feed.err &
    lab_wait_socket /run/feed.sock || { echo "xenvt chan did not listen on /run/feed.sock"; return 1; }
    socat -b "$SOCAT_BUF" "TCP-LISTEN:$DOWN_PORT,bind=127.0.0.1,reuseaddr" UNIX-CONNECT:/run/feed.sock >/run/socat-feed.log 2>&1 &
    wait_tcp "$DOWN_PORT" || { echo "socat did not listen on port $DOWN_PORT"; return 1; }
    echo ready
}
