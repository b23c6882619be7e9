# dom0 and a PV domU boot with the Xen devices; a xenstore node makes a round trip; the .debs
# are installed right and their daemons run with the shipped configs.
# Sourced by the lab's dom0 init with lib.sh loaded; exit 0 passes, 77 skips.

lab_check_devices
grep -q control_d /proc/xen/capabilities || lab_fail "dom0 lacks control_d"

t0=$(lab_now)
id=$(lab_domu_create lab-boot boot) || lab_fail "cannot create the domU"
# A fresh value the guest must echo back, so a stale node cannot pass.
nonce=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
xenstore-write "/local/domain/$id/data/lab/nonce" "$nonce" || lab_fail "cannot write the nonce"
lab_domu_start lab-boot

got=$(lab_wait_node "/local/domain/$id/data/lab/boot" 120) || lab_fail "the domU wrote no data/lab/boot"
lab_log "domU $id up and answered after $(lab_since "$t0") s"
[ "$got" = "echo $nonce domid=$id" ] || lab_fail "data/lab/boot is '$got', want 'echo $nonce domid=$id'"
lab_domu_wait "$id" 30 || lab_fail "the domU's checks failed (status $?)"

# The packages (tools/lab/lab.sh installs them with dpkg): files in place, configs
# accepted. The domU checked its own before it answered.
. ./packages.sh
boot_packages_present || lab_skip "the images have no xenvt packages (the build or the packaging failed)"
boot_check_packages xenvt-tools xenvt-dom0

# Run the backend and the proxy as their units do, with the shipped configs (the
# directories are the units' RuntimeDirectory and LogsDirectory).
mkdir -p /run/xenvt /run/xenvt-proxy /var/log/xenvt
boot_loopback_up
# shellcheck disable=SC2046 # the units' command lines, split into words as systemd does
set -- $(boot_unit_cmd xenvt-backend.service)
"$@" >/dev/null 2>"$LAB_RUN/backend.log" </dev/null &
backend_pid=$!
# shellcheck disable=SC2046
lab_fifo_start proxy $(boot_unit_cmd xenvt-proxy.service)
# The backend attaches to the domU's agent and, for the config's listen = true,
# opens a socket per guest: a connection there is a stream into the guest, which
# the agent connects to its 127.0.0.1:5900 (the guest's stand-in answers).
sock=/run/xenvt/lab-boot/vnc.sock
lab_wait_socket "$sock" || { cat "$LAB_RUN/backend.log"; lab_fail "the packaged backend made no $sock"; }
got=$(socat -u -T 10 "UNIX-CONNECT:$sock" -) || lab_fail "no stream through $sock"
[ "$got" = "boot-service $nonce" ] || lab_fail "through $sock: '$got', want 'boot-service $nonce'"
lab_log "a stream crossed the packaged backend and agent: '$got'"
# The proxy serves the domain (its console, from xenstore) on 5900 + domid.
port=
while lab_fifo_line 20; do
    case "$LAB_LINE" in
    "xenvt-proxy: viewers domain=$id addr="*) port=${LAB_LINE##*:} && break ;;
    esac
done
[ -n "$port" ] || { cat "$LAB_RUN/proxy.err"; lab_fail "the packaged proxy did not serve domain $id"; }
banner=$(socat -u -T 5 "TCP:127.0.0.1:$port" - 2>/dev/null | head -c 12)
[ "$banner" = "RFB 003.008" ] || lab_fail "the proxy's port $port said '$banner', want 'RFB 003.008'"
lab_log "the packaged proxy serves domain $id on port $port ($banner)"
# Both stop cleanly on SIGTERM, as systemctl stop asks them to.
kill -TERM "$backend_pid" "$LAB_PID"
wait "$backend_pid"
rc=$?
[ "$rc" = 0 ] || { cat "$LAB_RUN/backend.log"; lab_fail "the backend exited with status $rc on SIGTERM"; }
lab_fifo_end proxy 20
[ "$LAB_RC" = 0 ] || { cat "$LAB_RUN/proxy.err"; lab_fail "the proxy exited with status $LAB_RC on SIGTERM"; }
[ ! -e "$sock" ] || lab_fail "the backend left $sock behind"
lab_log "the packaged backend and proxy stopped cleanly"
