#!/usr/bin/env bash
# Sets up this machine and runs every test: unit and property tests, data-plane
# fixtures (BPF_PROG_TEST_RUN) and the namespace lab end-to-end tests.
# Run as root: the fixtures and the lab need it (in CI nothing is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
