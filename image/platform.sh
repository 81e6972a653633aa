# shellcheck shell=sh
# Sourced with a Docker platform architecture in TARGETARCH (amd64 or arm64; what buildx sets
# for `--platform linux/ARCH`; plain sh's `.` passes no arguments): sets what the
# build needs for that platform, so neither the Dockerfile nor image/build-oci.sh names one.
#   RUST_TARGET    the Rust target triple        (x86_64-unknown-linux-gnu, aarch64-...)
#   GNU_TRIPLE     Debian's multiarch triple      (x86_64-linux-gnu, aarch64-linux-gnu)
#   DEB_ARCH       Debian's architecture name     (amd64, arm64)
# and, for a cross build, the C compiler and linker cargo and ring's build script use.
# usage: TARGETARCH=arm64; . image/platform.sh
case "${TARGETARCH:-}" in
  amd64 | x86_64) RUST_TARGET=x86_64-unknown-linux-gnu GNU_TRIPLE=x86_64-linux-gnu DEB_ARCH=amd64 ;;
  arm64 | aarch64) RUST_TARGET=aarch64-unknown-linux-gnu GNU_TRIPLE=aarch64-linux-gnu DEB_ARCH=arm64 ;;
  *) echo "platform.sh: unsupported TARGETARCH '${TARGETARCH:-}' (amd64 or arm64)" >&2; exit 1 ;;
esac
export RUST_TARGET GNU_TRIPLE DEB_ARCH
# POSIX sh (the Dockerfile's RUN): no bash substitutions.
if [ "$(uname -m)" != "${RUST_TARGET%%-*}" ]; then
  export "CARGO_TARGET_$(echo "$RUST_TARGET" | tr 'a-z-' 'A-Z_')_LINKER=$GNU_TRIPLE-gcc"
  export "CC_$(echo "$RUST_TARGET" | tr - _)=$GNU_TRIPLE-gcc"
fi
