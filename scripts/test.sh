#!/usr/bin/env bash
# Sets up this machine and runs every test: unit and property tests, data-plane
# fixtures (BPF_PROG_TEST_RUN) and the namespace lab end-to-end tests.
# Run as root: the fixtures and the lab need it (in CI nothing is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

# The upgrade test's second pnlb, its XDP program built from other sources
# (crates/pnlb/tests/lab_restart.rs): built first, and copied aside, as cargo
# test then links the release build's pnlb in its place.
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet -p pnlb --bin pnlb --features upgrade-variant
cp "$target/debug/pnlb" "$target/debug/pnlb-upgrade-variant"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
