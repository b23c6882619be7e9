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
fi
