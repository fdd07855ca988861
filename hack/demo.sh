#!/usr/bin/env bash
# hack/demo.sh: the whole product on one machine, from nothing.
#   1. builds/fetches a real control plane (kube-apiserver + etcd, cached) and the binaries
#   2. installs the chart (CRD, RBAC, webhook configuration) into a loopback API server
#   3. runs the operator as its own ServiceAccount (there is no kubelet to run its pod)
#   4. applies an XLatticeCluster and three member pods; the webhook injects the sidecar
#   5. stands in for a kubelet: gives the pods loopback IPs, mounts their Secrets and
#      the directory shards as files, and runs each member's sidecar and app locally
#   6. shows a client session with every member, members talking on the private port,
#      and an outsider refused there
# Options: --keep leaves everything running (stop with: hack/demo.sh --down)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=${XLATTICE_DEMO_DIR:-/tmp/xlattice-demo}
CP=$DEMO/control-plane
NS=demo
WEBHOOK_PORT=${XLATTICE_DEMO_WEBHOOK_PORT:-19443}
BIN=$ROOT/target/release

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '  $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; }

stop_all() {
  if [ -d "$DEMO/pids" ]; then
    for pid in "$DEMO"/pids/*; do [ -e "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  fi
  hack/control-plane.sh down "$CP" >/dev/null 2>&1 || true
}

if [ "${1:-}" = "--down" ]; then stop_all; rm -rf "$DEMO"; exit 0; fi
KEEP=false
[ "${1:-}" = "--keep" ] && KEEP=true

say "set-up (cached after the first run)"
hack/setup.sh
cargo build --release --quiet -p xlattice-operator -p xlattice-sidecar

stop_all
rm -rf "$DEMO"
mkdir -p "$DEMO/pids" "$DEMO/logs"
$KEEP || trap stop_all EXIT

say "control plane: kube-apiserver + etcd on 127.0.0.1"
hack/control-plane.sh up "$CP" >/dev/null
eval "$(hack/control-plane.sh env "$CP")"
show kubectl version

say "helm install xlattice charts/xlattice-operator"
kubectl create namespace xlattice-system >/dev/null
helm install xlattice charts/xlattice-operator --namespace xlattice-system \
  --set webhook.url="https://127.0.0.1:$WEBHOOK_PORT/mutate-pods" \
  --set sidecar.image.repository=xlattice-sidecar --set sidecar.image.tag=dev >/dev/null
show kubectl get crd xlatticeclusters.xlattice.io
show kubectl get mutatingwebhookconfiguration xlattice-sidecar-injector

say "operator: runs as its ServiceAccount (least-privilege RBAC from the chart)"
token=$(kubectl -n xlattice-system create token xlattice-operator --duration=2h)
server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
cat >"$DEMO/operator.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: operator, user: {token: "$token"}}]
contexts: [{name: operator, context: {cluster: demo, user: operator}}]
current-context: operator
KUBECONFIG
KUBECONFIG=$DEMO/operator.kubeconfig POD_NAME=demo-operator RUST_LOG=info \
  setsid "$BIN/xlattice-operator" run --namespace xlattice-system \
  --metrics-addr 127.0.0.1:18080 --webhook-addr "127.0.0.1:$WEBHOOK_PORT" \
  --sidecar-image xlattice-sidecar:dev >"$DEMO/logs/operator.log" 2>&1 &
echo $! >"$DEMO/pids/operator"
for _ in $(seq 120); do
  curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS http://127.0.0.1:18080/readyz >/dev/null || { tail -20 "$DEMO/logs/operator.log"; exit 1; }
echo "    operator ready (log: $DEMO/logs/operator.log)"

say "a bad cluster is refused with the field named"
kubectl create namespace "$NS" >/dev/null
sed 's/clientPort: 8000/clientPort: 7000/' hack/demo/cluster.yaml >"$DEMO/bad-cluster.yaml"
show kubectl apply -f "$DEMO/bad-cluster.yaml" || true

say "kubectl apply: the XLatticeCluster and three member pods"
show kubectl apply -f hack/demo/cluster.yaml
show kubectl apply -f hack/demo/pods.yaml
printf '  injected by the webhook into store-0: %s\n' \
  "$(kubectl -n $NS get pod store-0 -o jsonpath='{range .spec.initContainers[*]}{.name} (restartPolicy {.restartPolicy}) {end}')"

say "standing in for the kubelet: pod IPs 127.0.0.11-13"
for i in 0 1 2; do
  kubectl -n $NS patch pod "store-$i" --subresource=status --type=merge \
    -p "{\"status\":{\"phase\":\"Running\",\"podIP\":\"127.0.0.1$((i + 1))\",\"podIPs\":[{\"ip\":\"127.0.0.1$((i + 1))\"}]}}" >/dev/null
done
kubectl -n $NS wait xlatticecluster/store --for=condition=Ready --timeout=120s >/dev/null
show kubectl -n $NS get xlatticecluster store
show kubectl -n $NS get secrets -l xlattice.io/cluster=store
show kubectl -n $NS get networkpolicy,services
show kubectl -n $NS get configmaps -l xlattice.io/cluster=store

# The kubelet would mount these; read them back from the API server into files.
mount_volumes() {
  local i=$1 dir=$DEMO/store-$1
  mkdir -p "$dir/identity" "$dir/directory"
  for key in node-id sk.pem ck.pem; do
    kubectl -n $NS get secret "xlattice-id-store-$i" -o "jsonpath={.data.${key//./\\.}}" | base64 -d >"$dir/identity/$key.tmp"
    chmod 600 "$dir/identity/$key.tmp"
    mv "$dir/identity/$key.tmp" "$dir/identity/$key"
  done
  # The directory's shards, side by side, as the webhook's projected volume lays them out.
  local cm
  for cm in $(kubectl -n $NS get xlatticecluster store -o 'jsonpath={.status.directoryConfigMaps[*]}'); do
    kubectl -n $NS get configmap "$cm" -o 'jsonpath={.data.directory\.yaml}' >"$dir/directory/.$cm.tmp"
    mv "$dir/directory/.$cm.tmp" "$dir/directory/shard-${cm##*-}.yaml"
  done
}

say "members: each runs its app and its sidecar on its own loopback address"
for i in 0 1 2; do
  ip=127.0.0.1$((i + 1))
  mount_volumes $i
  setsid python3 hack/demo/app.py "store-$i" "$ip" 17000 18000 >"$DEMO/logs/app-$i.log" 2>&1 &
  echo $! >"$DEMO/pids/app-$i"
  XLATTICE_LOG=info setsid "$BIN/xlattice" run \
    --identity-dir "$DEMO/store-$i/identity" --directory "$DEMO/store-$i/directory" \
    --listen-host "$ip" --cluster-port 7000 --client-port 8000 \
    --cluster-upstream "$ip:17000" --client-upstream "$ip:18000" \
    --connect-listen "$ip:15001" --admin-listen "$ip:15090" >"$DEMO/logs/sidecar-$i.log" 2>&1 &
  echo $! >"$DEMO/pids/sidecar-$i"
done
for i in 0 1 2; do
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1$((i + 1)):15090/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  printf '  store-%s  NodeID %s  sidecar on 127.0.0.1%s:7000 (cluster) :8000 (client)\n' \
    "$i" "$(cat "$DEMO/store-$i/identity/node-id")" "$((i + 1))"
done

say "a client opens an encrypted session on the client port of each member"
printf '  $ xlattice-operator directory store -n %s > directory.yaml   # every shard, merged\n' "$NS"
"$BIN/xlattice-operator" directory store -n $NS >"$DEMO/directory.yaml"
for i in 0 1 2; do
  printf '  $ echo "hello" | xlattice connect store-%s --directory directory.yaml\n' "$i"
  echo "hello" | "$BIN/xlattice" connect "store-$i" --directory "$DEMO/directory.yaml" | sed 's/^/    /'
done
# A load-balanced address (the client Service) can land on any member; the one it lands
# on relays the session, unopened, to the member it is addressed to.
printf '  $ echo "through another member" | xlattice connect store-0 --address 127.0.0.13:8000   # store-2 relays\n'
echo "through another member" | "$BIN/xlattice" connect store-0 --directory "$DEMO/directory.yaml" \
  --address 127.0.0.13:8000 | sed 's/^/    /'

say "members talk to each other on the private port (through their own sidecars)"
for pair in "0 1" "1 2" "2 0"; do
  set -- $pair
  printf '  store-%s -> CONNECT store-%s:7000 via its sidecar at 127.0.0.1%s:15001\n' "$1" "$2" "$(($1 + 1))"
  python3 hack/demo/peer.py "127.0.0.1$(($1 + 1)):15001" "store-$2" 7000 "hello from store-$1" | sed 's/^/    /'
done

say "an outsider with a valid key pair is refused on the private port, served on the client port"
"$BIN/xlattice" keygen --out "$DEMO/outsider" >/dev/null
printf '  $ echo "let me in" | xlattice connect store-1 --port cluster --identity-dir outsider\n'
echo "let me in" | "$BIN/xlattice" connect store-1 --port cluster --identity-dir "$DEMO/outsider" \
  --directory "$DEMO/directory.yaml" 2>&1 | sed 's/^/    /' || true
printf '  $ echo "just a client" | xlattice connect store-1 --port client\n'
echo "just a client" | "$BIN/xlattice" connect store-1 --directory "$DEMO/directory.yaml" | sed 's/^/    /'
printf '  store-1 sidecar metrics:\n'
curl -fsS http://127.0.0.12:15090/metrics | grep '^xlattice_sidecar_handshakes_total' | sed 's/^/    /'

say "done"
if $KEEP; then
  echo "  everything is still running: export KUBECONFIG=$CP/kubeconfig; stop with hack/demo.sh --down"
else
  echo "  stopping (run with --keep to leave it running)"
fi
