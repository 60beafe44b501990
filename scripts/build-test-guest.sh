#!/usr/bin/env bash
# Builds quern's Linux test guests from Debian's packages into build/guest/:
#   vmlinuz                  the stock Debian bzImage (the kernel linux-image-amd64 depends on)
#   vmlinux                  the same kernel uncompressed (ELF with a PVH note), from the bzImage's payload
#   initramfs.cpio.gz        busybox; /init prints QUERN-INIT-OK and powers off
#   initramfs-shell.cpio.gz  busybox; /init prints QUERN-INIT-OK and runs a shell on the console
#   initramfs-bench.cpio.gz  busybox; /init times sha256sum and gzip|gunzip of 16 MiB
#                            (QUERN-BENCH lines with /proc/uptime stamps) and powers off
#   disk.img, disk-pio.img, cd.iso, ...  the boot disk and CD images of the firmware and
#                            disk tests: scripts/build-test-disks.sh (run at the end)
#   initramfs-programs.cpio.gz  busybox and Debian's xz, bzip2, zstd, gzip, openssl, sqlite3,
#                            perl and python3 with their libraries; /init runs and checks a
#                            workload of each: scripts/build-programs-guest.sh (run last)
# Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`: nothing
# is installed into the host. Cached: each output is built only if missing, so a
# re-run with everything present does nothing. Remove build/guest to rebuild.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/build/guest"
work="$out/.work"
helper="$root/scripts/guest-helper.py"
outputs=(vmlinuz vmlinux initramfs.cpio.gz initramfs-shell.cpio.gz initramfs-bench.cpio.gz)
outputs+=(initramfs-disk.cpio.gz disk.img disk-pio.img disk.sha256 disk.layout initramfs-cd.cpio.gz cd.iso cd.sha256)
outputs+=(initramfs-programs.cpio.gz initramfs-net.cpio.gz)

say() { echo "build-test-guest: $*" >&2; }

all_present() {
    local f
    for f in "${outputs[@]}"; do [[ -s "$out/$f" ]] || return 1; done
}

print_paths() {
    local f
    for f in "${outputs[@]}"; do echo "$out/$f"; done
}

# The firmware (SeaBIOS, iPXE) the firmware tests and `quern` without -kernel boot.
"$root/roms/fetch-firmware.sh" >/dev/null

if all_present; then
    "$root/scripts/build-programs-guest.sh" >/dev/null # rebuilds an outdated version
    "$root/scripts/build-net-guest.sh" >/dev/null
    print_paths
    exit 0
fi

# need_tool, apt_update and unpack.
# shellcheck source=scripts/debian-packages.sh
source "$root/scripts/debian-packages.sh"
need_tool python3 python3
need_tool dpkg-deb dpkg
need_tool apt-get apt

kernel_package() {
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [[ -z "$pkg" ]]; then
        apt_update
        pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [[ -n "$pkg" ]] || { say "cannot resolve the kernel package of linux-image-amd64"; exit 1; }
    echo "$pkg"
}

mkdir -p "$out" "$work"

if [[ ! -s "$out/vmlinuz" ]]; then
    kdir=$(unpack "$(kernel_package)")
    cp "$(ls "$kdir"/boot/vmlinuz-* | head -n1)" "$out/vmlinuz.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    say "kernel: $(basename "$kdir")"
    rm -rf "$kdir" # 400 MB of modules; the .deb stays cached
fi

if [[ ! -s "$out/vmlinux" ]]; then
    say "extracting vmlinux from the bzImage payload"
    python3 "$helper" vmlinux "$out/vmlinuz" "$out/vmlinux.tmp"
    mv "$out/vmlinux.tmp" "$out/vmlinux"
fi

if [[ ! -s "$out/initramfs.cpio.gz" || ! -s "$out/initramfs-shell.cpio.gz" || ! -s "$out/initramfs-bench.cpio.gz" ]]; then
    bdir=$(unpack busybox-static)
    busybox="$bdir/bin/busybox"
    "$busybox" --list-full >"$work/applets"

    cat >"$work/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo QUERN-INIT-OK
poweroff -f
EOF
    cat >"$work/init-shell" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo QUERN-INIT-OK
setsid cttyhack sh
poweroff -f
EOF
    cat >"$work/init-bench" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo QUERN-INIT-OK
dd if=/dev/zero of=/tmp/z bs=1M count=16 2>/dev/null
stamp() { cut -d' ' -f1 /proc/uptime; }
a=$(stamp); sha256sum /tmp/z >/dev/null; b=$(stamp)
echo "QUERN-BENCH sha256sum $a $b"
a=$(stamp); gzip -c /tmp/z | gunzip -c >/dev/null; b=$(stamp)
echo "QUERN-BENCH gzip+gunzip $a $b"
poweroff -f
EOF
    say "writing the initramfs images"
    python3 "$helper" initramfs "$busybox" "$work/init" "$work/applets" "$out/initramfs.cpio.gz.tmp"
    python3 "$helper" initramfs "$busybox" "$work/init-shell" "$work/applets" "$out/initramfs-shell.cpio.gz.tmp"
    python3 "$helper" initramfs "$busybox" "$work/init-bench" "$work/applets" "$out/initramfs-bench.cpio.gz.tmp"
    mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
    mv "$out/initramfs-bench.cpio.gz.tmp" "$out/initramfs-bench.cpio.gz"
    mv "$out/initramfs-shell.cpio.gz.tmp" "$out/initramfs-shell.cpio.gz"
fi

"$root/scripts/build-test-disks.sh" >/dev/null
"$root/scripts/build-programs-guest.sh" >/dev/null
"$root/scripts/build-net-guest.sh" >/dev/null

print_paths
