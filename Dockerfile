# Palisade's image: palisade (CNI plugin, static, copied onto the node by the install init
# container), palisade-agent, palisadectl and the nft binary the agent runs.
#
#   docker build -t palisade/palisade:dev .
#
# Where no container engine runs (CI here), image/build-oci.sh assembles the same file tree
# into an OCI layout with umoci and tests its entry points; keep the two in step.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The plugin runs on the node, outside the image, against whatever libc the node has:
# link it statically (it does no NSS lookups, so static glibc is safe).
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
        --target x86_64-unknown-linux-gnu -p palisade-cni --bin palisade \
 && cargo build --release --locked -p palisade-policy --bin palisade-agent --bin palisadectl

FROM debian:bookworm-slim AS nft
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM debian:bookworm-slim
# nft and the libraries it links (libnftables, libmnl, libnftnl, libjansson, libgmp, ...).
COPY --from=nft /usr/sbin/nft /usr/sbin/nft
COPY --from=nft /usr/lib/x86_64-linux-gnu/ /usr/lib/x86_64-linux-gnu/
# The kube client's TLS verifier loads the system roots even when the kubeconfig (or the
# in-cluster service account) names its own CA; without a bundle it refuses to start.
COPY --from=nft /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/palisade /usr/local/bin/palisade
COPY --from=build /src/target/release/palisade-agent /usr/local/bin/palisade-agent
COPY --from=build /src/target/release/palisadectl /usr/local/bin/palisadectl
COPY conf/20-configmap.yaml /usr/share/palisade/configmap.yaml
# The DaemonSet sets runAsUser per container (root only where a capability needs it).
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/palisade-agent"]
