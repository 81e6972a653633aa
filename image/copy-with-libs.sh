#!/usr/bin/env bash
# Copy a dynamically linked binary into an image's file tree with every shared library it
# loads (as ldd lists them, for the platform the binary is built for), so the Dockerfile and
# image/build-oci.sh take nft and its libraries the same way without naming a library path.
# usage: image/copy-with-libs.sh ROOTFS BINARY [DEST_IN_ROOTFS]
set -euo pipefail
rootfs=${1:?usage: copy-with-libs.sh ROOTFS BINARY [DEST]}
bin=${2:?usage: copy-with-libs.sh ROOTFS BINARY [DEST]}
dest=${3:-$bin}
install -D -m 0755 "$bin" "$rootfs$dest"
for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^[[:space:]]*\/lib/{print $1}'); do
  [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
