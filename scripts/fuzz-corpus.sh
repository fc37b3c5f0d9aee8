#!/usr/bin/env bash
# Grows and minimises the committed fuzz corpora (fuzz/corpus/TARGET), so
# that each fuzzing run, CI's included, starts where the last one stopped.
#
#   scripts/fuzz-corpus.sh                  # every target, 300 s each
#   FUZZ_SECONDS=3600 scripts/fuzz-corpus.sh core_vs_model
#
# For each target: fuzz from the committed corpus for FUZZ_SECONDS, then
# `cargo fuzz cmin` keeps the smallest set of inputs with the same coverage.
# Commit the result (`git add fuzz/corpus`). A crash stops the script with
# the reproducer in fuzz/artifacts/TARGET; fix it before committing.
# Uses only the stable toolchain (RUSTC_BOOTSTRAP=1, as .ci/run does).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
seconds="${FUZZ_SECONDS:-300}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  before=$(find "corpus/$target" -type f | wc -l)
  echo "=== $target: $before inputs, fuzzing ${seconds}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 2>&1 | tail -n 3
  RUSTC_BOOTSTRAP=1 cargo fuzz cmin "$target" 2>&1 | tail -n 2
  after=$(find "corpus/$target" -type f | wc -l)
  size=$(du -sh "corpus/$target" | cut -f1)
  echo "=== $target: $before -> $after inputs ($size)"
done
