#!/bin/sh
# Benchmark palisade against Debian's reference ptp + host-local (+ portmap), side by side.
# Needs root (network namespaces) and /usr/lib/cni (Debian's containernetworking-plugins).
# Prints medians, p99 and palisade/reference ratios next to the targets; about 1-3 minutes.
set -eu
cd "$(dirname "$0")/../.."
exec cargo test --release -p palisade-cni --test bench_cni -- --ignored --nocapture --test-threads 1 "$@"
