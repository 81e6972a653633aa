#!/usr/bin/env bash
# Install what Palisade's tests and demo need on a fresh Debian 12 machine (as root).
# Idempotent: skips what is already there.
set -euo pipefail
pkgs=(nftables conntrack iproute2 iperf3 containernetworking-plugins busybox-static tcpdump
      jq podman runc containerd umoci catatonit shellcheck python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Installing containerd/podman may start their services: tests start their own private
# instances in network namespaces, so stop system ones that would only compete.
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl stop containerd.service 2>/dev/null || true
fi
# A real Kubernetes schema validator for conf/ (ships its schemas: works offline).
venv=${PALISADE_VENV:-/opt/palisade-venv}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi
command -v kubectl >/dev/null || echo "note: kubectl not found; the kubectl tests will fail" >&2
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }
