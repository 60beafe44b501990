#!/usr/bin/env bash
# Passes the tests: builds the Debian test guest (cached), then runs every test of the
# workspace in release mode (one build; the guest boots need the speed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-test-guest.sh
cargo fmt --all --check
cargo test --workspace --release "$@"
