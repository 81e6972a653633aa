#!/usr/bin/env bash
# Palisade's whole test suite, as CI runs it (root, fresh Debian 12 machine):
#   1. dependencies (tests/install-deps.sh)
#   2. rustfmt and clippy -D warnings
#   3. cargo test --workspace: unit, property, golden, kernel (network namespaces), real
#      runtimes (podman, containerd), the kube API stand-in with kubectl, manifests
#   3b. every fuzz target built and run for 30 s over its committed corpus (fuzz/smoke.sh)
#   4. the image assembled as an OCI layout (once) and its entry points run
#   5. the kind integration scripts checked (bash -n, shellcheck)
#   6. every scenario on the netns cluster, four at a time, in IPv4 and in IPv6; then on the
#      two-subnets topology (nodes behind a router that knows no pod CIDR): IPv4 with overlay
#      cross-subnet and IPv6 with overlay always
#   7. every scenario in image mode, IPv6: each node runs the image under conf/'s DaemonSet,
#      as kubelet would start it (the same binaries as the native runner, started the way an
#      operator's cluster starts them)
# Each stage prints its own summary; the last line is the scenario runner's "N passed, M failed".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
stage() { printf '\n===== %s (%s)\n' "$1" "$(date +%T)"; }

stage "dependencies"
bash tests/install-deps.sh
export PATH="${PALISADE_VENV:-/opt/palisade-venv}/bin:$PATH"

stage "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "release binaries"
cargo build --release --locked --bins
export PALISADE_BIN_DIR=$root/target/release PALISADE_BIN=$root/target/release/palisade
# The scenario stages use the binaries just built: integration/run-scenarios would otherwise
# build its own package set again (other feature unification: about 3 minutes on 2 cores).
export PALISADE_NO_BUILD=1

stage "cargo test"
cargo test --workspace --locked -- --test-threads=4

stage "fuzz targets (each for 30 s over its committed corpus)"
# Built apart from the workspace (nightly, sanitizer flags): see fuzz/README.md.
bash fuzz/smoke.sh

stage "manifests"
# What `kubectl apply -k conf` creates (the generated ConfigMap included), and the uninstall
# DaemonSet.
rendered=$(mktemp /tmp/palisade-conf.XXXXXX.yaml)
kubectl kustomize conf >"$rendered"
kubernetes-validate --strict --quiet "$rendered" conf/uninstall/*.yaml
rm -f "$rendered"

stage "image (OCI layout)"
image_out=$(mktemp -d /tmp/palisade-image.XXXXXX)
trap 'rm -rf "$image_out"' EXIT
bash image/build-oci.sh "$image_out"
PALISADE_IMAGE_OUT=$image_out bash image/test-image.sh "$(mktemp -d /tmp/palisade-image-test.XXXXXX)"

stage "kind integration scripts"
for f in integration/kind/*.sh; do bash -n "$f"; shellcheck "$f"; done
echo "kind scripts: syntax and shellcheck clean"

# The project's scenarios, and the shared samples in the same format, which must run
# unchanged: ../shared/<folder> when this checkout sits beside it, else the copies in
# integration/shared-samples (a clean clone on a fresh machine).
shared_samples() {
  local d
  for d in "$@"; do
    if [ -d "../shared/$d" ]; then echo "../shared/$d"; else echo "integration/shared-samples/$d"; fi
  done
}
mapfile -t samples < <(shared_samples scenarios-sample scenarios-sample-cnp scenarios-sample-external)
scenarios=(integration/scenarios "${samples[@]}")
# Four scenarios at a time, each on its own cluster: a scenario mostly waits (agents
# starting, a blocked probe's timeout, the kernel tearing namespaces down), so on this
# 2-core machine four at once took the whole set from 368 s to 111 s (IPv4, load 6), and
# every stage below can run the whole set.
jobs=(--jobs 4)
stage "scenarios, IPv4"
integration/run-scenarios --family v4 "${jobs[@]}" "${scenarios[@]}"
stage "scenarios, IPv6"
integration/run-scenarios --family v6 "${jobs[@]}" "${scenarios[@]}"
# Two subnets behind a router with no route to any pod CIDR: pod traffic across it crosses
# only inside VXLAN (scenario 70, run in every stage, shows it cannot cross without). IPv4
# pods over the IPv4 underlay with cross-subnet, IPv6 pods over the IPv6 underlay with
# always.
stage "scenarios, IPv4, two subnets, overlay cross-subnet"
integration/run-scenarios --family v4 "${jobs[@]}" --topology two-subnets \
  --overlay cross-subnet "${scenarios[@]}"
stage "scenarios, IPv6, two subnets, overlay always"
integration/run-scenarios --family v6 "${jobs[@]}" --topology two-subnets \
  --overlay always "${scenarios[@]}"
# Image mode: the image built above, started on every node as conf/'s DaemonSet says, on the
# whole scenario set (IPv6: in-cluster API access over IPv6 is covered too); the two-subnets
# overlay scenarios (70-72) get their overlay through the ConfigMap there.
stage "scenarios, IPv6, image mode (the image under conf/'s DaemonSet on every node)"
integration/run-scenarios --family v6 "${jobs[@]}" --image "$image_out/oci" "${scenarios[@]}"
