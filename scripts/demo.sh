#!/usr/bin/env bash
# Boots the demo guest: Debian's stock kernel with a busybox shell initramfs on the
# serial console. Ctrl-A x quits. Extra arguments go to quern (e.g. -accel kvm).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-test-guest.sh
cargo build --release --quiet
exec target/release/quern -m 512 -nographic \
    -kernel build/guest/vmlinuz -initrd build/guest/initramfs-shell.cpio.gz \
    -append "console=ttyS0 quiet" "$@"
