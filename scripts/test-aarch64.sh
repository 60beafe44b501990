#!/usr/bin/env bash
# The aarch64 host build (x86 guests on ARM hosts), without ARM hardware: cross-built
# with Debian's aarch64 toolchain and run under QEMU's user-mode emulator
# (.cargo/config.toml names both). Builds the whole program, runs the host-neutral
# crates' tests (core, devices, block, machine-pc), the JIT's unit tests, the
# differential cases against outcomes recorded on this x86-64 host, the guest programs,
# Multiboot kernels, random code and the stock kernel's boot under the JIT's aarch64
# backend (the same checks as on x86-64, QEMU's results included), and checks what the
# aarch64 binary refuses.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
need_packages test-aarch64.sh "${packages[@]}"
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

# Without the user-mode network: libslirp's aarch64 build is not installed for the
# cross toolchain (a native aarch64 build links Debian's libslirp like x86-64's).
cargo build --target "$target" --release --no-default-features --workspace
cargo test --target "$target" --release --no-default-features -p quern-core -p quern-devices -p quern-block -p quern-machine-pc -p quern-net
# The JIT's unit tests (their comparisons with the host CPU are x86-64-only; the rest
# run, the JIT compared with the interpreter where they compared both with the host).
cargo test --target "$target" --release --no-default-features -p quern-tcg

# The differential cases, compared with the host CPU's outcomes recorded on x86-64 (this
# machine): scripts/test.sh records them in its main run; recorded again here when
# missing or older than the generator.
record=target/diff-record/default.bin
if [[ ! -f $record ]] || [[ -n $(find tests/diff tests/differential.rs -newer "$record") ]]; then
    QUERN_DIFF_RECORD="$PWD/$record" cargo test --release -p quern --test differential
fi
QUERN_DIFF_RECORDED="$PWD/$record" cargo test --target "$target" --release --no-default-features -p quern --test differential
# The tests start the quern binary: through the emulator too.
export QUERN_TEST_WRAP="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Everything runs some 20 times slower under the emulator: the random-code runs' limit
# on how long a kicked vCPU may take to stop grows as much.
export QUERN_TEST_SLOWDOWN=20
cargo test --target "$target" --release --no-default-features -p quern --test guest_programs --test multiboot_tcg --test random_code --test smp_guest
# The stock kernel to the init marker and power-off, entered both ways: its
# uncompressed vmlinux through PVH, and the bzImage through its own decompressor
# (about 40 s and 55 s under the emulator here).
start=$(date +%s)
cargo test --target "$target" --release --no-default-features -p quern --test linux_boot -- --exact stock_vmlinux_pvh_on_tcg \
    stock_bzimage_on_tcg
echo "test-aarch64.sh: the stock kernel (vmlinux through PVH, and the bzImage) booted to the init marker and" \
    "powered off in $(($(date +%s) - start)) s under qemu-aarch64"
unset QUERN_TEST_WRAP QUERN_TEST_SLOWDOWN

# The binary runs under qemu-aarch64 and refuses what this host cannot do, by name.
bin="target/$target/release/quern"
run() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" "$@" 2>&1; }
expect() {
    local want=$1
    shift
    local out
    out=$(run "$@" || true)
    if ! grep -qF -- "$want" <<<"$out"; then
        echo "test-aarch64.sh: 'quern $*' printed: $out (expected: $want)" >&2
        exit 1
    fi
}
expect "quern emulator version" --version
expect "KVM runs guests of the host's own architecture" -accel kvm -nographic
echo "NOT RUN (aarch64): the JIT unit tests' comparisons with the host CPU (x86-64 only; the differential" \
    "cases above compare with its recorded outcomes)"
