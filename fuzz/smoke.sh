#!/usr/bin/env bash
# CI's fuzz stage (tests/run-all.sh): build every fuzz target once, then run each for
# ${PALISADE_FUZZ_SECONDS:-30} s over its committed corpus, two at a time (the machine has
# two cores). New inputs go to a scratch directory, so the committed corpus is read, never
# changed. A crash, a leak or a timeout fails the stage: libFuzzer exits non-zero and leaves
# the input in fuzz/artifacts/<target>/ (see fuzz/README.md, "A crash").
set -euo pipefail
cd "$(dirname "$0")"
seconds=${PALISADE_FUZZ_SECONDS:-30}
scratch=$(mktemp -d /tmp/palisade-fuzz-smoke.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# CI builds the targets unoptimised and without AddressSanitizer (debug assertions and
# overflow checks stay on): the ASan release build that the long runs use took 1246 s to
# build from scratch against 341 s for this one on the same loaded 2-core machine, and a
# 30 s smoke run gains little from either (the long runs, fuzz/README.md, use the default).
flags=(--dev --sanitizer none)
start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz build: $(($(date +%s) - start)) s"

mapfile -t targets < <(cargo +nightly fuzz list)
run() {
  local t=$1
  mkdir -p "$scratch/$t" "$scratch/tmp-$t"
  # -timeout: one input slower than 10 s is a finding, as in the long runs. TMPDIR: the
  # per-input directories of cni_input live in the scratch dir, so an input that
  # -max_total_time interrupts leaves nothing behind in /tmp.
  if TMPDIR="$scratch/tmp-$t" cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1; then
    echo "fuzz $t: ok, $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$') execs, $(grep -o 'cov: [0-9]*' "$scratch/$t.log" | tail -1)"
  else
    tail -n 60 "$scratch/$t.log"
    echo "fuzz $t: FAILED (input in fuzz/artifacts/$t/)"
    return 1
  fi
}
failed=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do
    run "$t" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
done
echo "fuzz stage: $(($(date +%s) - start)) s"
exit $failed
