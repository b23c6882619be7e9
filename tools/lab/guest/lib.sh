# shellcheck shell=sh disable=SC3028,SC3043,SC3045 # busybox ash has $RANDOM, local and read -t
# Helpers for the lab's init and scenarios (busybox sh, in dom0 and the domUs).
#
# Lines the host harness reads start with "XENVT-LAB " (PASS/FAIL/SKIP NAME, DONE);
# lines starting with "[lab]" are shown live on the host; everything else is
# kept in the serial log. A domU's console is printed after its scenario with
# a "[domU NAME] " prefix.

LAB_RUN=/run/lab

lab_log() { echo "[lab] $*"; }

# lab_now: seconds since boot, with hundredths.
lab_now() { cut -d' ' -f1 /proc/uptime; }

# lab_since T0: seconds elapsed since lab_now printed T0.
lab_since() { awk -v a="$1" -v b="$(lab_now)" 'BEGIN { printf "%.2f", b - a }'; }

# lab_rate BYTES SECONDS: MB/s (10^6 bytes).
lab_rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s <= 0) s = 0.01; printf "%.2f", n / s / 1e6 }'; }

# lab_pct BYTES_A SECONDS_A BYTES_B SECONDS_B: rate A as a percentage of rate B.
lab_pct() {
    awk -v a="$1" -v sa="$2" -v b="$3" -v sb="$4" \
        'BEGIN { if (sa <= 0) sa = 0.01; if (sb <= 0) sb = 0.01; printf "%.1f", 100 * (a / sa) / (b / sb) }'
}

# lab_skip REASON: ends the scenario as skipped (exit status 77).
lab_skip() {
    echo "$*" >"$LAB_RUN/skip-reason"
    lab_log "skip: $*"
    exit 77
}

# lab_fail REASON: ends the scenario as failed.
lab_fail() {
    echo "$*" >"$LAB_RUN/fail-reason"
    lab_log "FAIL: $*"
    exit 1
}

# lab_check_devices: the Xen devices every scenario needs exist.
lab_check_devices() {
    for d in evtchn gntalloc gntdev privcmd xenbus; do
        [ -c /dev/xen/$d ] || lab_fail "/dev/xen/$d is missing"
    done
}

# lab_json_field JSON NAME: the value of a string or number field of a flat JSON object.
lab_json_field() {
    printf '%s\n' "$1" | sed -n "s/.*\"$2\" *: *\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p" | head -n 1
}

# lab_wait_until WATCH TIMEOUT COMMAND...: runs COMMAND each time the xenstore
# node WATCH (or a special watch such as @releaseDomain) fires, until COMMAND
# succeeds; fails after TIMEOUT seconds.
lab_wait_until() {
    local _w=$1 _to=$2 _fifo _wpid _end _rc _left
    shift 2
    _fifo=$LAB_RUN/watch.$$.$RANDOM$RANDOM
    mkfifo "$_fifo"
    xenstore-watch "$_w" >"$_fifo" 2>/dev/null &
    _wpid=$!
    exec 8<"$_fifo"
    _end=$(($(date +%s) + _to))
    _rc=1
    while :; do
        # A watch fires once when it is set, so the first read below returns at
        # once, and every later change wakes us: no change can be missed.
        if "$@"; then
            _rc=0
            break
        fi
        _left=$((_end - $(date +%s)))
        [ "$_left" -gt 0 ] || break
        read -t "$_left" -r _ <&8 || {
            # Timed out, or the watcher died: one last look.
            if "$@"; then _rc=0; fi
            break
        }
    done
    kill "$_wpid" 2>/dev/null
    wait "$_wpid" 2>/dev/null
    exec 8<&-
    rm -f "$_fifo"
    return "$_rc"
}

# _lab_node_is PATH [VALUE]: PATH exists (and holds VALUE); keeps it in $_v.
_lab_node_is() {
    _v=$(xenstore-read "$1" 2>/dev/null) && { [ -z "${2-}" ] || [ "$_v" = "$2" ]; }
}

# lab_wait_node PATH TIMEOUT [VALUE]: waits until PATH exists (and reads VALUE
# if given); prints the value. Fails after TIMEOUT seconds.
lab_wait_node() {
    lab_wait_until "$1" "$2" _lab_node_is "$1" "${3-}" || return 1
    printf '%s\n' "$_v"
}

# ---------------------------------------------------------------- jobs in a domU
#
# A scenario that needs several steps in one domU (so that it pays for one
# boot) runs them as jobs: dom0 writes a shell command under the guest's
# data/lab/job/N/cmd, the guest (lab_domu_jobs) runs it and reports back
# under the same node:
#   ready   the command's first line of output (e.g. "ready" once it listens)
#   err     the last lines of its stderr
#   result  the last line of its stdout that starts with "{" (a JSON report)
#   rc      its exit status, written last
# Writing data/lab/job/N/kill makes the guest kill -9 the job's process (a job
# that starts with "exec" is that process). Jobs run one after the other; the
# command "exit" ends the loop.

# lab_job DOMID N COMMAND: queues job N in the domU.
lab_job() { xenstore-write "/local/domain/$1/data/lab/job/$2/cmd" "$3" || lab_fail "cannot queue job $2"; }

# lab_job_ready DOMID N TIMEOUT: waits for job N's first line; prints it.
lab_job_ready() { lab_wait_node "/local/domain/$1/data/lab/job/$2/ready" "$3"; }

# lab_job_kill DOMID N: asks the domU to kill -9 job N.
lab_job_kill() { xenstore-write "/local/domain/$1/data/lab/job/$2/kill" 1; }

# lab_job_rc DOMID N TIMEOUT: waits for job N to end; prints its exit status.
lab_job_rc() { lab_wait_node "/local/domain/$1/data/lab/job/$2/rc" "$3"; }

# lab_job_get DOMID N FIELD: one of job N's reports (result, err).
lab_job_get() { xenstore-read "/local/domain/$1/data/lab/job/$2/$3" 2>/dev/null; }

# _lab_job_step J PIDFILE: true once job J has finished; kills it when asked.
_lab_job_step() {
    xenstore-exists "$1/finished" 2>/dev/null && return 0
    if [ -z "$_killed" ] && xenstore-exists "$1/kill" 2>/dev/null && [ -s "$2" ]; then
        kill -9 "$(cat "$2")" 2>/dev/null
        _killed=1
    fi
    return 1
}

# lab_domu_jobs [TIMEOUT]: runs dom0's jobs until it sends "exit" (domU side).
lab_domu_jobs() {
    local _n=1 _j _cmd _to=${1:-600} _home
    _home=/local/domain/$(xenstore-read domid)/data/lab/job
    while :; do
        _j=$_home/$_n
        _cmd=$(lab_wait_node "$_j/cmd" "$_to") || lab_fail "no job $_n within $_to s"
        [ "$_cmd" = exit ] && return 0
        rm -f "$LAB_RUN/job-$_n.pid"
        (
            {
                sh -c "echo \$\$ >$LAB_RUN/job-$_n.pid; . /lab/lib.sh; $_cmd" 2>"$LAB_RUN/job-$_n.err"
                echo $? >"$LAB_RUN/job-$_n.rc"
            } | {
                if IFS= read -r _first; then
                    xenstore-write "$_j/ready" "$_first"
                    cat
                else
                    xenstore-write "$_j/ready" ""
                fi >"$LAB_RUN/job-$_n.out"
            }
            xenstore-write "$_j/finished" 1
        ) &
        _jpid=$!
        _killed=
        lab_wait_until "$_j" 3600 _lab_job_step "$_j" "$LAB_RUN/job-$_n.pid"
        # This job only: the scenario may have daemons of its own in the background.
        wait "$_jpid"
        xenstore-write "$_j/err" "$(tail -n 5 "$LAB_RUN/job-$_n.err" | tail -c 2000 | tr "\n" "|" | sed "s/|$//; s/|/ | /g")"
        xenstore-write "$_j/result" "$(grep '^{' "$LAB_RUN/job-$_n.out" | tail -n 1)"
        xenstore-write "$_j/rc" "$(cat "$LAB_RUN/job-$_n.rc")"
        _n=$((_n + 1))
    done
}

# lab_fifo_start NAME COMMAND...: runs COMMAND in the background with its stdout
# on fd 7 (read it with lab_fifo_line) and its stderr in $LAB_RUN/NAME.err;
# its pid is in $LAB_PID.
lab_fifo_start() {
    local _name=$1
    shift
    rm -f "$LAB_RUN/$_name.fifo"
    mkfifo "$LAB_RUN/$_name.fifo"
    "$@" >"$LAB_RUN/$_name.fifo" 2>"$LAB_RUN/$_name.err" &
    LAB_PID=$!
    exec 7<"$LAB_RUN/$_name.fifo"
}

# lab_fifo_line TIMEOUT: the next line from lab_fifo_start's command (in $LAB_LINE).
# shellcheck disable=SC2034 # read by the caller
lab_fifo_line() { IFS= read -r -t "$1" LAB_LINE <&7; }

# lab_fifo_end NAME TIMEOUT: waits (at most TIMEOUT s) for lab_fifo_start's command;
# its exit status is in $LAB_RC (137 if it had to be killed), the rest of its
# stdout in $LAB_RUN/NAME.out.
lab_fifo_end() {
    cat <&7 >"$LAB_RUN/$1.out" &
    local _cat=$! _dog
    # Its own stdout, or a caller reading ours would wait for the sleep.
    (sleep "$2"; kill -9 "$LAB_PID" 2>/dev/null) >/dev/null 2>&1 &
    _dog=$!
    wait "$LAB_PID"
    # shellcheck disable=SC2034 # read by the caller
    LAB_RC=$?
    kill "$_dog" 2>/dev/null
    wait "$_cat"
    exec 7<&-
    rm -f "$LAB_RUN/$1.fifo"
}

# lab_wait_socket PATH: waits (bounded) for a unix socket to appear.
lab_wait_socket() {
    local _i=0
    until [ -S "$1" ]; do
        _i=$((_i + 1))
        [ "$_i" -lt 500 ] || return 1
        usleep 20000
    done
}

# ---------------------------------------------------------------- dom0 side

# lab_domu_create NAME [SCENARIO [MEMORY_MB]]: creates a PV domU, paused, that
# runs SCENARIO's domu.sh (or a shell on its console if none); prints its domid.
# Write what the guest needs under its data/ node, then lab_domu_start NAME.
# LAB_DOMU_LAYERS: image layers to add (e.g. x11, see lab_layer_ok);
# LAB_DOMU_ARGS: more kernel command line (e.g. loglevel=6; the last one wins);
# LAB_DOMU_VIF: a vif spec (e.g. 'mac=...,script=/abs/path'; dom0 needs xen-netback).
lab_domu_create() {
    _name=$1 _scen=${2-} _mem=${3:-256}
    _kernel=/lab/domu/vmlinux
    [ -f "$_kernel" ] || _kernel=/lab/domu/vmlinuz.gz
    _ramdisk=$LAB_RUN/domu.cpio
    if [ -n "${LAB_DOMU_LAYERS-}" ]; then
        _ramdisk=$LAB_RUN/domu-$_name.cpio
        cp "$LAB_RUN/domu.cpio" "$_ramdisk"
        for _l in $LAB_DOMU_LAYERS; do
            cat "/lab/domu/$_l.cpio" >>"$_ramdisk" || lab_fail "no $_l layer in dom0's image"
        done
    fi
    cat >"$LAB_RUN/$_name.cfg" <<EOF
name = "$_name"
type = "pv"
kernel = "$_kernel"
ramdisk = "$_ramdisk"
extra = "console=hvc0 loglevel=5 ${LAB_DOMU_ARGS-} lab.scenario=$_scen"
memory = $_mem
vcpus = 1
on_poweroff = "destroy"
on_crash = "preserve"
EOF
    [ -z "${LAB_DOMU_VIF-}" ] || echo "vif = [ '$LAB_DOMU_VIF' ]" >>"$LAB_RUN/$_name.cfg"
    xl create -p "$LAB_RUN/$_name.cfg" >"$LAB_RUN/$_name.create.log" 2>&1 || {
        cat "$LAB_RUN/$_name.create.log"
        lab_fail "xl create $_name failed"
    }
    xl domid "$_name"
}

# lab_layer_ok NAME: dom0's image carries the domU image layer NAME (lab.sh adds
# it for the scenarios whose directory has a 'layers' file naming it).
lab_layer_ok() { [ -f "/lab/domu/$1.cpio" ]; }

# lab_domu_start NAME: unpauses a domU made by lab_domu_create.
lab_domu_start() { xl unpause "$1" || lab_fail "xl unpause $1 failed"; }

# lab_domu_wait DOMID TIMEOUT: waits until the domU's domu.sh has finished and
# returns its exit status.
lab_domu_wait() {
    _st=$(lab_wait_node "/local/domain/$1/data/lab/status" "$2") || {
        lab_log "domain $1 reported no status within $2 s"
        return 124
    }
    return "$_st"
}

# _lab_no_domus: only dom0 is left.
_lab_no_domus() { [ "$(xl list 2>/dev/null | awk 'NR > 2' | wc -l)" = 0 ]; }

# lab_domu_logs: destroys every domU, prints their console logs, and fails if
# a domain outlives its destruction (a leaked mapping keeps a dying domain).
lab_domu_logs() {
    local _id _gone _f _n
    for _id in $(xl list | awk 'NR > 2 { print $2 }'); do
        xl destroy "$_id" >"$LAB_RUN/destroy.log" 2>&1 || {
            cat "$LAB_RUN/destroy.log"
            lab_log "xl destroy $_id failed"
        }
    done
    _gone=0
    lab_wait_until @releaseDomain 10 _lab_no_domus || _gone=1
    for _f in /var/log/xen/console/guest-*.log; do
        [ -f "$_f" ] || continue
        _n=$(basename "$_f" .log)
        _n=${_n#guest-}
        tr -d '\r' <"$_f" | sed "s/^/[domU $_n] /"
        mv "$_f" "$LAB_RUN/printed-$_n.$RANDOM$RANDOM.log"
    done
    if [ "$_gone" != 0 ]; then
        xl list
        return 1
    fi
}

# ---------------------------------------------------------------- xenvt's daemons in dom0
#
# The desktop scenarios run xenvt-proxy and xenvt-backend in dom0. Their output goes
# to $LAB_RUN/NAME.log, and the lines that mark a step set a xenstore flag under
# $LAB_FLAGS/NAME/ (ready, console, desktop, attached): an event to wait on.

LAB_FLAGS=/local/domain/0/data/lab/flags

# lab_daemon NAME CMD...: runs a daemon in the background, flagging its steps.
lab_daemon() {
    local _n=$1
    shift
    "$@" 2>&1 </dev/null | while IFS= read -r _l; do
        printf '%s\n' "$_l" >>"$LAB_RUN/$_n.log"
        case "$_l" in
        *"xenvt-proxy: ready"* | *"watching for agents"*) xenstore-write "$LAB_FLAGS/$_n/ready" 1 ;;
        *"console open"*) xenstore-write "$LAB_FLAGS/$_n/console" 1 ;;
        *"desktop connected"*) xenstore-write "$LAB_FLAGS/$_n/desktop" 1 ;;
        *"agent attached"*) xenstore-write "$LAB_FLAGS/$_n/attached" 1 ;;
        esac
    done &
}

# lab_daemons_dump: the daemons' last lines (on a failure).
lab_daemons_dump() {
    for _n in proxy backend; do
        [ -f "$LAB_RUN/$_n.log" ] || continue
        echo "---- $_n log"
        tail -n 25 "$LAB_RUN/$_n.log"
    done
}

# lab_flag NAME WHAT SECONDS: waits for a daemon's flag; fails the scenario without it.
lab_flag() {
    lab_wait_node "$LAB_FLAGS/$1/$2" "$3" >/dev/null || {
        lab_daemons_dump
        lab_fail "$1: no '$2' within $3 s"
    }
}

# lab_xenvt_dom0 LOG: starts xenvt-proxy (viewers on 127.0.0.1:5900+domid, the status
# page on 127.0.0.1:6080, every domain in xenstore with its console) and
# xenvt-backend (service vnc delivered to the proxy), with the log filter LOG.
lab_xenvt_dom0() {
    xenstore-rm "$LAB_FLAGS" 2>/dev/null
    rm -f "$LAB_RUN/proxy.log" "$LAB_RUN/backend.log"
    mkdir -p /run/xenvt-proxy "$LAB_RUN/console-logs"
    cat >"$LAB_RUN/proxy.toml" <<CFG
[viewer]
listen = "127.0.0.1"
security = "none"
port_base = 5900
[upstream]
backend_socket = "/run/xenvt-proxy/desktop.sock"
[console]
log_dir = "$LAB_RUN/console-logs"
[xenstore]
enabled = true
domains = true
[web]
listen = "127.0.0.1:6080"
CFG
    cat >"$LAB_RUN/backend.toml" <<CFG
run_dir = "/run/xenvt"
[services.vnc]
deliver = "/run/xenvt-proxy/desktop.sock"
CFG
    XENVT_LOG=$1 NO_COLOR=1 lab_daemon proxy xenvt-proxy --config "$LAB_RUN/proxy.toml"
    lab_flag proxy ready 60
    NO_COLOR=1 lab_daemon backend xenvt-backend --log "$1" --config "$LAB_RUN/backend.toml"
    lab_flag backend ready 60
}

# lab_wait_view DOMID VIEW SECONDS: the proxy shows VIEW (console, desktop) for the
# domain. The proxy has no event for its view switch: its status page is polled.
lab_wait_view() {
    local _end=$(($(date +%s) + $3))
    until wget -q -O - http://127.0.0.1:6080/domains.json 2>/dev/null |
        grep -q "\"domid\":$1,[^}]*\"view\":\"[^\"]*$2"; do
        [ "$(date +%s)" -lt "$_end" ] || {
            lab_log "the proxy shows: $(wget -q -O - http://127.0.0.1:6080/domains.json 2>&1)"
            return 1
        }
        usleep 100000
    done
}

# ---------------------------------------------------------------- the host side
#
# A scenario with a host.sh (run on the host by lab.sh, see host-lib.sh) and a
# 'ports' file (dom0 TCP ports forwarded from the host's loopback) talks to it:
# dom0 prints "XENVT-LAB HOST <scenario> WORD ARGS" on the serial console, which
# the host side waits for; the host side answers with one line on a forwarded
# port, which dom0 listens on before it speaks.

# lab_net_up: dom0's emulated NIC (QEMU user networking), at QEMU's usual address.
lab_net_up() {
    insmod /lab/modules/e1000.ko || { lab_log "insmod e1000 failed"; return 1; }
    ip link set lo up
    if ! ip link set eth0 up || ! ip addr add 10.0.2.15/24 dev eth0; then
        lab_log "eth0 did not come up"
        return 1
    fi
}

# lab_host_listen PORT: starts listening for the host side's next line on PORT.
lab_host_listen() {
    rm -f "$LAB_RUN/host-$1.fifo"
    mkfifo "$LAB_RUN/host-$1.fifo"
    socat -u "TCP-LISTEN:$1,bind=10.0.2.15,reuseaddr" STDOUT >"$LAB_RUN/host-$1.fifo" 2>"$LAB_RUN/host-$1.err" &
    exec 6<"$LAB_RUN/host-$1.fifo"
}

# lab_host_say WORD [ARGS]: a line for the host side.
lab_host_say() { echo "XENVT-LAB HOST $LAB_SCENARIO $*"; }

# lab_host_hear TIMEOUT: the host side's line (after lab_host_listen) in $LAB_LINE.
lab_host_hear() {
    LAB_LINE=
    # shellcheck disable=SC2034 # read by the caller
    IFS= read -r -t "$1" LAB_LINE <&6
    _rc=$?
    exec 6<&-
    return "$_rc"
}

# lab_run_scenario NAME TIMEOUT: runs one scenario's dom0.sh and prints its verdict.
lab_run_scenario() {
    local _s=$1 _to=$2 _dir=/lab/scenarios/$1 _t0 _spid _rc _secs
    rm -f "$LAB_RUN/skip-reason" "$LAB_RUN/fail-reason"
    if [ ! -f "$_dir/dom0.sh" ]; then
        echo "XENVT-LAB FAIL $_s: no such scenario"
        return
    fi
    lab_log "scenario $_s: start (timeout $_to s)"
    _t0=$(lab_now)
    # A session of its own, so whatever the scenario leaves running can be killed.
    setsid timeout -s KILL "$_to" sh -c ". /lab/lib.sh; LAB_SCENARIO=$_s; cd $_dir; . ./dom0.sh" &
    _spid=$!
    wait "$_spid"
    _rc=$?
    kill -KILL -- "-$_spid" 2>/dev/null
    _secs=$(lab_since "$_t0")
    lab_domu_logs || {
        [ "$_rc" != 0 ] && [ "$_rc" != 77 ] || _rc=1
        echo "destroyed domains are still there (a leaked mapping or grant?)" >>"$LAB_RUN/fail-reason"
    }
    case "$_rc" in
    0) echo "XENVT-LAB PASS $_s" ;;
    77) echo "XENVT-LAB SKIP $_s: $(cat "$LAB_RUN/skip-reason" 2>/dev/null)" ;;
    137) echo "XENVT-LAB FAIL $_s: timed out after $_to s" ;;
    *) echo "XENVT-LAB FAIL $_s: exit $_rc $(cat "$LAB_RUN/fail-reason" 2>/dev/null)" ;;
    esac
    lab_log "scenario $_s: $_secs s"
}

# lab_dom0_up: starts xenstored, the dom0 nodes and xenconsoled.
lab_dom0_up() {
    # libxl needs /run/xen for its lock files, or 'xl destroy' leaves the domain behind.
    mkdir -p "$LAB_RUN" /run/xen /run/xenstored /var/lib/xenstored /var/log/xen/console /var/lib/xen
    xenstored --pid-file /run/xenstored.pid || lab_log "xenstored failed"
    _i=0
    until xenstore-exists / 2>/dev/null; do
        _i=$((_i + 1))
        [ "$_i" -lt 300 ] || { lab_log "xenstored did not come up"; return 1; }
        usleep 100000
    done
    xen-init-dom0 >/dev/null || lab_log "xen-init-dom0 failed"
    xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xenconsoled.pid ||
        lab_log "xenconsoled failed"
    cat /lab/domu/base.cpio /lab/domu/overlay.cpio >"$LAB_RUN/domu.cpio"
}

lab_dom0_main() {
    hostname dom0
    . /lab/run.conf
    lab_dom0_up || { echo "XENVT-LAB FAIL setup: dom0 did not come up"; echo "XENVT-LAB DONE"; poweroff -f; }
    if [ "${LAB_NET:-0}" = 1 ]; then lab_net_up; fi
    lab_log "dom0 up at $(lab_now) s since its kernel started"
    if [ "$LAB_MODE" = shell ]; then
        echo "lab: this is dom0. 'lab-run SCENARIO' runs a scenario; 'poweroff -f' stops the lab."
        # Respawned, so a helper's exit (lab_fail) does not end the lab.
        while :; do
            setsid cttyhack sh -l
            echo "lab: the shell ended; 'poweroff -f' stops the lab"
        done
    fi
    for _s in $LAB_SCENARIOS; do
        eval "_to=\${LAB_TIMEOUT_$(echo "$_s" | tr -c 'A-Za-z0-9\n' _):-180}"
        lab_run_scenario "$_s" "$_to"
    done
    echo "[xen] ---- xl list"
    xl list | sed 's/^/[xen] /'
    echo "[xen] ---- xl dmesg"
    xl dmesg | tr -d '\r' | sed 's/^/[xen] /'
    lab_log "done at $(lab_now) s"
    echo "XENVT-LAB DONE"
    poweroff -f
}

# ---------------------------------------------------------------- domU side

lab_domu_main() {
    hostname domU
    _s=$(sed -n 's/.*lab\.scenario=\([^ ]*\).*/\1/p' /proc/cmdline)
    if [ -z "$_s" ]; then
        echo "lab: domU $(xenstore-read domid 2>/dev/null) shell"
        while :; do setsid cttyhack sh -l; done
    fi
    lab_log "domU scenario $_s: start at $(lab_now) s"
    (cd "/lab/scenarios/$_s" && . ./domu.sh)
    _rc=$?
    lab_log "domU scenario $_s: exit $_rc"
    xenstore-write data/lab/status "$_rc"
    # dom0 reads the status, then destroys this domain.
    exec sleep 2147483647
}
