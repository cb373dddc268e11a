#!/usr/bin/env bash
# Sets up this machine and runs the lab demo: a VIP in Direct Routing mode
# balancing real HTTP requests over three nginx servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --quiet --bin pnlb --bin pnlb-lab
exec target/debug/pnlb-lab demo
