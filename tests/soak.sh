#!/usr/bin/env bash
# The soak run (not in CI): a netns cluster with its agents under pod churn through the CNI
# plugin (some ADDs SIGKILLed mid-way), random policy and label changes, agents SIGKILLed and
# restarted, the API stand-in restarted and answering 410 Expired now and then, while
# long-lived TCP connections and a probe matrix run; then it prints its figures (leaks, the
# programmed table against a fresh compile, probe mismatches with the reference evaluator,
# dropped connections, agent memory growth) and fails if any is non-zero or false.
#
#   tests/soak.sh [--duration 30m] [--nodes 3] [--seed N] [--family v4|v6] [-v]
#
# Needs root. The seed is printed first: run again with --seed N to replay the same choices.
# More options: palisade-soak --help.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
if [ -z "${PALISADE_NO_BUILD:-}" ]; then
  (cd "$root" && cargo build --release --quiet \
     -p palisade-cni -p palisade-policy -p palisade-integration \
     --bin palisade --bin palisade-agent --bin palisade-testpod --bin palisade-soak) >&2
fi
exec "$target/release/palisade-soak" "$@"
