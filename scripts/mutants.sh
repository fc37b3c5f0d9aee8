#!/usr/bin/env bash
# Mutation testing of src/core with cargo-mutants: each mutant (an operator
# flipped, a function body replaced by a default, ...) must make the core's
# unit tests or the differential proptest fail. A mutant that survives is a
# behaviour no test pins down: write the test, or, if the mutant cannot
# change behaviour (an equivalent mutant), list it with its reason in
# .cargo/mutants.toml (the scope and that list live there).
#
#   scripts/mutants.sh                 # one shard, chosen from the commit (CI)
#   MUTANTS_DIFF=change.diff scripts/mutants.sh   # the mutants in a diff
#   SHARD=all scripts/mutants.sh       # every mutant: hours on 2 cores
#   SHARD=7 scripts/mutants.sh         # shard 7
#
# CI runs one shard of about MUTANTS_PER_RUN (default 8) mutants, picked
# from the commit hash, so successive commits rotate through all of them.
# Mutants are built in place (cargo-mutants puts each file back after its
# mutant, and on an interrupt), on the target directory the test step built
# with --all-features, and only the two test targets the run needs.
#
# Bounded: each mutant's tests get MUTANTS_TIMEOUT seconds (default 40; a
# mutant that hangs the tests is caught) and the whole run MUTANTS_BUDGET
# seconds (default 330). A run that reaches its budget is interrupted
# cleanly and judged on the mutants it finished.
#
# The test command is the core's unit tests and the differential proptest
# at PROPTEST_CASES (default 250) from a fixed seed, without shrinking.
# Exit status: 0 when every mutant tested was caught, timed out or did not
# build; 2 when one was missed; 1 when the tree was left modified.
set -euo pipefail
cd "$(dirname "$0")/.."

per_run="${MUTANTS_PER_RUN:-8}"
out="${CARGO_TARGET_DIR:-target}/mutants"
mkdir -p "$out"

export PROPTEST_CASES="${PROPTEST_CASES:-250}"
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-1}"
export PROPTEST_MAX_SHRINK_ITERS=0
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1

args=(--in-place --baseline skip --all-features --no-shuffle
  --timeout "${MUTANTS_TIMEOUT:-40}" --build-timeout 240
  --output "$out" -C --lib -C --test=differential)
if [ -n "${MUTANTS_DIFF:-}" ]; then
  echo "mutants: the mutants of src/core in $MUTANTS_DIFF"
  args+=(--in-diff "$MUTANTS_DIFF")
elif [ "${SHARD:-}" = all ]; then
  echo "mutants: every mutant of src/core"
else
  count=$(cargo mutants --list 2>/dev/null | wc -l)
  shards=$(( (count + per_run - 1) / per_run ))
  [ "$shards" -ge 1 ] || shards=1
  if [ -z "${SHARD:-}" ]; then
    if commit="$(git rev-parse HEAD 2>/dev/null)"; then
      SHARD=$(( 0x${commit:0:8} % shards ))
    else
      SHARD=$(( $(cat src/core/*.rs | cksum | cut -d' ' -f1) % shards ))
    fi
  fi
  echo "mutants: shard $SHARD of $shards ($count mutants of src/core, about $per_run per shard)"
  args+=(--shard "$SHARD/$shards" --sharding round-robin)
fi

status=0
timeout --signal=INT --kill-after=60 "${MUTANTS_BUDGET:-330}" \
  cargo mutants "${args[@]}" -- core || status=$?

# cargo-mutants puts the source back even when interrupted; make sure.
if command -v git >/dev/null && git rev-parse --git-dir >/dev/null 2>&1 &&
  ! git diff --quiet -- src/core; then
  echo "mutants: src/core was left modified:" >&2
  git diff --stat -- src/core >&2
  exit 1
fi

missed="$out/mutants.out/missed.txt"
caught=$(cat "$out"/mutants.out/{caught,timeout}.txt 2>/dev/null | wc -l)
missed_n=$(cat "$missed" 2>/dev/null | wc -l)
echo "mutants: score $caught of $((caught + missed_n)) viable mutants tested caught"
if [ -s "$missed" ]; then
  echo "mutants: missed (a test to write, or an equivalent mutant to list in .cargo/mutants.toml):" >&2
  cat "$missed" >&2
  exit 2
fi
case "$status" in
  # 0: all caught; 3: some timed out (a hang is a catch); 124/130: the
  # budget ran out, nothing missed so far.
  0 | 3) echo "mutants: $caught caught" ;;
  124 | 130) echo "mutants: budget reached after $caught mutants, all caught" ;;
  *) exit "$status" ;;
esac
