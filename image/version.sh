#!/usr/bin/env bash
# Print Palisade's version: the workspace's [workspace.package] version in Cargo.toml. The
# image is tagged with it (palisade/palisade:VERSION), conf/ pins it (kustomization.yaml's
# images: entry and the DaemonSets), and the binaries report it (--version,
# palisade_build_info); integration/tests/conf_manifests.rs keeps them equal.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
awk '
  /^\[/ { section = $0 }
  section == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; found = 1; exit }
  END { if (!found) exit 1 }
' "$root/Cargo.toml"
