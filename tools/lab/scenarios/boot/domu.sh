# The guest side of 'boot': checks its devices, echoes dom0's nonce.

lab_check_devices
[ -z "$(cat /proc/xen/capabilities)" ] || lab_fail "a domU must not have control_d"
domid=$(xenstore-read domid) || lab_fail "cannot read domid"
nonce=$(xenstore-read data/lab/nonce) || lab_fail "cannot read data/lab/nonce"
xenstore-write data/lab/boot "echo $nonce domid=$domid" || lab_fail "cannot write data/lab/boot"
lab_log "domU $domid wrote data/lab/boot"

# The packages the lab installed with dpkg (dom0 reads the verdict from data/lab/status).
. ./packages.sh
if boot_packages_present; then
    boot_check_packages xenvt-tools xenvt-agent
    # Run the agent as its unit does, with the shipped config, and a stand-in for the
    # local service that config lets dom0 reach (127.0.0.1:5900): it answers with
    # the nonce, so dom0 can see a stream cross the packaged agent and backend.
    boot_loopback_up
    socat TCP-LISTEN:5900,bind=127.0.0.1,reuseaddr,fork SYSTEM:"echo boot-service $nonce" \
        >/dev/null 2>&1 </dev/null &
    # shellcheck disable=SC2046 # the unit's command line, split into words as systemd does
    set -- $(boot_unit_cmd xenvt-agent.service)
    "$@" >/dev/null 2>"$LAB_RUN/agent.log" </dev/null &
    lab_wait_node "/local/domain/$domid/data/xenvt/state" 30 ready >/dev/null || {
        cat "$LAB_RUN/agent.log"
        lab_fail "the packaged agent did not publish data/xenvt/state = ready"
    }
    lab_log "the packaged agent is up (data/xenvt/state = ready)"
fi
