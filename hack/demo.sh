#!/usr/bin/env bash
# hack/demo.sh: the whole product on a real single-node Kubernetes cluster, from nothing.
#   1. set-up (cached): the control plane, kubelet, containerd, kube-router, the tools
#   2. a real node (hack/node.sh up): pods run, NetworkPolicy is enforced
#   3. the project's images, built from the release binaries and imported (no registry)
#   4. helm install: the operator runs as its Deployment, its webhook behind its Service
#   5. kubectl apply deploy/examples/statefulset-cluster.yaml: three members start with the
#      sidecar injected
#   6. from pods on the pod network: a client session with each member, members talking
#      on the private port, a non-member pod rejected there by the NetworkPolicy and served
#      on the client port; from the node (which the policy admits): a stranger's key
#      refused by the sidecar itself
# Options: --keep leaves it running (stop with: hack/demo.sh --down). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=demo
BIN=target/release

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '  $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; }
run() { printf '  $ %s\n' "$*"; }

if [ "${1:-}" = "--down" ]; then exec hack/node.sh down; fi
KEEP=false
[ "${1:-}" = "--keep" ] && KEEP=true
[ "$(id -u)" = 0 ] || { echo "hack/demo.sh runs a kubelet and containerd: run it as root" >&2; exit 1; }

say "set-up (cached after the first run)"
hack/setup.sh

say "a real node: etcd, kube-apiserver, controller-manager, scheduler, kubelet, containerd, kube-proxy, kube-router"
$KEEP || trap 'hack/node.sh down >/dev/null 2>&1' EXIT
hack/node.sh up >/dev/null
eval "$(hack/node.sh env)"
show kubectl get nodes -o wide

say "the images, from the release binaries (no registry, no container engine)"
hack/node.sh images 2>&1 | grep -E '^  /|^ghcr' | sed 's/^ */    /'

say "helm install xlattice charts/xlattice-operator (default values)"
run "helm install xlattice charts/xlattice-operator -n xlattice-system --create-namespace --wait"
helm install xlattice charts/xlattice-operator -n xlattice-system --create-namespace --wait --timeout 120s >/dev/null
show kubectl -n xlattice-system get deploy,pods,svc
show kubectl get mutatingwebhookconfiguration xlattice-sidecar-injector \
  -o 'jsonpath={.webhooks[0].clientConfig.service}{"\n"}'

say "a bad cluster is refused with the field named"
kubectl create namespace "$NS" >/dev/null
sed 's/clientPort: 8000/clientPort: 7000/' deploy/examples/statefulset-cluster.yaml |
  awk '/^---/{exit} {print}' >/tmp/xlattice-demo-bad.yaml
show kubectl apply -n "$NS" -f /tmp/xlattice-demo-bad.yaml || true

say "kubectl apply -f deploy/examples/statefulset-cluster.yaml: three members"
show kubectl apply -n "$NS" -f deploy/examples/statefulset-cluster.yaml
kubectl -n "$NS" rollout status statefulset/store --timeout=180s >/dev/null
kubectl -n "$NS" wait xlatticecluster/store --for=condition=Ready --timeout=120s >/dev/null
show kubectl -n "$NS" get pods -o wide
printf '  injected into store-0 by the webhook: %s\n' \
  "$(kubectl -n $NS get pod store-0 -o jsonpath='{range .spec.initContainers[*]}{.name} (restartPolicy {.restartPolicy}) {end}')"
show kubectl -n "$NS" get xlatticecluster store
show kubectl -n "$NS" get secrets,configmaps,networkpolicy,services -l xlattice.io/cluster=store

say "a client pod opens an encrypted session with each member (deploy/examples/client-job.yaml)"
show kubectl apply -n "$NS" -f deploy/examples/client-job.yaml
kubectl -n "$NS" wait job/store-client --for=condition=Complete --timeout=120s >/dev/null
show kubectl -n "$NS" logs -l job-name=store-client --prefix

say "through the client Service: whichever member it reaches relays to the one addressed"
svc=$(kubectl -n "$NS" get service store -o 'jsonpath={.spec.clusterIP}')
run "xlattice-operator directory store -n $NS > directory.yaml"
"$BIN/xlattice-operator" directory store -n "$NS" >/tmp/xlattice-demo-directory.yaml
# kube-proxy programs the Service once its endpoints are ready: give it up to 30 s.
for _ in $(seq 1 60); do
  echo hi | "$BIN/xlattice" connect store-0 --directory /tmp/xlattice-demo-directory.yaml \
    --address "$svc:8000" --timeout 2s >/dev/null 2>&1 && break
  sleep 0.5
done
for i in 0 1 2; do
  run "echo hi | xlattice connect store-$i --directory directory.yaml --address $svc:8000"
  echo hi | "$BIN/xlattice" connect "store-$i" --directory /tmp/xlattice-demo-directory.yaml \
    --address "$svc:8000" | sed 's/^/    /'
done

say "members talk on the private port, through their own sidecars (HTTP CONNECT on 127.0.0.1:15001)"
for pair in "0 1" "1 2" "2 0"; do
  # shellcheck disable=SC2086 # split on purpose: the pair's two numbers
  set -- $pair
  show kubectl -n "$NS" exec "store-$1" -c app -- member_app hello "store-$2" "hi from store-$1"
done

say "a pod that is not a member: the NetworkPolicy rejects it on the cluster port (kube-router rejects the connection), the client port is open"
kubectl -n "$NS" run outsider --image=ghcr.io/xlattice/xlattice-member-app:0.1.0 \
  --overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":65532}}}' -- serve >/dev/null
kubectl -n "$NS" wait pod/outsider --for=condition=Ready --timeout=60s >/dev/null
ip1=$(kubectl -n "$NS" get pod store-1 -o 'jsonpath={.status.podIP}')
for port in 7000 8000; do
  run "kubectl -n $NS exec outsider -- member_app probe $ip1:$port"
  kubectl -n "$NS" exec outsider -- member_app probe "$ip1:$port" 2>/dev/null | sed 's/^/    /' || true
done
printf '    (a member reaches the same port: %s)\n' \
  "$(kubectl -n "$NS" exec store-0 -c app -- member_app probe "$ip1:7000")"

say "the sidecar refuses what the policy admits: the node itself, with a valid key pair that is not a member's"
"$BIN/xlattice" keygen --out /tmp/xlattice-demo-stranger >/dev/null
run "echo 'let me in' | xlattice connect store-1 --port cluster --identity-dir stranger"
echo "let me in" | "$BIN/xlattice" connect store-1 --port cluster --identity-dir /tmp/xlattice-demo-stranger \
  --directory /tmp/xlattice-demo-directory.yaml --timeout 5s 2>&1 | sed 's/^/    /' || true
run "echo 'just a client' | xlattice connect store-1 --port client"
echo "just a client" | "$BIN/xlattice" connect store-1 --directory /tmp/xlattice-demo-directory.yaml | sed 's/^/    /'
printf '  store-1 sidecar metrics:\n'
curl -fsS "http://$ip1:15090/metrics" | grep '^xlattice_sidecar_handshakes_total' | sed 's/^/    /'
rm -rf /tmp/xlattice-demo-stranger /tmp/xlattice-demo-bad.yaml /tmp/xlattice-demo-directory.yaml

say "done"
if $KEEP; then
  echo "  the node is still running: eval \"\$(hack/node.sh env)\"; stop with hack/demo.sh --down"
else
  echo "  tearing the node down (run with --keep to leave it running)"
fi
