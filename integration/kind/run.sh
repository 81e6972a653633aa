#!/usr/bin/env bash
# Palisade on a real Kubernetes cluster made by kind: build the image, load it, install
# Palisade from conf/, wait for every node and agent to be ready, run the upstream
# NetworkPolicy e2e suite, then Palisade's own scenarios (palisade-scenarios kube), and
# collect logs on failure.
#
# usage: integration/kind/run.sh [ipv4|dualstack]
# needs: docker (a running engine), kind, kubectl, cargo (builds palisade-scenarios on the
#   host), and for the upstream suite its e2e binary:
#   E2E_TEST=/path/to/e2e.test  (from kubernetes-test-linux-amd64.tar.gz of the cluster's version)
# env:   KEEP_CLUSTER=1 keeps the cluster afterwards; E2E_FOCUS overrides the ginkgo focus;
#        E2E_SKIP the skip regex; ARTIFACTS (default ./_artifacts) receives logs;
#        SKIP_SCENARIOS=1 skips the scenarios; SCENARIO_FAMILIES (default: v4 for ipv4,
#        "v4 v6" for dualstack) the families they probe; AGNHOST_IMAGE the probe image.
set -euo pipefail

variant=${1:-ipv4}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
config=$here/kind-$variant.yaml
[ -f "$config" ] || { echo "unknown variant $variant (ipv4|dualstack)" >&2; exit 2; }
cluster=$(awk '/^name:/{print $2}' "$config")
# The tag conf/ pins (kustomization.yaml's images: entry): the image built here is the one
# the DaemonSet names, and IfNotPresent finds it on the nodes after `kind load`.
image=palisade/palisade:$("$root/image/version.sh")
artifacts=${ARTIFACTS:-$PWD/_artifacts}
focus=${E2E_FOCUS:-\[sig-network\].*Netpol}
# Upstream marks tests of features an implementation may lack; Palisade implements them
# all, so only the serial/disruptive ones are skipped by default.
skip=${E2E_SKIP:-\[Serial\]|\[Disruptive\]}
case $variant in
  dualstack) families=${SCENARIO_FAMILIES:-v4 v6} ;;
  *) families=${SCENARIO_FAMILIES:-v4} ;;
esac

need() { command -v "$1" >/dev/null || { echo "missing: $1 ($2)" >&2; exit 2; }; }
need docker "a container engine to build and run kind nodes"
need kind "https://kind.sigs.k8s.io"
need kubectl "the Kubernetes client"
docker info >/dev/null 2>&1 || { echo "docker is installed but no engine answers" >&2; exit 2; }
[ "${SKIP_SCENARIOS:-}" = 1 ] || need cargo "builds palisade-scenarios (or set SKIP_SCENARIOS=1)"

collect_logs() {
  mkdir -p "$artifacts"
  kind export logs "$artifacts/kind-logs" --name "$cluster" || true
  kubectl -n palisade-system logs -l app.kubernetes.io/name=palisade-agent --all-containers \
    --prefix --tail=-1 > "$artifacts/palisade-agent.log" 2>&1 || true
  kubectl get pods -A -o wide > "$artifacts/pods.txt" 2>&1 || true
  kubectl get networkpolicies -A -o yaml > "$artifacts/networkpolicies.yaml" 2>&1 || true
  kubectl get clusternetworkpolicies -o yaml > "$artifacts/clusternetworkpolicies.yaml" 2>&1 || true
  echo "logs collected in $artifacts" >&2
}
cleanup() {
  rc=$?
  [ $rc -ne 0 ] && collect_logs
  [ "${KEEP_CLUSTER:-}" = 1 ] || kind delete cluster --name "$cluster" || true
  exit $rc
}
trap cleanup EXIT

if [ "${SKIP_SCENARIOS:-}" != 1 ]; then
  # Before the cluster exists: a build failure should not cost a cluster.
  echo "== building palisade-scenarios"
  (cd "$root" && cargo build --release --quiet -p palisade-integration --bin palisade-scenarios)
fi

echo "== building $image"
docker build -t "$image" "$root"

echo "== creating kind cluster $cluster ($variant)"
kind create cluster --config "$config" --wait 0s
kind load docker-image "$image" --name "$cluster"

echo "== installing Palisade"
kubectl apply -k "$root/conf"
kubectl -n palisade-system rollout status daemonset/palisade-agent --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s
kubectl wait --for=condition=Ready pods --all -n kube-system --timeout=300s

# What the netns cluster cannot show: the agents' metrics reached on the nodes' port through
# the API server, and palisadectl in an agent pod reading that node's debug socket.
echo "== operator checks: metrics, palisadectl in the agent pod"
version=$("$root/image/version.sh")
for pod in $(kubectl -n palisade-system get pods -l app.kubernetes.io/name=palisade-agent \
               -o jsonpath='{.items[*].metadata.name}'); do
  metrics=$(kubectl get --raw "/api/v1/namespaces/palisade-system/pods/${pod}:9464/proxy/metrics")
  grep -q "^palisade_build_info{version=\"$version\"" <<<"$metrics" ||
    { echo "$pod: no palisade_build_info for $version on its metrics port" >&2; exit 1; }
  kubectl -n palisade-system exec "$pod" -c agent -- palisadectl status >/dev/null ||
    { echo "$pod: palisadectl status in the agent container failed" >&2; exit 1; }
done

if [ -n "${E2E_TEST:-}" ]; then
  echo "== upstream NetworkPolicy e2e: focus '$focus'"
  mkdir -p "$artifacts"
  "$E2E_TEST" --kubeconfig="${KUBECONFIG:-$HOME/.kube/config}" --provider=skeleton \
    --ginkgo.focus="$focus" --ginkgo.skip="$skip" --ginkgo.v \
    --report-dir="$artifacts" 2>&1 | tee "$artifacts/e2e.log"
else
  echo "E2E_TEST not set: skipping the upstream e2e suite (see integration/kind/README.md)" >&2
fi

# Palisade's own scenario files, the ones the netns cluster runs (integration/run-scenarios),
# on this cluster: namespaces with the scenarios' names, agnhost pods, probes by kubectl exec.
if [ "${SKIP_SCENARIOS:-}" = 1 ]; then
  echo "SKIP_SCENARIOS=1: skipping Palisade's scenarios" >&2
else
  scenarios=${CARGO_TARGET_DIR:-$root/target}/release/palisade-scenarios
  image_args=()
  [ -z "${AGNHOST_IMAGE:-}" ] || image_args=(--image "$AGNHOST_IMAGE")
  mkdir -p "$artifacts"
  failed=""
  for family in $families; do
    echo "== Palisade scenarios over $family"
    # Every family runs even if one fails; the script fails at the end.
    "$scenarios" kube --context "kind-$cluster" --family "$family" "${image_args[@]}" \
      "$root/integration/scenarios" 2>&1 | tee "$artifacts/scenarios-$family.log" \
      || failed="$failed $family"
  done
  if [ -n "$failed" ]; then
    echo "scenarios failed over:$failed (see $artifacts/scenarios-*.log)" >&2
    exit 1
  fi
fi
echo "== done: Palisade installed; the upstream suite and the scenarios as reported above"
