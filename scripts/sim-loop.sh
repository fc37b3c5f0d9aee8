#!/usr/bin/env bash
# Runs the deterministic simulator (src/sim) on successive seeds until
# stopped (Ctrl-C) or until a seed fails; the failure prints the command
# that replays it exactly.
#
#   scripts/sim-loop.sh [FIRST_SEED] [-- extra dflockd-sim options]
#   scripts/sim-loop.sh [FIRST_SEED] -- --cluster   # the simulated 3-member cluster
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-$(date +%s)}"
shift || true
[ "${1:-}" = "--" ] && shift
cargo build --release --features sim --bin dflockd-sim
bin="${CARGO_TARGET_DIR:-target}/release/dflockd-sim"
batch=200
while true; do
  "$bin" --seeds "$seed..$((seed + batch))" --quiet "$@"
  seed=$((seed + batch))
done
