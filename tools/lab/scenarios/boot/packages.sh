# The boot scenario's package checks, sourced by dom0.sh and domu.sh: the lab
# installed the project's .debs into each image with dpkg (tools/lab/lab.sh).

# boot_packages_present: true if dpkg installed anything into this image.
boot_packages_present() { [ -s /var/lib/dpkg/status ]; }

# boot_check_packages PACKAGE...: each is installed, every file its list names
# is there, its conffiles are its list's /etc files, and every command its units
# start accepts the config it ships (the command with --check).
boot_check_packages() {
    for _p in "$@"; do
        _status=$(awk -v p="$_p" '$1 == "Package:" { on = ($2 == p) } on && $1 == "Status:" { print; exit }' \
            /var/lib/dpkg/status)
        [ "$_status" = "Status: install ok installed" ] || lab_fail "package $_p: '$_status', want 'install ok installed'"
        _list=/var/lib/dpkg/info/$_p.list
        [ -s "$_list" ] || lab_fail "package $_p: no file list"
        _n=0
        while IFS= read -r _f; do
            [ -e "$_f" ] || lab_fail "package $_p: $_f is missing"
            _n=$((_n + 1))
        done <"$_list"
        # Every /etc file is a conffile (cargo-deb marks them), so an upgrade keeps local edits.
        for _f in $(grep '^/etc/.*[^/]$' "$_list"); do
            [ -d "$_f" ] && continue
            grep -qxF "$_f" "/var/lib/dpkg/info/$_p.conffiles" 2>/dev/null ||
                lab_fail "package $_p: $_f is not a conffile"
        done
        for _unit in $(grep '^/usr/lib/systemd/system/.*\.service$' "$_list"); do
            grep -q "enable $(basename "$_unit")" "/var/lib/dpkg/info/$_p.postinst" ||
                lab_fail "package $_p: its postinst does not enable $(basename "$_unit")"
            _seen=
            grep -E '^Exec(Start|StartPre)=' "$_unit" | sed 's/^[^=]*=//' | while IFS= read -r _cmd; do
                _prog=${_cmd%% *}
                [ -x "$_prog" ] || lab_fail "$(basename "$_unit"): $_prog is not an installed program"
                case " $_cmd " in *" --check "*) ;; *) _cmd="$_cmd --check" ;; esac
                # An ExecStartPre that is the ExecStart's --check already (the proxy's).
                [ "$_cmd" != "$_seen" ] || continue
                _seen=$_cmd
                _out=$($_cmd 2>&1) || lab_fail "$(basename "$_unit"): '$_cmd' failed: $_out"
                lab_log "$(basename "$_unit"): '$_cmd': $_out"
            done || exit 1
        done
        lab_log "package $_p: installed, its $_n files in place"
    done
}

# boot_unit_cmd UNIT: the command the installed unit starts (its ExecStart).
boot_unit_cmd() { sed -n 's/^ExecStart=//p' "/usr/lib/systemd/system/$1"; }

# boot_loopback_up: brings up lo, as a real system's networking does (the daemons'
# configs use 127.0.0.1).
boot_loopback_up() { ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up; }
