#!/usr/bin/env bash
# Assemble Palisade's image without a container engine: the same file tree as ./Dockerfile,
# packed into an OCI image layout with umoci (Debian package), so CI can test the image's
# contents where no Docker runs.
#
# usage: image/build-oci.sh OUT_DIR [TAG]
#   OUT_DIR/oci      the OCI layout (image "palisade:TAG")
#   OUT_DIR/rootfs   an unpacked copy of the image's file tree (for tests)
# env: CARGO_TARGET_DIR (default target/), SKIP_BUILD=1 to reuse built binaries.
set -euo pipefail
out=${1:?usage: build-oci.sh OUT_DIR [TAG]}
tag=${2:-dev}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
host=$(rustc -vV | sed -n 's/^host: //p')

if [ "${SKIP_BUILD:-}" != 1 ]; then
  # Static plugin: it runs on the node against the node's libc.
  (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
      --target "$host" -p palisade-cni --bin palisade)
  (cd "$root" && cargo build --release -p palisade-policy --bin palisade-agent --bin palisadectl)
fi

rm -rf "$out/oci" "$out/bundle" "$out/rootfs"
mkdir -p "$out"
umoci init --layout "$out/oci"
umoci new --image "$out/oci:palisade-$tag"
umoci unpack --rootless --image "$out/oci:palisade-$tag" "$out/bundle" >/dev/null
rootfs=$out/bundle/rootfs

install -D -m 0755 "$target/$host/release/palisade" "$rootfs/usr/local/bin/palisade"
install -D -m 0755 "$target/release/palisade-agent" "$rootfs/usr/local/bin/palisade-agent"
install -D -m 0755 "$target/release/palisadectl" "$rootfs/usr/local/bin/palisadectl"
install -D -m 0644 "$root/conf/20-configmap.yaml" "$rootfs/usr/share/palisade/configmap.yaml"

# nft, the agent's dataplane tool, with every library it and the dynamically linked agent
# load (the Dockerfile takes the same from Debian's nftables package).
copy_with_libs() {
  local bin=$1 dest=${2:-$1} lib
  install -D -m 0755 "$bin" "$rootfs$dest"
  for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^[[:space:]]*\/lib/{print $1}'); do
    [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}
copy_with_libs "$(command -v nft)"
copy_with_libs "$target/release/palisade-agent" /usr/local/bin/palisade-agent
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
