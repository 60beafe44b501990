#!/usr/bin/env bash
# Passes the tests: installs the Debian packages the tests use (as root; otherwise it
# names what is missing), builds the Debian test guest, disks and firmware (cached),
# then runs every test of the workspace in release mode (one build; the guest boots
# need the speed).
set -euo pipefail
cd "$(dirname "$0")/.."
# QEMU to compare against, qemu-img/qemu-io for images, iasl for the ACPI tables, what
# the guest, disk and CD builders use, and libvirt (tests/libvirt.rs drives quern with it).
packages=(ca-certificates python3 xz-utils cpio file qemu-system-x86 qemu-utils acpica-tools
    fdisk dosfstools mtools syslinux syslinux-common isolinux xorriso
    pkg-config libslirp-dev libglib2.0-dev ipxe-qemu iproute2 libvirt-daemon-system libvirt-clients)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
need_packages test.sh "${packages[@]}" || echo "test.sh: tests that need them will fail or say NOT RUN" >&2
# Python's QMP client (PyPI's qemu.qmp), for tests/qmp.rs (which says NOT RUN without it).
python3 -c "import qemu.qmp" 2>/dev/null || python3 -m pip install --quiet qemu.qmp 2>/dev/null ||
    echo "test.sh: could not install qemu.qmp from PyPI: the QMP client test will say NOT RUN" >&2
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
scripts/build-test-guest.sh >/dev/null
cargo fmt --all --check
# The differential test also records the host CPU's outcomes, for the aarch64 build's
# run of the same cases (scripts/test-aarch64.sh).
QUERN_DIFF_RECORD="$PWD/target/diff-record/default.bin" cargo test --workspace --release "$@"
# The differential cases again with SSE and x87 in the interpreter: the path a backend
# without vector and x87 code (a new host's first) takes.
QUERN_TCG_INTERPRET=sse,x87 cargo test --release -p quern --test differential
# The aarch64 host build, cross-compiled and run under qemu-user.
scripts/test-aarch64.sh
