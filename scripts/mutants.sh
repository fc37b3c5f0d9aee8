#!/usr/bin/env bash
# Mutation testing of src/core with cargo-mutants: each mutant (an operator
# flipped, a function body replaced by a default, ...) must make the core's
# unit tests or the differential proptest fail. A mutant that survives is a
# behaviour no test pins down: write the test, or, if the mutant cannot
# change behaviour (an equivalent mutant), list it with its reason in
# .cargo/mutants.toml.
#
#   scripts/mutants.sh              # one shard, chosen from the commit (CI)
#   SHARD=all scripts/mutants.sh    # every mutant: about an hour on 2 cores
#   SHARD=7 scripts/mutants.sh      # shard 7 of MUTANTS_SHARDS
#
# CI runs one shard of MUTANTS_SHARDS (default 20, about 18 mutants), picked
# from the commit hash, so successive commits rotate through all of them.
# Mutants are built in place (cargo-mutants restores each file after its
# mutant; the tree must not be edited meanwhile), reusing the target
# directory the test step built with --all-features.
#
# The test command is the core's unit tests and the differential proptest
# at PROPTEST_CASES (default 1000) from a fixed seed, without shrinking.
# Exit status: 0 when every mutant was caught, timed out (the tests hung,
# which is a catch) or did not build; 2 when one was missed.
set -euo pipefail
cd "$(dirname "$0")/.."

shards="${MUTANTS_SHARDS:-20}"
if [ -z "${SHARD:-}" ]; then
  if commit="$(git rev-parse HEAD 2>/dev/null)"; then
    SHARD=$(( 0x${commit:0:8} % shards ))
  else
    SHARD=$(( $(cat src/core/*.rs | cksum | cut -d' ' -f1) % shards ))
  fi
fi

export PROPTEST_CASES="${PROPTEST_CASES:-1000}"
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-1}"
export PROPTEST_MAX_SHRINK_ITERS=0
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1

args=(--in-place --baseline skip --timeout "${MUTANTS_TIMEOUT:-30}"
  --output "${CARGO_TARGET_DIR:-target}")
if [ "$SHARD" = all ]; then
  echo "mutants: every mutant of src/core"
else
  echo "mutants: shard $SHARD of $shards of src/core"
  args+=(--shard "$SHARD/$shards" --sharding round-robin)
fi

status=0
cargo mutants "${args[@]}" -- --lib --test differential core || status=$?
# cargo-mutants: 2 = a mutant survived, 3 = some timed out (and none survived).
case "$status" in
  0 | 3) exit 0 ;;
  2) echo "mutants: a mutant survived: see mutants.out/missed.txt above" >&2; exit 2 ;;
  *) exit "$status" ;;
esac
