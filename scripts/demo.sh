#!/usr/bin/env bash
# Boots the demo guest: Debian's stock kernel with a busybox shell initramfs on the
# serial console, on two vCPUs. Ctrl-A x quits. Extra arguments go to quern (e.g. -accel tcg).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# To build quern: pkg-config and libslirp's headers (the user-mode network).
need_packages demo.sh pkg-config libslirp-dev libglib2.0-dev
scripts/build-test-guest.sh
cargo build --release --quiet
accel=tcg
# Hardware KVM (not kvm_pvm, which cannot run the stock kernel: docs/kvm-pvm.md).
if [ -w /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ]; then accel=kvm; fi
exec target/release/quern -accel "$accel" -smp 2 -m 512 -nographic \
    -kernel build/guest/vmlinuz -initrd build/guest/initramfs-shell.cpio.gz \
    -append "console=ttyS0" "$@"
