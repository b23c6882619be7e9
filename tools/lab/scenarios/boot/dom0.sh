# dom0 and a PV domU boot with the Xen devices; a xenstore node makes a round trip; the .debs are installed right.
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
