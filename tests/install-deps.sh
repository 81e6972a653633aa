#!/usr/bin/env bash
# Install what Palisade needs on a fresh Debian 12 machine (as root). Idempotent: skips what
# is already there.
#
#   tests/install-deps.sh          everything the tests need (tests/run-all.sh runs this)
#   tests/install-deps.sh --demo   only what `bash integration/demo` needs (it runs this)
#   ... --demo --image             and what image mode needs (`integration/demo --image`)
#
# What cannot be installed is reported before anything else happens, one line per missing
# thing saying what it is and how to get it, and the script exits 1: a caller stops there
# instead of building for minutes and failing at the end.
set -euo pipefail
mode=all
image=
for arg in "$@"; do
  case $arg in
    --demo) mode=demo ;;
    --image) image=1 ;;
    *) echo "usage: $0 [--demo [--image]]" >&2; exit 2 ;;
  esac
done

# Debian packages, each with what it is for. The demo's: a netns cluster with real agents.
declare -A why=(
  [nftables]="nft, with which the agents program their nftables table"
  [iproute2]="ip, with which the netns cluster builds its namespaces and links"
  [conntrack]="conntrack, for the hostPort tests"
  [iperf3]="iperf3, for the datapath benchmark"
  [containernetworking-plugins]="the reference CNI plugins the CNI tests compare against"
  [busybox-static]="busybox, for the kernel tests' pings and the container images"
  [tcpdump]="tcpdump, for debugging kernel tests"
  [jq]="jq, for the scripts' JSON"
  [podman]="podman, a real runtime calling the CNI plugin, and image mode's container runtime"
  [runc]="runc, the OCI runtime of podman and containerd"
  [containerd]="containerd, a real runtime calling the CNI plugin"
  [umoci]="umoci, which packs the test images"
  [catatonit]="catatonit, podman's init"
  [shellcheck]="shellcheck, for the kind scripts"
  [python3-venv]="python3 -m venv, for the Kubernetes schema validator"
  [graphviz]="Graphviz' dot, which draws palisadectl reach -o svg in its test"
)
demo_pkgs=(nftables iproute2)
test_pkgs=(conntrack iperf3 containernetworking-plugins busybox-static tcpdump jq podman runc
           containerd umoci catatonit shellcheck python3-venv graphviz)
if [ "$mode" = demo ]; then pkgs=("${demo_pkgs[@]}"); else pkgs=("${demo_pkgs[@]}" "${test_pkgs[@]}"); fi
# Image mode runs the nodes' containers with podman and runc.
if [ "$mode" = demo ] && [ -n "$image" ]; then pkgs+=(podman runc); fi

problems=()
if [ "$(id -u)" != 0 ]; then
  problems+=("not root: Palisade's netns cluster creates network namespaces; run this as root (sudo)")
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ] && [ ${#problems[@]} -eq 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v apt-get >/dev/null; then
    failure="this system has no apt-get"
  elif ! apt-get update -qq; then
    failure="apt-get update failed (see above)"
  elif ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    failure="apt-get install failed (see above)"
  else
    failure=""
  fi
  still=()
  for p in "${missing[@]}"; do installed "$p" || still+=("$p"); done
  missing=("${still[@]}")
fi
for p in "${missing[@]}"; do
  problems+=("missing package $p (${why[$p]}): install it with \`apt-get install $p\` (Debian 12)${failure:+; here: $failure}")
done

# Neither comes from Debian 12's archive at a version this project can use.
command -v cargo >/dev/null ||
  problems+=("missing cargo (builds Palisade): install a Rust toolchain with rustup (Debian 12's cargo is too old)")
if [ "$mode" = demo ]; then
  command -v kubectl >/dev/null ||
    problems+=("missing kubectl (the demo applies its policies with it): install the kubectl package from the Kubernetes apt repository (see Kubernetes' 'Install Tools' docs), or put a kubectl binary in PATH")
fi

if [ ${#problems[@]} -gt 0 ]; then
  for line in "${problems[@]}"; do echo "palisade: $line" >&2; done
  exit 1
fi
[ "$mode" = demo ] && exit 0

# Installing containerd/podman may start their services: tests start their own private
# instances in network namespaces, so stop system ones that would only compete.
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl stop containerd.service 2>/dev/null || true
fi
# The fuzz targets (fuzz/, tests/run-all.sh's fuzz stage): cargo-fuzz, pinned, built from
# crates.io, and the nightly toolchain it needs (rustup's, as the machine has stable and
# nightly; AddressSanitizer ships with it).
cargo_fuzz_version=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
  cargo install --locked "cargo-fuzz@$cargo_fuzz_version"
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install --profile minimal nightly
# A real Kubernetes schema validator for conf/ (ships its schemas: works offline).
venv=${PALISADE_VENV:-/opt/palisade-venv}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi
command -v kubectl >/dev/null || echo "note: kubectl not found; the kubectl tests will fail" >&2
