# shellcheck shell=bash
# Helpers for a scenario's host side (scenarios/NAME/host.sh, run by lab.sh on the
# host while QEMU runs; its exit status counts in the scenario's verdict).
#
# lab.sh gives it: LAB_OUT (the run's directory: keep screenshots there), LAB_SERIAL
# (the serial log), LAB_SCENARIO, LAB_RUN_TIMEOUT (seconds the whole run may take: the
# first wait should allow that, since other scenarios may run first), LAB_XENVT (the
# host's xenvt, may be empty),
# LAB_VNCDO (vncdotool, may be empty) and LAB_PORT_<dom0 port>=<host port> for
# each port in the scenario's 'ports' file (bound to 127.0.0.1).
#
# dom0 and the host side take turns: dom0 listens (lab_host_listen), then prints
# "XENVT-LAB HOST <scenario> WORD ARGS" (lab_host_say); the host side waits for it
# (host_wait), does its part, and answers with one line (host_send): "ok" or
# "fail REASON".

# The dom0 port host_fail answers on, once set by the scenario.
HOST_CONTROL_PORT=${HOST_CONTROL_PORT:-}

host_log() { echo "host: $*" >&2; }

# host_port DOM0_PORT: the host port forwarded to it (empty if none).
host_port() {
    local v="LAB_PORT_$1"
    echo "${!v:-}"
}

# host_send DOM0_PORT LINE: sends one line to dom0's listener on DOM0_PORT.
host_send() {
    local p fd
    p=$(host_port "$1")
    [ -n "$p" ] || { host_log "no forwarded port for dom0 port $1 (list it in 'ports')"; return 1; }
    exec {fd}<>"/dev/tcp/127.0.0.1/$p" || return 1
    printf '%s\n' "$2" >&"$fd"
    exec {fd}>&-
}

# host_fail REASON: ends the host side as failed, telling dom0 if it waits.
host_fail() {
    host_log "FAIL: $*"
    [ -z "$HOST_CONTROL_PORT" ] || host_send "$HOST_CONTROL_PORT" "fail $*" 2>/dev/null || true
    exit 1
}

# host_wait WORD TIMEOUT: waits for dom0's "XENVT-LAB HOST <scenario> WORD" line and
# keeps what follows WORD in HOST_LINE (call it directly, not in $(...)). If the scenario skips first, the host side exits 0; if
# it fails, or the run ends, it exits 1.
host_wait() {
    local want="XENVT-LAB HOST $LAB_SCENARIO $1" end=$((SECONDS + $2)) line fd tpid left
    exec {fd}< <(exec tail -n +1 -F "$LAB_SERIAL" 2>/dev/null)
    tpid=$!
    while left=$((end - SECONDS)) && [ "$left" -gt 0 ] && IFS= read -r -t "$left" -u "$fd" line; do
        line=${line//$'\r'/}
        case "$line" in
        "$want" | "$want "*)
            kill "$tpid" 2>/dev/null
            exec {fd}<&-
            line=${line#"$want"}
            # shellcheck disable=SC2034 # read by the caller
            HOST_LINE=${line# }
            return 0
            ;;
        "XENVT-LAB SKIP $LAB_SCENARIO"*)
            kill "$tpid" 2>/dev/null
            host_log "dom0 skipped the scenario"
            exit 0
            ;;
        "XENVT-LAB FAIL $LAB_SCENARIO"* | "XENVT-LAB PASS $LAB_SCENARIO" | "XENVT-LAB DONE"*)
            kill "$tpid" 2>/dev/null
            host_log "dom0 ended the scenario before saying '$1': $line"
            exit 1
            ;;
        esac
    done
    kill "$tpid" 2>/dev/null
    exec {fd}<&-
    host_fail "no '$1' from dom0 within $2 s"
}
