# syntax=docker/dockerfile:1
# Palisade's image: palisade (CNI plugin, static, copied onto the node by the install init
# container), palisade-agent, palisadectl and the nft binary the agent runs. Tagged with the
# workspace version (image/version.sh), which conf/ pins:
#
#   docker build -t palisade/palisade:$(image/version.sh) .                  # this machine's platform
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t REGISTRY/palisade/palisade:$(image/version.sh) --push .             # both, one manifest list
#
# BuildKit (docker's default builder since 23.0, and buildx) sets BUILDPLATFORM and
# TARGETARCH. The Rust stage runs on the build machine's platform and cross-compiles to the
# requested one (TARGETARCH, amd64 or arm64; image/platform.sh maps it), which is far faster
# than compiling under emulation. The other stages are the requested platform's own Debian,
# so nft and its libraries are that platform's, found by ldd rather than by a hard-coded
# library path (image/copy-with-libs.sh).
#
# Where no container engine runs (CI here), image/build-oci.sh assembles the same file tree
# into an OCI layout with umoci and tests its entry points; keep the two in step.

FROM --platform=$BUILDPLATFORM rust:1-bookworm AS build
ARG TARGETARCH
WORKDIR /src
COPY image/platform.sh image/platform.sh
# A cross build needs the target's C compiler and libc (ring's C code, the static plugin).
RUN . image/platform.sh \
 && if [ "$(uname -m)" != "${RUST_TARGET%%-*}" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends "gcc-$GNU_TRIPLE" "libc6-dev-$DEB_ARCH-cross" \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && rustup target add "$RUST_TARGET"
COPY . .
# The plugin runs on the node, outside the image, against whatever libc the node has:
# link it statically (it does no NSS lookups, so static glibc is safe). With --target,
# RUSTFLAGS reach the target's code only, not build scripts.
ARG PALISADE_GIT_REVISION=unknown
RUN . image/platform.sh \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile plugin --locked \
        --target "$RUST_TARGET" -p palisade-cni --bin palisade \
 && PALISADE_GIT_REVISION="$PALISADE_GIT_REVISION" cargo build --release --locked \
        --target "$RUST_TARGET" -p palisade-policy --bin palisade-agent --bin palisadectl \
 && mkdir -p /out \
 && cp "target/$RUST_TARGET/plugin/palisade" "target/$RUST_TARGET/release/palisade-agent" \
       "target/$RUST_TARGET/release/palisadectl" /out/

FROM debian:bookworm-slim AS nft
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY image/copy-with-libs.sh /usr/local/bin/copy-with-libs.sh
# nft and the libraries it links (libnftables, libmnl, libnftnl, libjansson, libgmp, ...).
RUN copy-with-libs.sh /nft-root /usr/sbin/nft

FROM debian:bookworm-slim
COPY --from=nft /nft-root/ /
# The kube client's TLS verifier loads the system roots even when the kubeconfig (or the
# in-cluster service account) names its own CA; without a bundle it refuses to start.
COPY --from=nft /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/ /usr/local/bin/
# The settings and conflist template conf/ installs as the palisade-config ConfigMap, for
# reference and for running the agent outside Kubernetes.
COPY conf/config/ /usr/share/palisade/config/
# The DaemonSet sets runAsUser per container (root only where a capability needs it).
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/palisade-agent"]
