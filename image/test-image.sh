#!/usr/bin/env bash
# Build Palisade's image as an OCI layout (image/build-oci.sh) and run its entry points from
# the image's own file tree, the way the DaemonSet does, inside a network namespace made
# here (nothing is configured in the root network namespace):
#   - the plugin is static and answers VERSION;
#   - nft from the image runs;
#   - `palisade-agent install-cni` reads the Node from a kube API stand-in and writes the
#     plugin and the conflist atomically into the "host" directories;
#   - `palisade-agent run` becomes ready and programs table inet palisade, reports its
#     version on the metrics port, and palisadectl reads its debug socket;
#   - `palisade-agent uninstall` leaves no file or table behind.
# The whole DaemonSet, as conf/ ships it, runs on every node of the netns cluster in image
# mode (integration/run-scenarios --image); this is the quick check of the entry points.
# usage: image/test-image.sh WORK_DIR
# env: PALISADE_IMAGE_OUT=DIR tests what `image/build-oci.sh DIR` made instead of building.
set -euo pipefail
work=${1:?usage: test-image.sh WORK_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$work"
work=$(cd "$work" && pwd)
ns=palimg$$
rootfs=$work/rootfs
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "image test FAILED: $*" >&2; exit 1; }
pass=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }

version=$("$root/image/version.sh")
out=${PALISADE_IMAGE_OUT:-}
if [ -z "$out" ]; then
  bash "$root/image/build-oci.sh" "$work"
  out=$work
else
  # The tests below write into the file tree: work on a copy.
  cp -a "$out/rootfs" "$rootfs"
fi
umoci ls --layout "$out/oci" | grep -qx "palisade-$version" || fail "OCI layout lacks palisade-$version"
umoci stat --image "$out/oci:palisade-$version" >/dev/null || fail "umoci stat"
ok "OCI layout $out/oci has palisade-$version (the workspace version)"

# Run a command inside the test netns, chrooted into the image tree, with /proc and the
# device nodes and links every OCI runtime provides (/dev/null, zero, random, urandom,
# fd, stdin, stdout, stderr: nft -f - opens /dev/stdin) mounted in a
# private mount namespace (so nothing is mounted on the host).
in_image() {
  # shellcheck disable=SC2016 # "$0" and "$@" expand in the inner shell
  ip netns exec "$ns" unshare -m sh -c '
    mount -t proc proc "$0/proc" && mount -t tmpfs -o mode=755 dev "$0/dev" &&
    mknod -m 666 "$0/dev/null" c 1 3 && mknod -m 666 "$0/dev/zero" c 1 5 &&
    mknod -m 666 "$0/dev/random" c 1 8 && mknod -m 666 "$0/dev/urandom" c 1 9 &&
    ln -s /proc/self/fd "$0/dev/fd" && ln -s /proc/self/fd/0 "$0/dev/stdin" &&
    ln -s /proc/self/fd/1 "$0/dev/stdout" && ln -s /proc/self/fd/2 "$0/dev/stderr" &&
    exec chroot "$0" "$@"' "$rootfs" "$@"
}
mkdir -p "$rootfs/proc" "$rootfs/dev" "$rootfs/host/opt/cni/bin" "$rootfs/host/etc/cni/net.d"
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
# The node's link with its InternalIP: install-cni measures the pods' MTU on it (a veth
# pair inside the netns: the kernels this runs on may lack the dummy module).
ip netns exec "$ns" ip link add node0 mtu 1500 type veth peer name node0-peer mtu 1500
ip netns exec "$ns" ip addr add 192.0.2.11/24 dev node0
ip netns exec "$ns" ip link set node0 up
ip netns exec "$ns" ip link set node0-peer up

file_out=$(ldd "$rootfs/usr/local/bin/palisade" 2>&1 || true)
case $file_out in *"not a dynamic executable"*|*"statically linked"*) ;; *) fail "plugin is not static: $file_out" ;; esac
ver=$(echo '{"cniVersion":"1.1.0"}' | CNI_COMMAND=VERSION in_image /usr/local/bin/palisade)
echo "$ver" | grep -q '"1.1.0"' || fail "plugin VERSION: $ver"
ok "static plugin answers VERSION: $ver"

in_image /usr/sbin/nft --version | grep -q nftables || fail "nft from the image does not run"
ok "nft from the image runs"
for tool in ip tc iptables; do
  for d in /usr/sbin /sbin /usr/bin /bin; do
    [ ! -e "$rootfs$d/$tool" ] || fail "the image has $d/$tool: the agent must not depend on it"
  done
done
ok "the image has no ip, tc or iptables (the agent programs routes over netlink)"

# A kube API stand-in inside the netns, with a Node that has pod CIDRs.
ip netns exec "$ns" "$target/release/palisade-apiserver" --listen 127.0.0.1:0 \
  --kubeconfig-out "$rootfs/tmp/kubeconfig" >"$work/apiserver.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -s "$rootfs/tmp/kubeconfig" ] && break; sleep 0.1; done
[ -s "$rootfs/tmp/kubeconfig" ] || fail "API stand-in did not start: $(cat "$work/apiserver.log")"
kc() { ip netns exec "$ns" kubectl --kubeconfig "$rootfs/tmp/kubeconfig" "$@"; }
kc create -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 192.0.2.11}]}
YAML

# The conflist template, exactly as the ConfigMap generated from conf/config/ mounts it.
mkdir -p "$rootfs/etc/palisade"
cp "$root/conf/config/conflist.template" "$rootfs/etc/palisade/conflist.template"

in_image /usr/local/bin/palisade-agent install-cni --node-name node-1 \
  --kubeconfig /tmp/kubeconfig --cni-bin-dir /host/opt/cni/bin --cni-conf-dir /host/etc/cni/net.d \
  --template /etc/palisade/conflist.template --plugin-binary /usr/local/bin/palisade \
  --overlay always
conflist=$rootfs/host/etc/cni/net.d/10-palisade.conflist
[ -x "$rootfs/host/opt/cni/bin/palisade" ] || fail "install-cni did not install the plugin"
jq -e '.plugins[0].ipam.ranges == [[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]' \
  "$conflist" >/dev/null || fail "conflist ranges: $(cat "$conflist")"
# 1500 on node0 less VXLAN over IPv4 (50).
jq -e '.plugins[0].mtu == 1450' "$conflist" >/dev/null || fail "conflist mtu: $(cat "$conflist")"
[ "$(ls -A "$rootfs/host/etc/cni/net.d")" = 10-palisade.conflist ] || fail "temp files left in net.d"
ok "install-cni wrote the plugin and the dual-stack conflist with the overlay's MTU"

# A second node on this node's segment (a veth pair inside the test namespace carries the
# node's address): the agent must route node-2's pod CIDR via its InternalIP.
ip -n "$ns" link add seg0 type veth peer name seg1
ip -n "$ns" addr add 192.0.2.11/24 dev seg0
ip -n "$ns" link set seg0 up
ip -n "$ns" link set seg1 up
kc create -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.244.2.0/24, podCIDRs: [10.244.2.0/24]}
status: {addresses: [{type: InternalIP, address: 192.0.2.12}]}
YAML

in_image /usr/local/bin/palisade-agent run --node-name node-1 --kubeconfig /tmp/kubeconfig \
  --cni-socket /run/palisade/agent.sock --metrics-listen 127.0.0.1:9464 \
  >"$work/agent.log" 2>&1 &
pids+=($!)
ready=no
for _ in $(seq 100); do
  if ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464 && printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && head -1 <&3' 2>/dev/null | grep -q " 200"; then
    ready=yes; break
  fi
  sleep 0.2
done
[ $ready = yes ] || fail "agent from the image never became ready: $(tail -20 "$work/agent.log")"
ip netns exec "$ns" nft list table inet palisade >/dev/null || fail "agent did not program inet palisade"
ok "palisade-agent run from the image is ready and programmed inet palisade"
route=
for _ in $(seq 50); do
  route=$(ip -n "$ns" route show 10.244.2.0/24)
  case $route in *"via 192.0.2.12"*"proto 180"*) break ;; esac
  sleep 0.1
done
case $route in *"via 192.0.2.12"*"proto 180"*) ;; *) fail "no route to node-2's pod CIDR: '$route'; $(tail -5 "$work/agent.log")" ;; esac
ok "the agent from the image routes node-2's pod CIDR: $route"
# The metrics listener says which version runs; palisadectl from the image reads the agent's
# debug socket (the default path, as on a node) and the table.
metrics=$(ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3')
grep -q "^palisade_build_info{version=\"$version\"" <<<"$metrics" ||
  fail "no palisade_build_info for $version in: $(grep build_info <<<"$metrics")"
status=$(in_image /usr/local/bin/palisadectl status --color never) || fail "palisadectl status: $status"
grep -q "^ready  *yes" <<<"$status" || fail "palisadectl status: $status"
ok "the image's palisadectl reads the agent's debug socket; metrics name version $version"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

in_image /usr/local/bin/palisade-agent uninstall --cni-bin-dir /host/opt/cni/bin \
  --cni-conf-dir /host/etc/cni/net.d
left=$(find "$rootfs/host/etc/cni/net.d" "$rootfs/host/opt/cni/bin" -mindepth 1)
[ -z "$left" ] || fail "uninstall left files: $left"
if ip netns exec "$ns" nft list table inet palisade >/dev/null 2>&1; then fail "uninstall left the table"; fi
ok "uninstall left no file and no table"

echo "image: $pass passed, 0 failed"
