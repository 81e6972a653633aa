#!/usr/bin/env bash
# Assemble Palisade's image without a container engine: the same file tree as ./Dockerfile,
# packed into an OCI image layout with umoci (Debian package), so CI can test the image's
# contents where no Docker runs.
#
# usage: image/build-oci.sh OUT_DIR [TAG]
#   OUT_DIR/oci      the OCI layout (image "palisade-TAG"; TAG defaults to the workspace
#                    version, image/version.sh, which conf/ pins)
#   OUT_DIR/rootfs   an unpacked copy of the image's file tree (for tests)
# env: CARGO_TARGET_DIR (default target/), SKIP_BUILD=1 to reuse built binaries.
# It builds for this machine's platform only (it takes nft from the host); the Dockerfile
# builds amd64 and arm64.
set -euo pipefail
out=${1:?usage: build-oci.sh OUT_DIR [TAG]}
root=$(cd "$(dirname "$0")/.." && pwd)
tag=${2:-$("$root/image/version.sh")}
target=${CARGO_TARGET_DIR:-$root/target}
host=$(rustc -vV | sed -n 's/^host: //p')

if [ "${SKIP_BUILD:-}" != 1 ]; then
  # Static plugin: it runs on the node against the node's libc.
  (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile plugin \
      --target "$host" -p palisade-cni --bin palisade)
  (cd "$root" && cargo build --release -p palisade-policy --bin palisade-agent --bin palisadectl)
fi

rm -rf "$out/oci" "$out/bundle" "$out/rootfs"
mkdir -p "$out"
umoci init --layout "$out/oci"
umoci new --image "$out/oci:palisade-$tag"
umoci unpack --rootless --image "$out/oci:palisade-$tag" "$out/bundle" >/dev/null
rootfs=$out/bundle/rootfs

install -D -m 0755 "$target/$host/plugin/palisade" "$rootfs/usr/local/bin/palisade"
install -D -m 0755 "$target/release/palisadectl" "$rootfs/usr/local/bin/palisadectl"
for f in "$root"/conf/config/*; do
  install -D -m 0644 "$f" "$rootfs/usr/share/palisade/config/$(basename "$f")"
done

# nft, the agent's dataplane tool, with every library it and the dynamically linked agent
# load (the Dockerfile takes the same from Debian's nftables package, by the same script).
"$root/image/copy-with-libs.sh" "$rootfs" "$(command -v nft)"
"$root/image/copy-with-libs.sh" "$rootfs" "$target/release/palisade-agent" /usr/local/bin/palisade-agent
# nft reads /etc/iproute2 tables and resolves protocol/service names from these.
for f in /etc/protocols /etc/services; do install -D -m 0644 "$f" "$rootfs$f"; done
# The kube client's TLS verifier loads the system roots even when the kubeconfig names its
# own CA (as the Dockerfile, from Debian's ca-certificates).
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$rootfs/etc/palisade" "$rootfs/run/palisade" "$rootfs/tmp"

umoci repack --image "$out/oci:palisade-$tag" "$out/bundle" >/dev/null
umoci config --image "$out/oci:palisade-$tag" \
  --config.entrypoint /usr/local/bin/palisade-agent --config.user 65534:65534 >/dev/null
cp -a "$rootfs" "$out/rootfs"
rm -rf "$out/bundle"
echo "OCI layout: $out/oci (palisade-$tag); file tree: $out/rootfs"
