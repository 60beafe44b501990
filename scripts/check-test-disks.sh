#!/usr/bin/env bash
# Boots the disk and CD images of scripts/build-test-disks.sh and checks what the guest
# prints and what it leaves in the image: how those images were validated against QEMU,
# and a reference for quern's own tests. Not run by CI (QEMU is only the reference).
#
#   scripts/check-test-disks.sh [CASE...]     all cases when none is named
#   EMU=target/release/quern scripts/check-test-disks.sh raw cd
#
# EMU is the emulator (default qemu-system-x86_64; it gets QEMU's command line below),
# ACCEL its accelerator (default tcg), TIMEOUT the seconds one boot may take (300).
# qemu-img (QEMU's) makes and checks the qcow2 images. Every case boots a copy: the
# images in build/guest stay as built. Cases, each with its command line:
#   raw       -drive file=COPY-OF-disk.img,format=raw,if=ide
#             markers (DMA), the write region holds the pattern, nothing else changed
#   pio       -drive file=COPY-OF-disk-pio.img,format=raw,if=ide   (the same, PIO)
#   qcow2     qemu-img convert -O qcow2 disk.img T.qcow2; -drive file=T.qcow2,format=qcow2,if=ide
#             markers; qemu-img check; converted back to raw: only the write region changed
#   overlay   qemu-img create -f qcow2 -b BASE.img -F raw OV.qcow2; -drive file=OV.qcow2,...
#             markers; qemu-img check; BASE untouched; only the write region changed
#   snapshot  -drive file=COPY,format=raw,if=ide -snapshot: markers; the image unchanged
#   cd        -cdrom cd.iso -boot d: markers and data.bin's hash
#   kernel    -kernel vmlinuz -initrd initramfs-disk.cpio.gz
#             -append "console=ttyS0 libata.force=pio4" -drive file=COPY,format=raw,if=ide
#             (no boot loader): PIO through the command line
#   kernel-cd -kernel vmlinuz -initrd initramfs-cd.cpio.gz
#             -append "console=ttyS0 libata.dma=0" -cdrom cd.iso
#   bench     -kernel vmlinuz -initrd initramfs-disk.cpio.gz
#             -append "console=ttyS0 quern.bench" -drive file=COPY,format=raw,if=ide
#             the init's dd read and write timings (benches/disk.rs), printed as MiB/s
# Always with -accel $ACCEL -m 512 -nographic -no-reboot. The boot loader's lines reach the
# serial port through SeaBIOS's serial console (what -nographic gives under QEMU).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
g="$root/build/guest"
helper="$root/scripts/guest-helper.py"
emu=${EMU:-qemu-system-x86_64}
accel=${ACCEL:-tcg}
timeout_s=${TIMEOUT:-300}

for f in disk.img disk-pio.img disk.layout cd.iso cd.sha256 vmlinuz initramfs-disk.cpio.gz initramfs-cd.cpio.gz; do
    [[ -s "$g/$f" ]] || { echo "missing $g/$f: run scripts/build-test-guest.sh" >&2; exit 1; }
done
command -v qemu-img >/dev/null || { echo "missing qemu-img: install the Debian package qemu-utils" >&2; exit 1; }
# shellcheck source=/dev/null
. "$g/disk.layout"
cd_sha=$(cat "$g/cd.sha256")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

ok() { echo "  ok: $*"; passed=$((passed + 1)); }
bad() { echo "  FAILED: $*"; failed=$((failed + 1)); }
check() { # description command...
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

# boot NAME ARGS...: runs the emulator, its output in $tmp/NAME.log
boot() {
    local name=$1 status=0 start=$SECONDS
    shift
    echo "$name: $emu -accel $accel -m 512 -nographic -no-reboot $*"
    timeout "$timeout_s" "$emu" -accel "$accel" -m 512 -nographic -no-reboot "$@" </dev/null >"$tmp/$name.log" 2>&1 || status=$?
    # SeaBIOS's serial console sends the screen with cursor moves (ESC [ row ; col H) at
    # arbitrary points, even inside a word ("L\r\e[12;02Hoading"): match on the text without
    # the escape sequences and carriage returns.
    sed -E 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1b[c]//g; s/\r//g' "$tmp/$name.log" >"$tmp/$name.txt"
    log="$tmp/$name.txt"
    check "exit status 0 (was $status, $((SECONDS - start)) s)" test "$status" -eq 0
    grep -a 'QUERN-' "$log" | sed 's/^/    /' || true
}
has() { grep -aqE -- "$1" "$log"; }

expect_disk() { # xfer-regex
    check "boot loader marker" has '^QUERN-BOOTLOADER syslinux'
    check "boot loader loaded the kernel" has '^Loading /vmlinuz\.\.\. ok'
    expect_disk_guest "$1"
}
expect_disk_guest() { # xfer-regex
    check "QUERN-DISK-INIT-OK" has '^QUERN-DISK-INIT-OK'
    check "transfer mode $1" has "^QUERN-DISK-XFER $1"
    check "read region hash" has "^QUERN-DISK-SHA $read_sha256"
    check "QUERN-DISK-WRITE-OK" has '^QUERN-DISK-WRITE-OK'
    check "read-back hash" has "^QUERN-DISK-READBACK $write_sha256"
    check "no failure marker" eval "! has QUERN-DISK-FAIL"
}

# only_write_changed RAW: the write region holds the pattern, every other byte is as built
only_write_changed() {
    local img=$1 outside
    check "write region holds the pattern" \
        test "$(python3 "$helper" disk-region "$img" "$write_offset" "$write_length")" = "$write_sha256"
    outside=$(cmp -l "$g/disk.img" "$img" | awk -v lo="$write_offset" -v hi=$((write_offset + write_length)) \
        '$1 - 1 < lo || $1 - 1 >= hi { n++ } END { print n + 0 }' || true)
    check "no byte changed outside the write region ($outside did)" test "$outside" -eq 0
}

case_raw() {
    cp --sparse=always "$g/disk.img" "$tmp/raw.img"
    boot raw -drive file="$tmp/raw.img",format=raw,if=ide
    expect_disk 'XFER_.*DMA'
    only_write_changed "$tmp/raw.img"
}

case_pio() {
    cp --sparse=always "$g/disk-pio.img" "$tmp/pio.img"
    boot pio -drive file="$tmp/pio.img",format=raw,if=ide
    expect_disk 'XFER_PIO'
    check "write region holds the pattern" \
        test "$(python3 "$helper" disk-region "$tmp/pio.img" "$write_offset" "$write_length")" = "$write_sha256"
}

case_qcow2() {
    qemu-img convert -f raw -O qcow2 "$g/disk.img" "$tmp/disk.qcow2"
    boot qcow2 -drive file="$tmp/disk.qcow2",format=qcow2,if=ide
    expect_disk 'XFER_.*DMA'
    check "qemu-img check" qemu-img check -q "$tmp/disk.qcow2"
    qemu-img convert -f qcow2 -O raw "$tmp/disk.qcow2" "$tmp/qcow2.img"
    only_write_changed "$tmp/qcow2.img"
}

case_overlay() {
    cp --sparse=always "$g/disk.img" "$tmp/base.img"
    qemu-img create -q -f qcow2 -b "$tmp/base.img" -F raw "$tmp/overlay.qcow2"
    boot overlay -drive file="$tmp/overlay.qcow2",format=qcow2,if=ide
    expect_disk 'XFER_.*DMA'
    check "qemu-img check" qemu-img check -q "$tmp/overlay.qcow2"
    check "backing file unchanged" cmp -s "$g/disk.img" "$tmp/base.img"
    qemu-img convert -O raw "$tmp/overlay.qcow2" "$tmp/overlay.img"
    only_write_changed "$tmp/overlay.img"
}

case_snapshot() {
    cp --sparse=always "$g/disk.img" "$tmp/snap.img"
    boot snapshot -drive file="$tmp/snap.img",format=raw,if=ide -snapshot
    expect_disk 'XFER_.*DMA'
    check "image unchanged" cmp -s "$g/disk.img" "$tmp/snap.img"
}

case_cd() {
    boot cd -cdrom "$g/cd.iso" -boot d
    check "boot loader marker" has '^QUERN-BOOTLOADER isolinux'
    check "boot loader loaded the kernel" has '^Loading /vmlinuz\.\.\. ok'
    expect_cd_guest 'XFER_.*DMA'
}
expect_cd_guest() { # xfer-regex
    check "QUERN-CD-INIT-OK" has '^QUERN-CD-INIT-OK'
    check "transfer mode $1" has "^QUERN-CD-XFER $1"
    check "data.bin hash" has "^QUERN-CD-SHA $cd_sha"
    check "no failure marker" eval "! has QUERN-CD-FAIL"
}

case_kernel() {
    cp --sparse=always "$g/disk.img" "$tmp/kernel.img"
    boot kernel -kernel "$g/vmlinuz" -initrd "$g/initramfs-disk.cpio.gz" \
        -append "console=ttyS0 libata.force=pio4" -drive file="$tmp/kernel.img",format=raw,if=ide
    expect_disk_guest 'XFER_PIO'
    only_write_changed "$tmp/kernel.img"
}

case_kernel-cd() {
    boot kernel-cd -kernel "$g/vmlinuz" -initrd "$g/initramfs-cd.cpio.gz" \
        -append "console=ttyS0 libata.dma=0" -cdrom "$g/cd.iso"
    expect_cd_guest 'XFER_PIO'
}

case_bench() {
    cp --sparse=always "$g/disk.img" "$tmp/bench.img"
    boot bench -kernel "$g/vmlinuz" -initrd "$g/initramfs-disk.cpio.gz" \
        -append "console=ttyS0 quern.bench" -drive file="$tmp/bench.img",format=raw,if=ide
    check "QUERN-DISK-INIT-OK" has '^QUERN-DISK-INIT-OK'
    check "read timing" has '^QUERN-BENCH disk-read-64M [0-9.]+ [0-9.]+'
    check "write timing" has '^QUERN-BENCH disk-write-64M [0-9.]+ [0-9.]+'
    check "no failure marker" eval "! has QUERN-DISK-FAIL"
    awk '$1 == "QUERN-BENCH" && $4 > $3 { printf "    %s: %.0f MiB/s\n", $2, 64 / ($4 - $3) }' "$log"
}

cases=("$@")
[[ ${#cases[@]} -gt 0 ]] || cases=(raw pio qcow2 overlay snapshot cd kernel kernel-cd bench)
for c in "${cases[@]}"; do
    declare -F "case_$c" >/dev/null || { echo "unknown case $c" >&2; exit 2; }
    "case_$c"
done
echo "check-test-disks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
