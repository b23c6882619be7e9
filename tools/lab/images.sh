# shellcheck shell=bash
# Builds the cached lab images from unpacked Debian packages. Sourced by lab.sh.
#
# The cache key of the images is a hash of this file and of the package file
# names, so a change here, or a new package version, rebuilds them. Everything
# that changes from run to run (the init script, the scenarios, the project's
# binaries) goes into the small overlay cpio that lab.sh builds for each run.

# Xen programs each image carries, relative to the unpacked packages.
XEN_BIN=usr/lib/xen-4.17/bin
DOM0_XEN_PROGS=(xl xenstored xenconsoled xenconsole xen-init-dom0 libxl-save-helper
    vchan-socket-proxy lsevtchn)
DOMU_XEN_PROGS=(vchan-socket-proxy lsevtchn)
# xenstore-utils: one program under several names.
XENSTORE_PROGS=(xenstore xenstore-chmod xenstore-exists xenstore-list xenstore-ls
    xenstore-read xenstore-rm xenstore-watch xenstore-write)
# Kernel modules, loaded at boot in this order (none has dependencies).
LAB_MODULES=(drivers/xen/xen-evtchn.ko drivers/xen/xen-gntdev.ko drivers/xen/xen-gntalloc.ko
    drivers/xen/xen-privcmd.ko drivers/xen/xenfs/xenfs.ko
    drivers/net/xen-netback/xen-netback.ko drivers/net/xen-netfront.ko
    drivers/net/ethernet/intel/e1000/e1000.ko)

# The X layer: a real TigerVNC desktop for the domUs of the scenarios that ask for
# it (a file 'layers' naming x11 in their directory), copied from the host's
# installed packages (tools/scripts/setup.sh installs them). It is a cpio of its own,
# appended only to those domUs, so the others stay small.
X_PKGS=(tigervnc-standalone-server tigervnc-common x11-xkb-utils x11-xserver-utils x11-utils xterm x11-apps xkb-data)
X_PROGS=(Xtigervnc xkbcomp vncconfig xsetroot xterm ico xwininfo)

# x_layer_versions: what the X layer is made of, for the cache key (empty when
# the host has no Xtigervnc, in which case no X layer is built).
x_layer_versions() {
    command -v Xtigervnc >/dev/null || return 0
    dpkg-query -W "${X_PKGS[@]}" 2>/dev/null || true
}

# build_x_layer OUT: the X layer's cpio from the host's files.
build_x_layer() {
    local out=$1 img p files=() d
    img=$(mktemp -d "$out.work.XXXXXX")
    mkdir -p "$img/usr/bin" "$img/usr/share/X11/locale" "$img/var/lib/xkb" "$img/tmp/.X11-unix"
    for p in "${X_PROGS[@]}"; do
        local f
        f=$(command -v "$p") || die "the X layer needs $p (run tools/scripts/setup.sh)"
        cp -L "$f" "$img/usr/bin/$p"
        files+=("$img/usr/bin/$p")
    done
    ln -s Xtigervnc "$img/usr/bin/Xvnc"
    install_libs "$img" / "${files[@]}"
    cp -r /usr/share/X11/xkb "$img/usr/share/X11/xkb"
    # Only the C locale: xterm and the X clients need the locale tables to start.
    for d in C en_US.UTF-8 locale.alias locale.dir compose.dir; do
        [ -e "/usr/share/X11/locale/$d" ] && cp -r "/usr/share/X11/locale/$d" "$img/usr/share/X11/locale/"
    done
    [ -f /usr/share/X11/XErrorDB ] && cp /usr/share/X11/XErrorDB "$img/usr/share/X11/"
    chmod 1777 "$img/tmp/.X11-unix"
    make_cpio "$img" "$out"
    rm -rf "$img"
}

# lab_packages: the Debian packages the images are built from (the kernel
# package is resolved from linux-image-amd64 unless XENVT_LAB_KERNEL_PKG names one).
lab_packages() {
    local kpkg="${XENVT_LAB_KERNEL_PKG:-}"
    if [ -z "$kpkg" ]; then
        kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [ -n "$kpkg" ] || die "cannot resolve the kernel package (run apt-get update, or set XENVT_LAB_KERNEL_PKG)"
    echo xen-hypervisor-4.17-amd64 "$kpkg" xen-utils-4.17 xen-utils-common xenstore-utils \
        libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenmisc4.17 \
        libxenstore4 libxentoollog1 libxendevicemodel1 libxenhypfs1 libxentoolcore1 \
        libyajl2 busybox-static socat libwrap0
}

# elf_libs ROOT FILE...: absolute paths of the shared libraries the files need,
# looked up first in the unpacked packages, then on the host.
elf_libs() {
    local root=$1
    shift
    local f out
    for f in "$@"; do
        out=$(LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" ldd "$f" 2>&1) ||
            { [[ "$out" == *"not a dynamic executable"* ]] && continue; die "ldd $f: $out"; }
        if grep -q "not found" <<<"$out"; then
            die "missing libraries for $f: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
        fi
        awk '/=> \// {print $3} /^[ \t]*\/[^ ]*ld-linux/ {print $1}' <<<"$out"
    done | sort -u
}

# install_libs IMG ROOT FILE...: copies the libraries FILE... need into IMG.
install_libs() {
    local img=$1 root=$2
    shift 2
    local lib libs
    # Not a process substitution: a missing library must stop the build.
    libs=$(elf_libs "$root" "$@")
    mkdir -p "$img/usr/lib/x86_64-linux-gnu" "$img/lib64"
    while read -r lib; do
        [ -n "$lib" ] || continue
        case "$lib" in
        */ld-linux-x86-64.so.2) cp -L "$lib" "$img/lib64/ld-linux-x86-64.so.2" ;;
        *) cp -L "$lib" "$img/usr/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
        esac
    done <<<"$libs"
}

# stage_base IMG ROOT: the part both images share: busybox, xenstore tools,
# the modules, the libraries.
stage_base() {
    local img=$1 root=$2 d p
    for d in bin sbin usr/bin usr/sbin usr/lib/x86_64-linux-gnu lib64 etc proc sys dev run tmp \
        root var/log/xen/console var/lib/xen var/lib/xenstored lab/modules "$XEN_BIN"; do
        mkdir -p "$img/$d"
    done
    ln -s usr/lib "$img/lib"
    ln -s ../run "$img/var/run"
    cp "$root/bin/busybox" "$img/bin/busybox"
    # busybox-static runs on the host, so it can list its own applets.
    while read -r p; do
        [ -e "$img/$p" ] || ln -s /bin/busybox "$img/$p"
    done < <("$root/bin/busybox" --list-full)
    for p in "${XENSTORE_PROGS[@]}"; do
        cp -L "$root/usr/bin/$p" "$img/usr/bin/$p"
    done
    cp -L "$root/usr/bin/socat" "$img/usr/bin/socat"
    for p in "${LAB_MODULES[@]}"; do
        cp "$root"/lib/modules/*/kernel/"$p" "$img/lab/modules/"
    done
    install_libs "$img" "$root" "$img/usr/bin/xenstore" "$img/usr/bin/socat"
    # glibc dlopens libgcc_s for unwinding (xl aborts without it).
    local gcc_s
    gcc_s=$(find /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu -maxdepth 1 -name libgcc_s.so.1 -print -quit)
    [ -n "$gcc_s" ] || die "libgcc_s.so.1 not found on the host"
    cp -L "$gcc_s" "$img/usr/lib/x86_64-linux-gnu/"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$img/etc/passwd"
    printf 'root:x:0:\n' >"$img/etc/group"
    printf '/usr/lib/x86_64-linux-gnu\n' >"$img/etc/ld.so.conf"
}

# stage_xen IMG ROOT PROG...: Xen programs and their libraries.
stage_xen() {
    local img=$1 root=$2 p
    shift 2
    local files=()
    for p in "$@"; do
        cp -L "$root/$XEN_BIN/$p" "$img/$XEN_BIN/$p"
        files+=("$img/$XEN_BIN/$p")
    done
    install_libs "$img" "$root" "${files[@]}"
}

# make_cpio DIR OUT: a newc archive of DIR, owned by root.
make_cpio() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$2"
}

# extract_vmlinux BZIMAGE OUT: the raw ELF kernel inside a bzImage (xz payload).
extract_vmlinux() {
    local off
    off=$(LC_ALL=C grep -abo -P '\xfd7zXZ\x00' "$1" | head -1 | cut -d: -f1)
    [ -n "$off" ] || die "no xz payload in $1"
    tail -c +$((off + 1)) "$1" | xz -dc --single-stream >"$2" 2>/dev/null || true
    [ "$(head -c 4 "$2" | od -An -c | tr -d ' ')" = '177ELF' ] || die "could not extract vmlinux from $1"
}

# build_images DEBDIR OUTDIR: unpacks the packages and writes xen, vmlinux,
# dom0-base.cpio and domu-base.cpio into OUTDIR, and domu-x11.cpio (the X layer)
# when the host has the X packages.
build_images() {
    local debs=$1 out=$2 work deb
    work=$(mktemp -d "$out.work.XXXXXX")
    local root=$work/root
    mkdir -p "$root"
    for deb in "$debs"/*.deb; do
        dpkg-deb -x "$deb" "$root"
    done
    gunzip -c "$root"/boot/xen-4.17-amd64.gz >"$work/xen"
    extract_vmlinux "$(ls "$root"/boot/vmlinuz-*)" "$work/vmlinux"

    local domu=$work/domu
    stage_base "$domu" "$root"
    stage_xen "$domu" "$root" "${DOMU_XEN_PROGS[@]}"
    make_cpio "$domu" "$work/domu-base.cpio"

    local dom0=$work/dom0
    stage_base "$dom0" "$root"
    stage_xen "$dom0" "$root" "${DOM0_XEN_PROGS[@]}"
    mkdir -p "$dom0/etc/xen" "$dom0/lab/domu"
    cp "$root/etc/xen/xl.conf" "$dom0/etc/xen/xl.conf"
    # xl create loads a raw ELF kernel about 2 s faster under TCG than a gzip -1
    # one (measured: 4.5 s against 6.9 s), for 54 MB more in dom0's image.
    if [ "${XENVT_LAB_DOMU_GZ:-0}" = 1 ]; then
        gzip -1 -c "$work/vmlinux" >"$dom0/lab/domu/vmlinuz.gz"
    else
        cp "$work/vmlinux" "$dom0/lab/domu/vmlinux"
    fi
    cp "$work/domu-base.cpio" "$dom0/lab/domu/base.cpio"
    make_cpio "$dom0" "$work/dom0-base.cpio"

    local made=("$work/xen" "$work/vmlinux" "$work/dom0-base.cpio" "$work/domu-base.cpio")
    if [ -n "$(x_layer_versions)" ]; then
        build_x_layer "$work/domu-x11.cpio"
        made+=("$work/domu-x11.cpio")
    else
        note "no Xtigervnc on this host: no X layer (scenarios that need it skip)"
    fi
    rm -rf "$out"
    mkdir -p "$out"
    mv "${made[@]}" "$out/"
    rm -rf "$work"
}
