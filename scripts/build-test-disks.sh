#!/usr/bin/env bash
# Builds the disk and CD images of the firmware-and-disks tests into build/guest/, from
# Debian's packages only (run by scripts/build-test-guest.sh, after the kernel and busybox;
# it can also be run alone once those exist):
#   disk.img                raw, 128 MiB: an MBR (SYSLINUX's mbr.bin and a DOS partition
#                           table), a FAT16 boot partition with SYSLINUX, the stock kernel
#                           and initramfs-disk.cpio.gz, and a data partition holding 4 MiB of
#                           known pseudo-random data (layout below and in disk.layout)
#   disk-pio.img            the same disk, but its syslinux.cfg adds libata.dma=0 to the kernel
#                           command line: the guest reads and writes with PIO, not DMA
#   disk.sha256             the SHA-256 of the data region (what the guest must print)
#   disk.layout             the layout as shell-style key=value lines (offsets in bytes)
#   cd.iso                  an El Torito (no-emulation) CD: ISOLINUX, the kernel,
#                           initramfs-cd.cpio.gz and data.bin (2 MiB pseudo-random)
#   cd.sha256               the SHA-256 of data.bin
#   initramfs-disk.cpio.gz  the initramfs of disk.img (usable with -kernel/-initrd too)
#   initramfs-cd.cpio.gz    the initramfs of cd.iso (likewise)
#
# Layout of disk.img and disk-pio.img (512-byte sectors; byte offsets in disk.layout):
#   LBA 0                 MBR: SYSLINUX mbr.bin (boots the active partition), disk
#                         signature 0x5155524e, partition table
#   LBA 2048..131071      partition 1, type 0x06 (FAT16), active: volume QUERNBOOT, hidden
#                         sectors 2048; /ldlinux.sys, /ldlinux.c32, /syslinux.cfg,
#                         /vmlinuz, /initrd.gz
#   LBA 131072..262143    partition 2, type 0xda (non-FS data), raw:
#     LBA 131072 (64 MiB), 4 MiB: the read region, pseudo-random data written here
#                         (guest-helper.py data quern-disk-data 4194304)
#     LBA 147456 (72 MiB), 1 MiB: the write region, zeros in the image; the guest writes
#                         there the pattern of `guest-helper.py write-pattern 147456 2048`
#                         (each sector starts "QUERN-DISK-WRITE lba=<its LBA>")
#     the rest is zeros (holes in the file)
#
# The guest's /init (busybox; printed lines start at the beginning of a line, but kernel
# messages may come between them):
#   disk:  QUERN-DISK-INIT-OK            first thing, before any module is loaded: the
#                                        boot loader and kernel got this far
#          (insmod of scsi_common scsi_mod libata ata_piix ... sd_mod cdrom sr_mod isofs, the
#           depends= closure from the kernel's own .modinfo, in order; module parameters on
#           the kernel command line, e.g. libata.dma=0 or libata.force=pio4, are passed to
#           insmod as modprobe would)
#          QUERN-DISK-XFER <mode>        libata's transfer mode for sda (MWDMA2, PIO4, ...)
#          (with quern.bench on the kernel command line, for benches/disk.rs: the lines
#           QUERN-BENCH disk-read-64M <start> <end> and QUERN-BENCH disk-write-64M <start>
#           <end>, monotonic seconds around dd with O_DIRECT and 1 MiB blocks over the
#           64 MiB data partition, read then written (zeros, fsync), then poweroff -f;
#           only through -kernel/-initrd/-append, the syslinux.cfg APPEND being fixed)
#          QUERN-DISK-SHA <sha256>       of the read region, read from /dev/sda
#          QUERN-DISK-WRITE-OK           the pattern written (dd conv=fsync, then sync)
#          QUERN-DISK-READBACK <sha256>  of the write region read back with O_DIRECT after
#                                        dropping the caches (= write_sha256)
#          then poweroff -f
#   cd:    QUERN-CD-INIT-OK, QUERN-CD-XFER <mode> (of sr0), QUERN-CD-SHA <sha256 of
#          data.bin on /dev/sr0 mounted as iso9660>, then poweroff -f; with quern.cdchange=1
#          on the kernel command line first QUERN-CD-WAIT-CHANGE, then it reads the volume
#          label every half second until another disc's shows: QUERN-CD-CHANGED <label>,
#          QUERN-CD-FILE <first line of quern.txt on the new disc>
#   Any failure prints QUERN-DISK-FAIL <why> (QUERN-CD-FAIL) and powers off.
# The boot loaders print their banner ("SYSLINUX 6.04 EDD ..." / "ISOLINUX 6.04 ..."), then
# "QUERN-BOOTLOADER syslinux" / "QUERN-BOOTLOADER isolinux" (SAY in their config), then
# "Loading /vmlinuz... ok" and "Loading /initrd.gz...ok", all through the BIOS console
# (INT 10h): SeaBIOS's serial console (sercon: fw_cfg etc/sercon-port, which QEMU sets with
# -nographic) puts them on the serial port. There is deliberately no SERIAL directive:
# syslinux opens the port only after reading its config (SAY and DISPLAY text never reach
# it) and, with sercon, every later line then comes out twice, interleaved ("Loading
# /vmlinuz...Loading /vmlinuz...  ook"). The kernel command line is console=ttyS0
# (disk-pio.img: console=ttyS0 libata.dma=0); no panic=, no quiet.
#
# PIO: boot disk-pio.img (or boot disk.img's kernel and initramfs-disk.cpio.gz with
# -kernel/-initrd/-append "console=ttyS0 libata.dma=0" and disk.img as the IDE disk).
#
# Host-side checks: scripts/guest-helper.py disk-region IMAGE OFFSET LENGTH prints the
# SHA-256 of a region of a raw image (compare with disk.layout's write_sha256).
#
# Validated with QEMU (scripts/check-test-disks.sh runs exactly these and checks the
# markers and the image afterwards):
#   qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
#       -drive file=build/guest/disk.img,format=raw,if=ide
#   (the same with disk-pio.img, and with a qcow2 made by
#    qemu-img convert -O qcow2 build/guest/disk.img disk.qcow2, format=qcow2)
#   qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
#       -cdrom build/guest/cd.iso -boot d
#
# Packages: the host tools come from fdisk (sfdisk), dosfstools (mkfs.fat), mtools,
# syslinux, syslinux-common (mbr.bin, ldlinux.c32), isolinux and xorriso (.ci/run installs
# them; as root this script installs what is missing); the kernel modules from the same
# linux-image package as build/guest/vmlinuz (apt-get download, dpkg-deb -x, nothing
# installed). Cached: a group of outputs is built only if one of it is missing or
# disks.version differs from $outputs_version below (bump it whenever the outputs change,
# so that cached build/guest directories are rebuilt); a re-run with everything present
# does nothing. The data is the same on every build (fixed seeds).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/build/guest"
work="$out/.work/disks"
helper="$root/scripts/guest-helper.py"

# Layout (sectors of 512 bytes; the guest's dd uses 1 MiB blocks: keep MiB-aligned).
disk_mib=128
p1_start=2048
p1_sectors=129024
p2_start=131072
p2_sectors=131072
p2_start_mib=$((p2_start / 2048))
p2_len_mib=$((p2_sectors / 2048))
read_mib=64
read_len_mib=4
write_mib=72
write_len_mib=1

disk_outputs=(initramfs-disk.cpio.gz disk.img disk-pio.img disk.sha256 disk.layout)
cd_outputs=(initramfs-cd.cpio.gz cd.iso cd.sha256)
# The version of what this script builds (2: the disk init's quern.bench step; 3: the cd
# init's quern.cdchange step).
outputs_version=3

say() { echo "build-test-disks: $*" >&2; }

current() { [[ "$(cat "$out/disks.version" 2>/dev/null)" == "$outputs_version" ]]; }

group_present() {
    local f
    current || return 1
    for f in "$@"; do [[ -s "$out/$f" ]] || return 1; done
}

print_paths() {
    local f
    for f in "${disk_outputs[@]}" "${cd_outputs[@]}"; do echo "$out/$f"; done
}

if group_present "${disk_outputs[@]}" && group_present "${cd_outputs[@]}"; then
    print_paths
    exit 0
fi

install_package() { # package what-for
    if [[ $(id -u) -ne 0 ]]; then
        say "missing $2: install the Debian package $1 (apt-get install $1)"
        exit 1
    fi
    say "installing $1 (for $2)"
    apt-get install -y --no-install-recommends "$1" >&2 || { apt-get update >&2 && apt-get install -y --no-install-recommends "$1" >&2; }
}
need_tool() { # command package
    command -v "$1" >/dev/null || install_package "$2" "$1"
}
need_file() { # path package
    [[ -f "$1" ]] || install_package "$2" "$1"
    [[ -f "$1" ]] || { say "missing $1 (from the Debian package $2)"; exit 1; }
}
need_tool python3 python3
need_tool dpkg-deb dpkg
need_tool apt-get apt
need_tool sfdisk fdisk
need_tool mkfs.fat dosfstools
need_tool mcopy mtools
need_tool syslinux syslinux
need_tool xorriso xorriso
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin
ldlinux_c32=/usr/lib/syslinux/modules/bios/ldlinux.c32
isolinux_bin=/usr/lib/ISOLINUX/isolinux.bin
need_file "$mbr_bin" syslinux-common
need_file "$ldlinux_c32" syslinux-common
need_file "$isolinux_bin" isolinux

[[ -s "$out/vmlinuz" ]] || { say "missing $out/vmlinuz: run scripts/build-test-guest.sh"; exit 1; }

# Fixed timestamps (mtools and xorriso read SOURCE_DATE_EPOCH) and no mtools geometry checks.
export SOURCE_DATE_EPOCH=1704067200 MTOOLS_SKIP_CHECK=1

updated=0
apt_update() {
    [[ $updated -eq 1 ]] && return
    say "running apt-get update"
    apt-get update >&2
    updated=1
}

# Unpacks package $1 into $2 (removed first), downloading the .deb into the shared cache.
unpack_to() {
    local pkg=$1 dir=$2 debs="$out/.work/debs" deb
    mkdir -p "$debs"
    deb=$(ls "$debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    if [[ -z "$deb" ]]; then
        say "downloading $pkg"
        (cd "$debs" && apt-get download "$pkg" >&2) || { apt_update && (cd "$debs" && apt-get download "$pkg" >&2); } ||
            { say "cannot download $pkg (if Debian has a newer kernel now: rm -rf build/guest and rebuild)"; exit 1; }
        deb=$(ls "$debs/${pkg}"_*.deb | head -n1)
    fi
    say "unpacking $(basename "$deb")"
    rm -rf "$dir"
    dpkg-deb -x "$deb" "$dir"
}

mkdir -p "$work"

# The modules, from the package of build/guest/vmlinuz's own release (their vermagic
# must match): the depends= closure of ata_piix, sd_mod, sr_mod and isofs.
release=$(python3 "$helper" kernel-release "$out/vmlinuz")
mods="$work/modules-$release"
if [[ ! -s "$mods/load-order" ]]; then
    unpack_to "linux-image-$release" "$work/kernel.tmp"
    rm -rf "$mods.tmp"
    say "modules: $(python3 "$helper" modules "$work/kernel.tmp/lib/modules/$release" "$mods.tmp" ata_piix sd_mod sr_mod isofs)"
    rm -rf "$work/kernel.tmp" # 400 MB of modules; the .deb stays cached
    mv "$mods.tmp" "$mods"
fi

busybox="$out/.work/busybox-static/bin/busybox"
if [[ ! -x "$busybox" ]]; then
    unpack_to busybox-static "$work/busybox-static"
    busybox="$work/busybox-static/bin/busybox"
fi
"$busybox" --list-full >"$work/applets"

# /init of both initramfs images; @MODE@ is DISK or CD.
cat >"$work/init.in" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
M=@MODE@
echo QUERN-\$M-INIT-OK
fail() { echo "QUERN-\$M-FAIL \$*"; poweroff -f; sleep 10; }
# No modprobe here: the kernel's own module requests fail at once.
echo > /proc/sys/kernel/modprobe
# Load the modules in dependency order, with their parameters from the kernel command line
# (module.param=value), as modprobe passes them.
cmdline=\$(cat /proc/cmdline)
while read -r ko; do
    name=\$(echo "\${ko%.ko}" | tr - _)
    opts=
    for tok in \$cmdline; do
        key=\${tok%%=*}
        case "\$key" in
        *.*) [ "\$(echo "\${key%%.*}" | tr - _)" = "\$name" ] && opts="\$opts \${tok#*.}" ;;
        esac
    done
    insmod /lib/modules/\$ko \$opts || fail "insmod \$ko\$opts"
done </lib/modules/load-order
# wait_for PATH SECONDS
wait_for() {
    i=0
    while [ ! -e "\$1" ]; do
        [ \$i -ge \$((\$2 * 10)) ] && return 1
        sleep 0.1
        i=\$((i + 1))
    done
}
# xfer BLOCKDEV: libata's transfer mode of the device behind it
xfer() {
    p=\$(readlink -f /sys/block/\$1/device)
    n=\${p#*/ata}
    n=\${n%%/*}
    cat /sys/class/ata_device/dev\$n.0/xfer_mode 2>/dev/null || echo unknown
}
EOF
cat >"$work/init-disk.tail" <<EOF
wait_for /dev/sda 60 || fail "no /dev/sda"
wait_for /dev/sda2 10 || fail "no /dev/sda2 (partition table not read)"
echo "QUERN-DISK-XFER \$(xfer sda)"
if grep -qw quern.bench /proc/cmdline; then
    # Seconds of the monotonic clock, in ns steps (/proc/timer_list's "now at N nsecs";
    # /proc/uptime counts in 10 ms steps, too coarse for 64 MiB).
    stamp() {
        ns=
        { read -r _; read -r _; read -r _ _ ns _; } </proc/timer_list 2>/dev/null
        case "\$ns" in
        '' | *[!0-9]*) cut -d' ' -f1 /proc/uptime ;;
        *) printf '%d.%09d\n' \$((ns / 1000000000)) \$((ns % 1000000000)) ;;
        esac
    }
    a=\$(stamp)
    dd if=/dev/sda of=/dev/null bs=1M skip=$p2_start_mib count=$p2_len_mib iflag=direct 2>/dev/null || fail "bench read"
    b=\$(stamp)
    echo "QUERN-BENCH disk-read-64M \$a \$b"
    a=\$(stamp)
    dd if=/dev/zero of=/dev/sda bs=1M seek=$p2_start_mib count=$p2_len_mib oflag=direct conv=fsync 2>/dev/null || fail "bench write"
    b=\$(stamp)
    echo "QUERN-BENCH disk-write-64M \$a \$b"
    poweroff -f
fi
dd if=/dev/sda of=/tmp/read bs=1M skip=$read_mib count=$read_len_mib 2>/dev/null || fail "read /dev/sda"
sum=\$(sha256sum /tmp/read) || fail sha256sum
echo "QUERN-DISK-SHA \${sum%% *}"
dd if=/lib/quern/write.bin of=/dev/sda bs=1M seek=$write_mib count=$write_len_mib conv=fsync 2>/dev/null || fail "write /dev/sda"
sync
echo QUERN-DISK-WRITE-OK
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/sda of=/tmp/back bs=1M skip=$write_mib count=$write_len_mib iflag=direct 2>/dev/null || fail "read back /dev/sda"
sum=\$(sha256sum /tmp/back) || fail sha256sum
echo "QUERN-DISK-READBACK \${sum%% *}"
poweroff -f
EOF
cat >"$work/init-cd.tail" <<'EOF'
wait_for /dev/sr0 60 || fail "no /dev/sr0"
echo "QUERN-CD-XFER $(xfer sr0)"
mkdir -p /mnt
mount -t iso9660 -o ro /dev/sr0 /mnt || fail "mount /dev/sr0"
sum=$(sha256sum /mnt/data.bin) || fail "read /mnt/data.bin"
echo "QUERN-CD-SHA ${sum%% *}"
umount /mnt
if grep -q quern.cdchange=1 /proc/cmdline; then
    # The primary volume descriptor's volume identifier (sector 16, bytes 40..71).
    label() { dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null | tr -d ' '; }
    first=$(label)
    echo QUERN-CD-WAIT-CHANGE
    i=0
    while :; do
        now=$(label)
        [ -n "$now" ] && [ "$now" != "$first" ] && break
        i=$((i + 1))
        [ $i -ge 600 ] && fail "no other disc seen"
        sleep 0.5
    done
    echo "QUERN-CD-CHANGED $now"
    mount -t iso9660 -o ro /dev/sr0 /mnt || fail "mount the new disc"
    echo "QUERN-CD-FILE $(head -n 1 /mnt/quern.txt)"
fi
poweroff -f
EOF

# make_initramfs MODE(disk|cd) OUT EXTRA_SETUP
make_initramfs() {
    local mode=$1 dest=$2 tree="$work/rootfs-$1"
    rm -rf "$tree"
    mkdir -p "$tree/lib/modules"
    cp "$mods"/* "$tree/lib/modules/"
    if [[ $mode == disk ]]; then
        mkdir -p "$tree/lib/quern"
        cp "$work/write.bin" "$tree/lib/quern/write.bin"
    fi
    { sed "s/@MODE@/${mode^^}/" "$work/init.in"; cat "$work/init-$mode.tail"; } >"$work/init-$mode"
    python3 "$helper" initramfs "$busybox" "$work/init-$mode" "$work/applets" "$dest.tmp" "$tree"
    mv "$dest.tmp" "$dest"
    rm -rf "$tree"
}

syslinux_cfg() { # APPEND...
    printf 'SAY QUERN-BOOTLOADER %s\nDEFAULT quern\nPROMPT 0\nTIMEOUT 0\nLABEL quern\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND %s\n' "$@"
}

# make_disk OUT APPEND: the whole raw disk
make_disk() {
    local dest=$1 append=$2 part="$work/part1.img" img="$1.tmp"
    syslinux_cfg syslinux "$append" >"$work/syslinux.cfg"
    rm -f "$part"
    mkfs.fat -C -F 16 -n QUERNBOOT -i 5155524e -h $p1_start --invariant "$part" $((p1_sectors / 2)) >/dev/null
    syslinux --install "$part"
    mcopy -i "$part" "$out/vmlinuz" ::/vmlinuz
    mcopy -i "$part" "$out/initramfs-disk.cpio.gz" ::/initrd.gz
    mcopy -i "$part" "$work/syslinux.cfg" ::/syslinux.cfg
    rm -f "$img"
    truncate -s "${disk_mib}M" "$img"
    sfdisk --quiet "$img" <<EOF
label: dos
label-id: 0x5155524e
unit: sectors

start=$p1_start, size=$p1_sectors, type=6, bootable
start=$p2_start, size=$p2_sectors, type=da
EOF
    dd if="$mbr_bin" of="$img" bs=440 count=1 conv=notrunc status=none
    dd if="$part" of="$img" bs=512 seek=$p1_start conv=notrunc,sparse status=none
    dd if="$work/read.bin" of="$img" bs=1M seek=$read_mib conv=notrunc status=none
    rm -f "$part"
    mv "$img" "$dest"
}

if ! group_present "${disk_outputs[@]}"; then
    read_sha=$(python3 "$helper" data quern-disk-data $((read_len_mib << 20)) "$work/read.bin")
    write_sha=$(python3 "$helper" write-pattern $((write_mib * 2048)) $((write_len_mib * 2048)) "$work/write.bin")
    if ! current || [[ ! -s "$out/initramfs-disk.cpio.gz" ]]; then
        say "writing initramfs-disk.cpio.gz"
        make_initramfs disk "$out/initramfs-disk.cpio.gz"
    fi
    say "writing disk.img and disk-pio.img"
    make_disk "$out/disk.img" "console=ttyS0"
    make_disk "$out/disk-pio.img" "console=ttyS0 libata.dma=0"
    cat >"$out/disk.layout.tmp" <<EOF
# build/guest/disk.img and disk-pio.img (scripts/build-test-disks.sh); bytes
disk_size=$((disk_mib << 20))
boot_partition_offset=$((p1_start * 512))
boot_partition_length=$((p1_sectors * 512))
data_partition_offset=$((p2_start * 512))
data_partition_length=$((p2_sectors * 512))
read_offset=$((read_mib << 20))
read_length=$((read_len_mib << 20))
read_sha256=$read_sha
write_offset=$((write_mib << 20))
write_length=$((write_len_mib << 20))
write_sha256=$write_sha
EOF
    echo "$read_sha" >"$out/disk.sha256.tmp"
    rm -f "$work/read.bin" "$work/write.bin"
    mv "$out/disk.layout.tmp" "$out/disk.layout"
    mv "$out/disk.sha256.tmp" "$out/disk.sha256"
fi

if ! group_present "${cd_outputs[@]}"; then
    if ! current || [[ ! -s "$out/initramfs-cd.cpio.gz" ]]; then
        say "writing initramfs-cd.cpio.gz"
        make_initramfs cd "$out/initramfs-cd.cpio.gz"
    fi
    say "writing cd.iso"
    iso="$work/iso"
    rm -rf "$iso"
    mkdir -p "$iso/isolinux"
    cp "$isolinux_bin" "$ldlinux_c32" "$iso/isolinux/"
    syslinux_cfg isolinux "console=ttyS0" >"$iso/isolinux/isolinux.cfg"
    cp "$out/vmlinuz" "$iso/vmlinuz"
    cp "$out/initramfs-cd.cpio.gz" "$iso/initrd.gz"
    cd_sha=$(python3 "$helper" data quern-cd-data $((2 << 20)) "$iso/data.bin")
    find "$iso" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    xorriso -as mkisofs -quiet -o "$out/cd.iso.tmp" -V QUERN_CD -R \
        -b isolinux/isolinux.bin -c isolinux/boot.cat \
        -no-emul-boot -boot-load-size 4 -boot-info-table "$iso" >"$work/xorriso.log" 2>&1 ||
        { cat "$work/xorriso.log" >&2; exit 1; }
    rm -rf "$iso"
    echo "$cd_sha" >"$out/cd.sha256.tmp"
    mv "$out/cd.iso.tmp" "$out/cd.iso"
    mv "$out/cd.sha256.tmp" "$out/cd.sha256"
fi

echo "$outputs_version" >"$out/disks.version"
print_paths
