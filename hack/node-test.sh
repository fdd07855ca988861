#!/usr/bin/env bash
# hack/node-test.sh: end-to-end tests on the real node, run by hack/test.sh after
# `hack/node.sh up` and `hack/node.sh images`. Each check is what a user relies on:
#
#   - the chart installs with its default images; the operator runs as its Deployment
#     (in-cluster config, leader election, webhook reached through its Service)
#   - the StatefulSet example starts injected; a member Job talks to a peer from its first
#     instruction (the native sidecar is ready before the app starts) and completes
#   - identities reach the pods through the projected Secret and directory shards, and the
#     sidecars serve with them (the client Job example); the memory limit reaches the
#     sidecar through the Downward API
#   - NetworkPolicy enforced: a non-member cannot open a TCP connection to the cluster
#     port, members can; any pod reaches the client port until spec.clientAccess says
#     otherwise; the node (admitted by the policy) is refused by the sidecar itself
#   - restartWorkloads rolls a running StatefulSet and Deployment into injected pods
#   - key rotation reaches the running sidecar through the Secret volume: a session opened
#     before keeps working, new sessions need the new keys, no pod restarts
#   - a deleted member's key is refused by the survivors (time measured and printed)
#   - `kubectl xlattice check` passes on the healthy install (NetworkPolicy probe included)
#     and names each failure made on purpose: kube-router frozen, the operator scaled to
#     zero, a sidecar stuck behind its pod's stamp, a running pod labelled into the cluster
#     without the sidecar, a drifted CRD; the operator renews a webhook certificate that
#     fell due while it was away; `kubectl xlattice directory` and `connect` reach the members
#   - post-quantum: sidecars injected with postQuantum Disabled (version 1 only, as old ones)
#     and a new member with the default talk both ways (classical, counted); rolled, they
#     talk hybrid; under Required a version 1 client is refused
#   - fips (XLATTICE_NODE_FIPS=1, after `hack/node.sh images --fips`): the chart's fips=true
#     runs the operator and the sidecars it injects on the FIPS module (each says so), members
#     talk, and a non-FIPS sidecar told to require FIPS exits before it serves
#   - the operator pod killed: its Deployment brings it back, no identity changes
#   - reinstalled from the plain manifests (kubectl apply -f deploy/): the identities carry
#     over, and a StatefulSet pod that comes back gets the NodeID it had
#
# Prints "  ok   ..." / "  FAIL ..." per check (hack/test.sh counts them); exit 1 on any FAIL.
# Needs: eval "$(hack/node.sh env)"; target/release/xlattice (the host plays the node).
set -euo pipefail
cd "$(dirname "$0")/.."
NS=xl-node-test
ROLL_NS=xl-node-roll
PQ_NS=xl-node-pq
FIPS_NS=xl-node-fips
APP_VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' charts/xlattice-operator/Chart.yaml)
OP_NS=xlattice-system
XL=${XLATTICE_BIN:-target/release/xlattice}
TMP=$(mktemp -d /tmp/xlattice-node-test.XXXXXX)

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
now_ms() { date +%s%3N; }

PLAIN_APPLIED=
cleanup() {
  # Namespaces first, while the operator runs: their clusters carry its finalizer, and a
  # namespace whose cluster outlives the operator stays Terminating.
  kubectl delete namespace "$NS" "$ROLL_NS" "$PQ_NS" "$FIPS_NS" --timeout=60s >/dev/null 2>&1 || true
  helm uninstall xlattice -n "$OP_NS" >/dev/null 2>&1 || true
  if [[ -n $PLAIN_APPLIED ]]; then kubectl delete -f deploy/xlattice-operator.yaml --wait=false >/dev/null 2>&1 || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

[[ -x $XL ]] || die "$XL missing: cargo build --release -p xlattice-sidecar"
kubectl get node "${XLATTICE_NODE_IP:?run: eval \"\$(hack/node.sh env)\"}" >/dev/null || die "no node"

pod_ip() { kubectl -n "$1" get pod "$2" -o 'jsonpath={.status.podIP}'; }
secret_key() { # NS POD KEY
  kubectl -n "$1" get secret "xlattice-id-$2" -o "jsonpath={.data.${3//./\\.}}" | base64 -d
}
# The identity of POD as files (the layout `xlattice connect --identity-dir` reads).
save_identity() { # NS POD DIR
  mkdir -p "$3"
  local key
  for key in node-id sk.pem ck.pem; do secret_key "$1" "$2" "$key" >"$3/$key"; done
  chmod 600 "$3"/*
}
# Probe from inside POD: prints open|refused|timeout.
probe() { # NS POD CONTAINER ADDR
  kubectl -n "$1" exec "$2" -c "$3" -- member_app probe "$4" 1500 2>/dev/null || true
}
# Read whole before any grep: `cmd | grep -q` fails under pipefail when grep exits first.
sidecar_log() { kubectl -n "$1" logs "$2" -c xlattice-sidecar; }

# ---------------------------------------------------------------------------------------
step "helm install with the chart's default images (imported, never pulled)"
t0=$SECONDS
if helm install xlattice charts/xlattice-operator -n "$OP_NS" --create-namespace \
  --set sidecar.resources.limits.memory=96Mi --wait --timeout 120s >/dev/null; then
  ok "operator Deployment Ready $((SECONDS - t0))s after helm install"
else
  bad "helm install --wait"
  kubectl -n "$OP_NS" describe pods | tail -30 >&2
  exit 1
fi
op_pod=$(kubectl -n "$OP_NS" get pods -l app.kubernetes.io/name=xlattice-operator -o 'jsonpath={.items[0].metadata.name}')
check "the operator leads through its Lease (in-cluster config, its own ServiceAccount)" \
  eventually 30 bash -c "[[ \$(kubectl -n $OP_NS get lease xlattice-operator -o 'jsonpath={.spec.holderIdentity}') == $op_pod ]]"
# kube-controller-manager type-checks the admission policy's expressions against the
# schemas of every kind it matches; a warning would mean an expression that cannot work.
policy_checked() { [[ -n $(kubectl get validatingadmissionpolicy "$1" -o 'jsonpath={.status.typeChecking}') ]]; }
for policy in xlattice-operator-writes xlattice-operator-identities xlattice-operator-identities-where-clusters; do
  if eventually 60 policy_checked "$policy"; then
    warnings=$(kubectl get validatingadmissionpolicy "$policy" -o 'jsonpath={.status.typeChecking.expressionWarnings}')
    check "the chart's admission policy $policy type-checks without a warning${warnings:+: $warnings}" test -z "$warnings"
  else
    bad "the admission policy $policy was never type-checked"
  fi
done

# ---------------------------------------------------------------------------------------
step "the StatefulSet example: injected by the webhook (through its Service), pods start"
kubectl create namespace "$NS" >/dev/null
t0=$SECONDS
kubectl apply -n "$NS" -f deploy/examples/statefulset-cluster.yaml >/dev/null
if kubectl -n "$NS" rollout status statefulset/store --timeout=180s >/dev/null; then
  ok "3 injected members Ready (app + native sidecar) $((SECONDS - t0))s after kubectl apply"
else
  bad "StatefulSet store not Ready"
  kubectl -n "$NS" describe pods | tail -40 >&2
  exit 1
fi
check "the cluster reports Ready with 3 members" \
  eventually 60 bash -c "[[ \$(kubectl -n $NS get xlatticecluster store -o 'jsonpath={.status.members}/{.status.conditions[?(@.type==\"Ready\")].status}') == 3/True ]]"
check "store-0 runs the sidecar as a native sidecar (init container, restartPolicy Always)" \
  test "$(kubectl -n "$NS" get pod store-0 -o 'jsonpath={.spec.initContainers[0].name}/{.spec.initContainers[0].restartPolicy}')" = xlattice-sidecar/Always

# The container runtime stamps each log line (ns): the app's first line must come after
# the sidecar said it serves. The startup probe the webhook sets makes the kubelet wait.
sidecar_lines=$(kubectl -n "$NS" logs store-0 -c xlattice-sidecar --timestamps)
app_lines=$(kubectl -n "$NS" logs store-0 -c app --timestamps)
ready_ts=$(awk '/sidecar ready/ {print $1; exit}' <<<"$sidecar_lines")
app_ts=$(awk 'NR == 1 {print $1}' <<<"$app_lines")
if [[ -n $ready_ts && -n $app_ts && $(date -d "$app_ts" +%s%N) -gt $(date -d "$ready_ts" +%s%N) ]]; then
  ok "the app started after its sidecar was ready (sidecar ready $ready_ts, app's first line $app_ts)"
else
  bad "the app started before its sidecar was ready (sidecar '$ready_ts', app '$app_ts')"
fi

# ---------------------------------------------------------------------------------------
step "Secrets only where a cluster lives: the operator's own binding, gone with the last cluster"
# The operator's ClusterRole grants no Secret: it binds its identities role in a namespace
# when a cluster appears there, the binding owned by the cluster, and the garbage collector
# (kube-controller-manager, which the bare control plane of the other tests lacks) removes
# it with the cluster.
op_sa=system:serviceaccount:$OP_NS:xlattice-operator
binding=xlattice-identities.$OP_NS.xlattice-operator
can_list_secrets() { kubectl auth can-i --as="$op_sa" list secrets -n "$1" 2>/dev/null; }
check "the operator's token cannot list kube-system's Secrets" test "$(can_list_secrets kube-system)" == no
check "nor those of a namespace without a cluster" test "$(can_list_secrets default)" == no
check "in the example's namespace it bound itself the identities role ($binding)" \
  bash -c "kubectl -n $NS get rolebinding $binding >/dev/null && [[ \$(kubectl auth can-i --as=$op_sa list secrets -n $NS) == yes ]]"
GC_NS=$NS-gc
kubectl create namespace "$GC_NS" >/dev/null
kubectl apply -n "$GC_NS" -f - >/dev/null <<'CLUSTER'
apiVersion: xlattice.io/v1alpha1
kind: XLatticeCluster
metadata: {name: lone}
spec: {selector: {matchLabels: {app: lone}}, clusterPort: 7000, clientPort: 8000}
CLUSTER
bound() { kubectl -n "$GC_NS" get rolebinding "$binding" >/dev/null 2>&1; }
check "a new cluster's namespace gets the binding, owned by the cluster" eventually 60 bound
kubectl -n "$GC_NS" delete xlatticecluster lone --timeout=60s >/dev/null
unbound() { ! bound; }
check "deleting the namespace's last cluster takes the binding away (garbage collector)" eventually 60 unbound
check "and with it the token's Secrets there" test "$(can_list_secrets "$GC_NS")" == no
kubectl delete namespace "$GC_NS" --wait=false >/dev/null

# ---------------------------------------------------------------------------------------
step "identities through the projected Secret and directory shards"
for i in 0 1 2; do
  want=$(secret_key "$NS" "store-$i" node-id)
  if grep -q "identity loaded node_id=$want" <<<"$(sidecar_log "$NS" "store-$i")"; then
    ok "store-$i's sidecar serves the NodeID of Secret xlattice-id-store-$i (${want:0:12}…)"
  else
    bad "store-$i's sidecar did not load NodeID $want"
  fi
done
check "the memory limit reaches the sidecar (Downward API): limit 96Mi -> buffer budget 48 MiB" \
  grep -q 'buffer_budget_mib=48' <<<"$(sidecar_log "$NS" store-0)"
kubectl apply -n "$NS" -f deploy/examples/client-job.yaml >/dev/null
if kubectl -n "$NS" wait job/store-client --for=condition=Complete --timeout=120s >/dev/null; then
  out=$(kubectl -n "$NS" logs -l job-name=store-client --tail=-1)
  for i in 0 1 2; do
    if grep -q "hello from store-$i on the client port" <<<"$out"; then
      ok "client Job: an encrypted session with store-$i on the client port (its key from the directory)"
    else
      bad "client Job: no greeting from store-$i: $out"
    fi
  done
else
  bad "the client Job example did not complete"
  kubectl -n "$NS" logs -l job-name=store-client --tail=20 >&2 || true
fi

# ---------------------------------------------------------------------------------------
step "members talk on the private port through their sidecars; a member Job completes"
for pair in "0 1" "1 2" "2 0"; do
  # shellcheck disable=SC2086 # split on purpose: the pair's two numbers
  set -- $pair
  if out=$(kubectl -n "$NS" exec "store-$1" -c app -- member_app hello "store-$2" "hi from store-$1" 2>&1) &&
    grep -q "hello from store-$2 on the cluster port" <<<"$out" && grep -q "hi from store-$1" <<<"$out"; then
    ok "store-$1 -> CONNECT store-$2:7000 -> store-$2's app (cluster port), echoed"
  else
    bad "store-$1 -> store-$2 on the private port: $out"
  fi
done
# A member Job: its only container says hello to a peer at once and exits. With
# backoffLimit 0 it completes only if its sidecar answered the first CONNECT (the native
# sidecar is ready before the app starts) and then did not keep the Job from completing.
# HELLO_RETRY_SECS covers store-1 not yet seeing the new member in its directory; a
# sidecar that is not up fails at once.
cat >"$TMP/member-job.yaml" <<'EOF'
apiVersion: batch/v1
kind: Job
metadata: {name: member-job}
spec:
  backoffLimit: 0
  template:
    metadata: {labels: {app.kubernetes.io/name: store}}
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
        - name: app
          image: ghcr.io/xlattice/xlattice-member-app:0.1.0
          args: ["hello", "store-1", "from a Job"]
          env: [{name: HELLO_RETRY_SECS, value: "60"}, {name: CLUSTER_UPSTREAM, value: "17000"}, {name: CLIENT_UPSTREAM, value: "18000"}]
EOF
kubectl apply -n "$NS" -f "$TMP/member-job.yaml" >/dev/null
if kubectl -n "$NS" wait job/member-job --for=condition=Complete --timeout=120s >/dev/null; then
  ok "a member Job with the injected sidecar talks to store-1 and completes"
else
  bad "the member Job did not complete"
  kubectl -n "$NS" logs -l job-name=member-job --all-containers --tail=20 >&2 || true
fi

# ---------------------------------------------------------------------------------------
step "NetworkPolicy enforced by kube-router; the sidecar refuses what the policy admits"
cat >"$TMP/outsider.yaml" <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: outsider, labels: {app.kubernetes.io/name: outsider}}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
  containers:
    - {name: app, image: ghcr.io/xlattice/xlattice-member-app:0.1.0, args: ["serve"]}
EOF
kubectl apply -n "$NS" -f "$TMP/outsider.yaml" >/dev/null
kubectl -n "$NS" wait pod/outsider --for=condition=Ready --timeout=60s >/dev/null
ip0=$(pod_ip "$NS" store-0)
got=$(probe "$NS" outsider app "$ip0:7000")
if [[ $got == timeout || $got == refused ]]; then
  ok "a non-member pod cannot open a TCP connection to store-0's cluster port ($got)"
else
  bad "a non-member pod reached store-0's cluster port: $got"
fi
check "a member (store-1) opens a TCP connection to store-0's cluster port" \
  test "$(probe "$NS" store-1 app "$ip0:7000")" = open
check "a non-member pod opens a TCP connection to the client port" \
  test "$(probe "$NS" outsider app "$ip0:8000")" = open

kubectl -n "$NS" patch xlatticecluster store --type=merge \
  -p '{"spec":{"clientAccess":[{"podSelector":{"matchLabels":{"role":"client"}}}]}}' >/dev/null
check "spec.clientAccess set: a pod it does not name loses the client port" \
  eventually 30 bash -c "[[ \$(kubectl -n $NS exec outsider -c app -- member_app probe $ip0:8000 1000) != open ]]"
kubectl -n "$NS" label pod outsider role=client >/dev/null
check "spec.clientAccess set: the pod it names reaches the client port" \
  eventually 30 bash -c "[[ \$(kubectl -n $NS exec outsider -c app -- member_app probe $ip0:8000 1000) == open ]]"
kubectl -n "$NS" patch xlatticecluster store --type=json -p '[{"op":"remove","path":"/spec/clientAccess"}]' >/dev/null

"$XL" keygen --out "$TMP/stranger" >/dev/null
xlattice_operator=${XLATTICE_OPERATOR_BIN:-target/release/xlattice-operator}
directory() { "$xlattice_operator" directory store -n "$NS" >"$1"; }
directory "$TMP/directory.yaml"
if out=$(echo "let me in" | "$XL" connect store-1 --port cluster --identity-dir "$TMP/stranger" \
  --directory "$TMP/directory.yaml" --timeout 5s 2>&1); then
  bad "a stranger with a valid key pair was served on the cluster port: $out"
else
  ok "the node (admitted by the policy) with a non-member key is refused by the sidecar: ${out##*: }"
fi
check "the same stranger is served on the client port" \
  bash -c "echo hi | '$XL' connect store-1 --directory '$TMP/directory.yaml' --timeout 5s | grep 'hello from store-1 on the client port' >/dev/null"

# ---------------------------------------------------------------------------------------
step "key rotation reaches the running sidecar through the Secret volume"
uid_before=$(kubectl -n "$NS" get pod store-1 -o 'jsonpath={.metadata.uid}/{.status.initContainerStatuses[0].restartCount}/{.status.containerStatuses[0].restartCount}')
ck_before=$(secret_key "$NS" store-1 ck.pem)
cp "$TMP/directory.yaml" "$TMP/directory-old.yaml"
# A session opened before the rotation, held open through it.
mkfifo "$TMP/held.in"
"$XL" connect store-1 --directory "$TMP/directory-old.yaml" --timeout 120s <"$TMP/held.in" >"$TMP/held.out" 2>&1 &
held_pid=$!
exec 7>"$TMP/held.in"
echo "before rotation" >&7
eventually 10 grep -q "before rotation" "$TMP/held.out" || true
t_rot=$(now_ms)
kubectl -n "$NS" annotate pod store-1 xlattice.io/rotate="$(date +%s)" --overwrite >/dev/null
check "the operator rotates store-1's keys in its Secret (same NodeID)" \
  eventually 60 bash -c "[[ \$(kubectl -n $NS get secret xlattice-id-store-1 -o 'jsonpath={.data.ck\\.pem}' | base64 -d) != '$ck_before' ]]"
# New sessions: the old public key stops working once the sidecar has reloaded.
new_keys() { ! echo x | "$XL" connect store-1 --directory "$TMP/directory-old.yaml" --timeout 3s >/dev/null 2>&1; }
if eventually 90 new_keys; then
  ok "the running sidecar took the new keys $(( ($(now_ms) - t_rot) / 100 ))00 ms after the rotation request (kubelet syncFrequency at its default, 1 min): a session to the old key is refused"
else
  bad "store-1's sidecar still answers to its old key 90s after rotation"
fi
directory "$TMP/directory.yaml"
check "a new session with the new directory works" \
  bash -c "echo hi | '$XL' connect store-1 --directory '$TMP/directory.yaml' --timeout 5s | grep 'hello from store-1' >/dev/null"
echo "after rotation" >&7
exec 7>&-
wait "$held_pid" 2>/dev/null || true
check "the session opened before the rotation kept working" grep -q "after rotation" "$TMP/held.out"
check "no restart: store-1 is the same pod, its containers never restarted" \
  test "$(kubectl -n "$NS" get pod store-1 -o 'jsonpath={.metadata.uid}/{.status.initContainerStatuses[0].restartCount}/{.status.containerStatuses[0].restartCount}')" = "$uid_before"

# ---------------------------------------------------------------------------------------
step "a member leaves: the survivors refuse its key"
save_identity "$NS" store-2 "$TMP/store-2"
check "store-2's own key is served on store-0's cluster port while it is a member" \
  bash -c "echo hi | '$XL' connect store-0 --port cluster --identity-dir '$TMP/store-2' --directory '$TMP/directory.yaml' --timeout 5s | grep 'hello from store-0 on the cluster port' >/dev/null"
t_del=$(now_ms)
kubectl -n "$NS" scale statefulset store --replicas=2 >/dev/null
refused() { ! echo x | "$XL" connect store-0 --port cluster --identity-dir "$TMP/store-2" --directory "$TMP/directory.yaml" --timeout 3s >/dev/null 2>&1; }
if eventually 120 refused; then
  ok "store-0 refuses store-2's key $(( ($(now_ms) - t_del) / 100 ))00 ms after the scale-down (pod deletion -> directory -> kubelet volume refresh -> sidecar reload)"
else
  bad "store-0 still serves store-2's key 120s after store-2 left"
fi
# Each survivor's sidecar says when it loaded the directory it serves and whether that is
# the version the operator stamped on its pod: read through the API server's pod proxy.
sidecar_metric() { # POD METRIC
  kubectl get --raw "/api/v1/namespaces/$NS/pods/$1:15090/proxy/metrics" 2>/dev/null |
    awk -v m="xlattice_sidecar_$2" '$1 == m {print $2}'
}
stamped_and_served() { # POD
  local version
  version=$(kubectl -n "$NS" get pod "$1" -o "jsonpath={.metadata.annotations['xlattice\.io/directory-version']}")
  [[ -n $version && $(sidecar_metric "$1" directory_behind_seconds) == 0 ]]
}
for pod in store-0 store-1; do
  if eventually 30 stamped_and_served "$pod"; then
    loaded=$(sidecar_metric "$pod" directory_loaded_timestamp_seconds)
    ok "$pod carries the new directory version and its sidecar serves it, loaded $(awk -v l="$loaded" -v t="$t_del" 'BEGIN {printf "%d", l * 1000 - t}') ms after the scale-down (kubelet syncFrequency 1 min)"
  else
    bad "$pod: directory version $(kubectl -n "$NS" get pod "$pod" -o "jsonpath={.metadata.annotations['xlattice\.io/directory-version']}"), sidecar behind by $(sidecar_metric "$pod" directory_behind_seconds)s"
  fi
done

# ---------------------------------------------------------------------------------------
step "restartWorkloads rolls running workloads into injected pods"
kubectl create namespace "$ROLL_NS" >/dev/null
cat >"$TMP/roll.yaml" <<'EOF'
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: grid-members
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db, xl-member: grid}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers: [{name: app, image: ghcr.io/xlattice/xlattice-member-app:0.1.0, args: ["serve"]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, xl-member: grid}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers: [{name: app, image: ghcr.io/xlattice/xlattice-member-app:0.1.0, args: ["serve"]}]
EOF
kubectl apply -n "$ROLL_NS" -f "$TMP/roll.yaml" >/dev/null
kubectl -n "$ROLL_NS" rollout status statefulset/db --timeout=120s >/dev/null
kubectl -n "$ROLL_NS" rollout status deployment/web --timeout=120s >/dev/null
n_plain=$(kubectl -n "$ROLL_NS" get pods -o 'jsonpath={range .items[*]}{.spec.initContainers[0].name}{"\n"}{end}' | grep -c xlattice-sidecar || true)
check "before the cluster exists the workloads run without the sidecar" test "$n_plain" = 0
t0=$SECONDS
kubectl apply -n "$ROLL_NS" -f - >/dev/null <<'EOF'
apiVersion: xlattice.io/v1alpha1
kind: XLatticeCluster
metadata: {name: grid}
spec:
  # matchExpressions: the Services cannot say this selector, so the operator writes their
  # EndpointSlices (checked below through kube-proxy).
  selector:
    matchLabels: {xl-member: grid}
    matchExpressions: [{key: app, operator: In, values: [db, web]}]
  clusterPort: 9000
  clientPort: 9100
  restartWorkloads: true
EOF
all_injected() {
  local pods ready
  pods=$(kubectl -n "$ROLL_NS" get pods -o 'jsonpath={range .items[*]}{.metadata.deletionTimestamp}|{.spec.initContainers[0].name}|{.status.containerStatuses[0].ready}{"\n"}{end}')
  ready=$(grep -c '^|xlattice-sidecar|true$' <<<"$pods" || true)
  [[ $ready -eq 4 && $(grep -c . <<<"$pods") -eq 4 ]]
}
if eventually 240 all_injected; then
  ok "StatefulSet db and Deployment web rolled: 4 injected pods Ready $((SECONDS - t0))s after the cluster was applied"
else
  bad "the workloads were not rolled into injected pods"
  kubectl -n "$ROLL_NS" get pods >&2
fi

# The client port changes under running members: their sidecars are outdated until rolled.
t0=$SECONDS
kubectl -n "$ROLL_NS" patch xlatticecluster grid --type merge -p '{"spec":{"clientPort":9200}}' >/dev/null
outdated_reported() { [[ -n $(kubectl -n "$ROLL_NS" get xlatticecluster grid -o 'jsonpath={.status.podsWithOutdatedSidecar}') ]]; }
check "a port change is reported: status.podsWithOutdatedSidecar lists the running members" eventually 30 outdated_reported
all_on_new_port() {
  local pods
  pods=$(kubectl -n "$ROLL_NS" get pods -o 'jsonpath={range .items[*]}{.metadata.deletionTimestamp}|{.spec.initContainers[0].args}|{.status.containerStatuses[0].ready}{"\n"}{end}')
  [[ $(grep -c '^|.*"--client-port","9200".*|true$' <<<"$pods" || true) -eq 4 && $(grep -c . <<<"$pods") -eq 4 ]] || return 1
  [[ -z $(kubectl -n "$ROLL_NS" get xlatticecluster grid -o 'jsonpath={.status.podsWithOutdatedSidecar}') ]] &&
    [[ $(kubectl -n "$ROLL_NS" get xlatticecluster grid -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
if eventually 240 all_on_new_port; then
  ok "restartWorkloads rolled both workloads onto the new client port: 4 pods Ready, cluster Ready, $((SECONDS - t0))s after the change"
else
  bad "the workloads were not rolled onto the new client port"
  kubectl -n "$ROLL_NS" get pods,xlatticecluster -o wide >&2
fi
grid_ip=$(kubectl -n "$ROLL_NS" get service grid -o 'jsonpath={.spec.clusterIP}')
db0=$(kubectl -n "$ROLL_NS" get pods -l app=db -o 'jsonpath={.items[0].metadata.name}')
check "the grid Service (no selector: matchExpressions) reaches a member through the operator's EndpointSlices and kube-proxy" \
  eventually 30 bash -c "[[ \$(kubectl -n $ROLL_NS exec $db0 -c app -- member_app probe $grid_ip:9200 1000) == open ]]"

# ---------------------------------------------------------------------------------------
step "kubectl xlattice: check passes, names each failure made on purpose, passes again"
# The plugin on PATH as kubectl finds it (built with the images); --output json for the
# per-check assertions.
[[ -x target/release/kubectl-xlattice ]] || die "target/release/kubectl-xlattice missing: hack/node.sh images builds it"
mkdir -p "$TMP/plugin"
ln -sf "$PWD/target/release/kubectl-xlattice" "$TMP/plugin/kubectl-xlattice"
xl_check() { PATH="$TMP/plugin:$PATH" kubectl xlattice check -n "$NS" --operator-namespace "$OP_NS" "$@"; }
finding() { # FIELD JSON CHECK SUBJECT...: one field of one finding (the subject's words joined)
  python3 -c 'import json,sys; r=json.load(open(sys.argv[2])); print(" ".join(f[sys.argv[1]] for f in r["findings"] if f["check"]==sys.argv[3] and f["subject"]==" ".join(sys.argv[4:])))' "$@"
}
verdict() { finding verdict "$@"; }
if xl_check --probe-network-policy >"$TMP/check.txt" 2>&1; then
  ok "kubectl xlattice check --probe-network-policy: $(tail -1 "$TMP/check.txt") (exit 0)"
else
  bad "kubectl xlattice check failed on a healthy install:"
  grep -A1 '^FAIL' "$TMP/check.txt" >&2 || cat "$TMP/check.txt" >&2
fi
xl_check --output json --probe-network-policy >"$TMP/check.json" || true
# What only a real node shows: the operator's pod leads, a dry-run pod comes back injected
# through the Service, each sidecar's metrics are read through the API server's pod proxy,
# and a deny-all policy closes a port between two probe pods (image: the sidecar's).
for finding in "leader $OP_NS" "webhook-injects $NS/store" "sidecar-directory $NS/store" "network-policy pod network"; do
  # shellcheck disable=SC2086 # the check, then its subject
  check "check's $finding: pass" test "$(verdict "$TMP/check.json" $finding)" = pass
done
# NetworkPolicy not enforced, on purpose: kube-router frozen, a new policy is never
# programmed (the rules already in place stay).
router_pid=$(cat "${XLATTICE_NODE_DIR:-/tmp/xlattice-node}/kube-router.pid")
kill -STOP "$router_pid"
xl_check --output json --probe-network-policy >"$TMP/check-np.json" || true
kill -CONT "$router_pid"
check "with kube-router frozen, check's network-policy: fail (a deny-all policy left the port open)" \
  test "$(verdict "$TMP/check-np.json" network-policy "pod network")" = fail
PATH="$TMP/plugin:$PATH" kubectl xlattice directory store -n "$NS" >"$TMP/plugin-directory.yaml"
check "kubectl xlattice directory prints what xlattice-operator directory prints" \
  bash -c "'$xlattice_operator' directory store -n '$NS' | cmp -s - '$TMP/plugin-directory.yaml'"
check "kubectl xlattice connect: a session with store-0, its directory read from the API server" \
  bash -c "echo hi | PATH='$TMP/plugin:$PATH' kubectl xlattice connect store store-0 -n '$NS' --timeout 5s | grep 'hello from store-0 on the client port' >/dev/null"
kubectl -n "$OP_NS" scale deployment xlattice-operator --replicas=0 >/dev/null
kubectl -n "$OP_NS" wait pods -l app.kubernetes.io/name=xlattice-operator --for=delete --timeout=60s >/dev/null 2>&1 || true
code=0
xl_check --output json >"$TMP/check-down.json" 2>&1 || code=$?
check "with the operator scaled to zero, check exits 1" test "$code" = 1
check "... and names it: operator fail, leader fail, the dry-run pod refused by the webhook" \
  test "$(verdict "$TMP/check-down.json" operator "$OP_NS")/$(verdict "$TMP/check-down.json" leader "$OP_NS")/$(verdict "$TMP/check-down.json" webhook-injects "$NS/store")" = fail/fail/fail
# While the operator is away, two things only it would mend: store-0 stamped with a
# directory version its sidecar never loads (the kubelet delivers the stamp, no shard
# matches it: a stuck sidecar as the sidecar itself reports it), and the webhook's serving
# certificate past its renewal time (as after an operator outage longer than a third of
# the certificate's life).
kubectl -n "$NS" annotate pod store-0 --overwrite xlattice.io/directory-version=stuck-on-purpose >/dev/null
tls_before=$(kubectl -n "$OP_NS" get secret xlattice-webhook-tls -o 'jsonpath={.data.tls\.crt}')
kubectl -n "$OP_NS" annotate secret xlattice-webhook-tls --overwrite xlattice.io/renew-after=2000-01-01T00:00:00Z >/dev/null
stuck_named() {
  xl_check --output json >"$TMP/check-stuck.json" 2>/dev/null
  [[ $(verdict "$TMP/check-stuck.json" sidecar-directory "$NS/store") == fail &&
    $(finding message "$TMP/check-stuck.json" sidecar-directory "$NS/store") == *"store-0 ("* ]]
}
# The sidecar counts from the moment the stamp reaches its file; check fails past 30 s.
check "a sidecar stuck behind its pod's stamp for 30 s: check's sidecar-directory fails naming store-0" \
  eventually 90 stuck_named
kubectl -n "$OP_NS" scale deployment xlattice-operator --replicas=1 >/dev/null
kubectl -n "$OP_NS" rollout status deployment/xlattice-operator --timeout=120s >/dev/null
check "the operator back: check passes again (store-0 re-stamped and current, the webhook serving)" eventually 60 xl_check
renewed() {
  [[ $(kubectl -n "$OP_NS" get secret xlattice-webhook-tls -o 'jsonpath={.data.tls\.crt}') != "$tls_before" &&
    $(kubectl -n "$OP_NS" get secret xlattice-webhook-tls -o "jsonpath={.metadata.annotations['xlattice\.io/renew-after']}") > $(date -u +%FT%T) ]]
}
check "... and it renewed the serving certificate that was due while it was away" renewed
xl_check --output json >"$TMP/check-renewed.json" || true
check "... which the webhook serves: check's webhook-cert passes, a dry-run pod comes back injected" \
  test "$(verdict "$TMP/check-renewed.json" webhook-cert xlattice-sidecar-injector)/$(verdict "$TMP/check-renewed.json" webhook-injects "$NS/store")" = pass/pass

# A running pod labelled into the cluster after it was created never saw the webhook: a
# member without the sidecar, which check names (the operator cannot inject a running pod).
kubectl -n "$NS" label pod outsider --overwrite app.kubernetes.io/name=store >/dev/null
code=0
xl_check --output json >"$TMP/check-relabel.json" 2>&1 || code=$?
check "a running non-member labelled into the cluster: check exits 1, sidecars fails naming outsider" \
  test "$code/$(verdict "$TMP/check-relabel.json" sidecars "$NS/store")/$(finding message "$TMP/check-relabel.json" sidecars "$NS/store" | grep -o outsider)" = 1/fail/outsider
kubectl -n "$NS" label pod outsider --overwrite app.kubernetes.io/name=outsider >/dev/null

# The CRD drifted from this release's schema (as when helm upgraded the operator but, as
# helm does, not the CRD): one extra field is enough to be named.
drift=/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/driftedOnPurpose
kubectl patch crd xlatticeclusters.xlattice.io --type=json -p "[{\"op\":\"add\",\"path\":\"$drift\",\"value\":{\"type\":\"string\"}}]" >/dev/null
xl_check --output json >"$TMP/check-crd.json" 2>&1 || true
kubectl patch crd xlatticeclusters.xlattice.io --type=json -p "[{\"op\":\"remove\",\"path\":\"$drift\"}]" >/dev/null
# The versions back in helm's hands (it installs CRDs by server-side apply): else the next
# helm install on this node would conflict with kubectl-patch's ownership of them.
kubectl apply --server-side --field-manager=helm --force-conflicts \
  -f charts/xlattice-operator/crds/xlatticeclusters.yaml >/dev/null
check "a CRD that drifted from this release's schema: check's crd fails" \
  test "$(verdict "$TMP/check-crd.json" crd xlatticeclusters.xlattice.io)" = fail
check "the pod relabelled back and the CRD restored: check passes" eventually 60 xl_check
op_pod=$(kubectl -n "$OP_NS" get pods -l app.kubernetes.io/name=xlattice-operator -o 'jsonpath={.items[0].metadata.name}')

# ---------------------------------------------------------------------------------------
step "post-quantum: a rolling upgrade from sidecars that speak only version 1"
# A cluster of its own whose sidecars are injected with postQuantum Disabled: version 1 only, as
# sidecars from before version 2 are. The spec then goes back to the default (Preferred)
# without restarting them (restartWorkloads false), a new member joins with the version 2
# sidecar, the two kinds talk both ways, the old ones are rolled, and Required at last.
kubectl create namespace "$PQ_NS" >/dev/null
sed -e 's/^  restartWorkloads: true$/  restartWorkloads: false\n  postQuantum: Disabled/' -e 's/^  replicas: 3$/  replicas: 2/' \
  deploy/examples/statefulset-cluster.yaml | kubectl apply -n "$PQ_NS" -f - >/dev/null
pq_ready() { kubectl -n "$PQ_NS" rollout status statefulset/store --timeout=120s >/dev/null; }
pq_args() { kubectl -n "$PQ_NS" get pod "$1" -o 'jsonpath={.spec.initContainers[?(@.name=="xlattice-sidecar")].args}'; }
# Sessions a pod's sidecar opened, by port and version (its metrics through the pod proxy).
pq_sessions() { # POD PORT VERSION
  kubectl get --raw "/api/v1/namespaces/$PQ_NS/pods/$1:15090/proxy/metrics" |
    sed -n "s/^xlattice_sidecar_session_versions_total{port=\"$2\",version=\"$3\"} //p" | grep . || echo 0
}
pq_hello() { # FROM TO: member FROM says hello to member TO on the cluster port
  kubectl -n "$PQ_NS" exec "store-$1" -c app -- member_app hello "store-$2" "pq from store-$1" 2>/dev/null |
    grep -q "hello from store-$2 on the cluster port"
}
pq_ready
check "version 1 only: the sidecars are injected with --post-quantum Disabled" grep -q '"--post-quantum","Disabled"' <<<"$(pq_args store-0)"
kubectl -n "$PQ_NS" patch xlatticecluster store --type=json -p '[{"op":"remove","path":"/spec/postQuantum"}]' >/dev/null
kubectl -n "$PQ_NS" scale statefulset store --replicas=3 >/dev/null
pq_ready
check "the spec back to Preferred: store-2 joins with the default sidecar (no --post-quantum)" \
  bash -c "! grep -q post-quantum <<<'$(pq_args store-2)'"
# The running members now carry a sidecar for an earlier spec: check names them, and the
# cluster is not Ready until they are restarted (restartWorkloads is off here).
PATH="$TMP/plugin:$PATH" kubectl xlattice check -n "$PQ_NS" --operator-namespace "$OP_NS" --output json \
  >"$TMP/check-pq.json" 2>&1 || true
check "check names the members whose sidecar is for an earlier spec, and the cluster not Ready" \
  test "$(verdict "$TMP/check-pq.json" sidecars "$PQ_NS/store")/$(finding message "$TMP/check-pq.json" sidecars "$PQ_NS/store" | grep -o 'store-[01]' | sort -u | tr '\n' ' ')/$(verdict "$TMP/check-pq.json" cluster-ready "$PQ_NS/store")" = "fail/store-0 store-1 /fail"
check "new store-2 -> old store-0: answered (store-2 falls back to version 1)" eventually 30 pq_hello 2 0
check "old store-0 -> new store-2: answered (version 1; the sentinel means nothing to it)" eventually 30 pq_hello 0 2
check "... both classical, as store-2's sidecar counts them (outbound and cluster port)" \
  test "$(pq_sessions store-2 outbound classical)" -ge 1 -a "$(pq_sessions store-2 cluster classical)" -ge 1
kubectl -n "$PQ_NS" delete pod store-0 store-1 --wait=false >/dev/null
sleep 2
pq_ready
pq_rolled() {
  eventually 30 pq_hello 0 2 && pq_hello 2 0 &&
    [[ $(pq_sessions store-0 outbound hybrid) -ge 1 && $(pq_sessions store-0 cluster hybrid) -ge 1 &&
      $(pq_sessions store-0 outbound classical) == 0 ]]
}
check "the old members rolled: store-0 -> store-2 and back, hybrid both ways (none classical)" pq_rolled
kubectl -n "$PQ_NS" patch xlatticecluster store --type=merge -p '{"spec":{"postQuantum":"Required"}}' >/dev/null
kubectl -n "$PQ_NS" delete pod store-0 store-1 store-2 --wait=false >/dev/null
sleep 2
pq_ready
check "Required: the members, rolled, still talk (hybrid)" eventually 30 pq_hello 1 2
pq_ip0=$(pod_ip "$PQ_NS" store-0)
if PATH="$TMP/plugin:$PATH" kubectl xlattice connect store store-0 -n "$PQ_NS" --post-quantum Disabled \
  --address "$pq_ip0:8000" --timeout 5s </dev/null >/dev/null 2>&1; then
  bad "Required: a version 1 client was served"
else
  refused=$(kubectl get --raw "/api/v1/namespaces/$PQ_NS/pods/store-0:15090/proxy/metrics" | grep -c 'reason="classical_refused"' || true)
  check "Required: a version 1 client is refused, counted as classical_refused" test "$refused" -ge 1
fi
kubectl delete namespace "$PQ_NS" --wait=false >/dev/null

# ---------------------------------------------------------------------------------------
# The FIPS images (hack/node.sh images --fips, which hack/test.sh runs): the chart's
# fips=true, a cluster's members on them, and the refusal of a non-FIPS binary.
if [[ ${XLATTICE_NODE_FIPS:-} == 1 ]]; then
  step "fips: the operator and the sidecars it injects on the AWS-LC FIPS module"
  # After a rollout, once the old pod is gone: the one left is the new one.
  one_operator_pod() { [[ $(kubectl -n "$OP_NS" get pods -l app.kubernetes.io/name=xlattice-operator -o name | wc -l) == 1 ]]; }
  fips_metric() { # URL-PATH: the build_info line of a /metrics behind the API server's proxy
    kubectl get --raw "$1" | grep '_build_info{' || true
  }
  if helm upgrade xlattice charts/xlattice-operator -n "$OP_NS" --reuse-values --set fips=true \
    --wait --timeout 120s >/dev/null; then
    eventually 60 one_operator_pod || true
    fips_op=$(kubectl -n "$OP_NS" get pods -l app.kubernetes.io/name=xlattice-operator -o 'jsonpath={.items[0].metadata.name}')
    check "fips=true: the operator runs the -fips image with --require-fips, and says FIPS mode is on" \
      bash -c "[[ \$(kubectl -n $OP_NS get pod $fips_op -o 'jsonpath={.spec.containers[0].image} {.spec.containers[0].args}') == *-fips\ *--require-fips* ]] &&
        kubectl -n $OP_NS logs $fips_op | grep -q 'FIPS mode: on'"
    check "... its /metrics: xlattice_operator_build_info{crypto=\"AWS-LC FIPS ...\",fips=\"true\"}" \
      bash -c "grep -q 'crypto=\"AWS-LC FIPS [^\"]*\",fips=\"true\"' <<<'$(fips_metric "/api/v1/namespaces/$OP_NS/pods/$fips_op:8080/proxy/metrics")'"
  else
    bad "helm upgrade --set fips=true"
    kubectl -n "$OP_NS" describe pods | tail -30 >&2
  fi
  kubectl create namespace "$FIPS_NS" >/dev/null
  sed -e 's/^  replicas: 3$/  replicas: 2/' deploy/examples/statefulset-cluster.yaml | kubectl apply -n "$FIPS_NS" -f - >/dev/null
  if kubectl -n "$FIPS_NS" rollout status statefulset/store --timeout=180s >/dev/null; then
    sidecar_spec=$(kubectl -n "$FIPS_NS" get pod store-0 -o 'jsonpath={.spec.initContainers[?(@.name=="xlattice-sidecar")].image} {.spec.initContainers[?(@.name=="xlattice-sidecar")].env}')
    check "the members are injected with the -fips sidecar image and XLATTICE_REQUIRE_FIPS=true" \
      bash -c "[[ '$sidecar_spec' == *-fips\ * && '$sidecar_spec' == *'\"name\":\"XLATTICE_REQUIRE_FIPS\",\"value\":\"true\"'* ]]"
    check "... each sidecar: xlattice version says FIPS mode on, /metrics build_info fips=\"true\"" \
      bash -c "kubectl -n $FIPS_NS exec store-1 -c xlattice-sidecar -- xlattice version | grep -q 'AWS-LC FIPS .*FIPS mode: on' &&
        grep -q 'fips=\"true\"' <<<'$(fips_metric "/api/v1/namespaces/$FIPS_NS/pods/store-0:15090/proxy/metrics")'"
    fips_hello() {
      kubectl -n "$FIPS_NS" exec store-0 -c app -- member_app hello store-1 "fips" 2>/dev/null |
        grep -q "hello from store-1 on the cluster port" &&
        kubectl get --raw "/api/v1/namespaces/$FIPS_NS/pods/store-1:15090/proxy/metrics" |
        grep -q '^xlattice_sidecar_session_versions_total{port="cluster",version="hybrid"} [1-9]'
    }
    check "members on the FIPS module talk on the cluster port, hybrid (store-1's sidecar counts it)" eventually 30 fips_hello
  else
    bad "the FIPS cluster's StatefulSet not Ready"
    kubectl -n "$FIPS_NS" describe pods | tail -30 >&2
  fi
  # A sidecar image built without the feature, told to require FIPS: it must not serve.
  kubectl -n "$FIPS_NS" run not-fips --restart=Never --image="ghcr.io/xlattice/xlattice-sidecar:$APP_VERSION" \
    --env=XLATTICE_REQUIRE_FIPS=true -- run --cluster-port 7000 --client-port 8000 \
    --cluster-upstream 127.0.0.1:7001 --client-upstream 127.0.0.1:8001 >/dev/null
  not_fips_failed() { [[ $(kubectl -n "$FIPS_NS" get pod not-fips -o 'jsonpath={.status.phase}') == Failed ]]; }
  if eventually 60 not_fips_failed; then
    check "a non-FIPS sidecar under XLATTICE_REQUIRE_FIPS exits before it serves, saying why" \
      bash -c "kubectl -n $FIPS_NS logs not-fips 2>&1 | grep -q 'FIPS mode was required but is not in force'"
  else
    bad "a non-FIPS sidecar under XLATTICE_REQUIRE_FIPS did not exit: $(kubectl -n "$FIPS_NS" get pod not-fips -o 'jsonpath={.status.phase}')"
  fi
  kubectl delete namespace "$FIPS_NS" --timeout=120s >/dev/null
  if helm upgrade xlattice charts/xlattice-operator -n "$OP_NS" --reuse-values --set fips=false --wait --timeout 120s >/dev/null; then
    ok "fips=false again: the operator back on the default image"
  else
    bad "helm upgrade --set fips=false"
  fi
  eventually 60 one_operator_pod || true
  op_pod=$(kubectl -n "$OP_NS" get pods -l app.kubernetes.io/name=xlattice-operator -o 'jsonpath={.items[0].metadata.name}')
else
  step "fips: not run (XLATTICE_NODE_FIPS=1 and hack/node.sh images --fips run it; hack/test.sh does)"
fi

# ---------------------------------------------------------------------------------------
step "the operator pod killed: its Deployment brings it back, no identity changes"
# The StatefulSet members' identities, which must outlive anything: store-0..2 (store-2's
# pod is gone, its identity kept for memberGracePeriodSeconds) and db-0..1. Identities of
# pods that are gone for good may be reaped meanwhile, by design: not compared.
identities() {
  local ns pod ns_pod
  for ns_pod in "$NS/store-0" "$NS/store-1" "$NS/store-2" "$ROLL_NS/db-0" "$ROLL_NS/db-1"; do
    ns=${ns_pod%/*} pod=${ns_pod#*/}
    printf '%s=%s\n' "$ns_pod" "$(kubectl -n "$ns" get secret "xlattice-id-$pod" -o 'jsonpath={.data}' 2>/dev/null)"
  done
}
before=$(identities)
n_ids=$(grep -c '={"ck.pem":' <<<"$before" || true)
check "the 5 StatefulSet members' identities exist before the operator is killed" test "$n_ids" = 5
kubectl -n "$OP_NS" delete pod "$op_pod" --grace-period=0 --force >/dev/null 2>&1
new_op() { [[ $(kubectl -n "$OP_NS" get pods -l app.kubernetes.io/name=xlattice-operator --field-selector=status.phase=Running -o 'jsonpath={.items[?(@.status.containerStatuses[0].ready==true)].metadata.name}') =~ ^xlattice-operator- && $(kubectl -n "$OP_NS" get pods -l app.kubernetes.io/name=xlattice-operator -o name) != "pod/$op_pod" ]]; }
t0=$SECONDS
if eventually 120 new_op; then
  ok "a new operator pod is Ready $((SECONDS - t0))s after the old one was killed"
else
  bad "no new operator pod"
fi
sleep 5
check "the $n_ids StatefulSet members' identities unchanged (NodeIDs and keys) across the operator's death" test "$(identities)" = "$before"

# ---------------------------------------------------------------------------------------
step "reinstalled with kubectl apply -f deploy/: clusters and identities carry over"
helm uninstall xlattice -n "$OP_NS" --wait >/dev/null
PLAIN_APPLIED=1
t0=$SECONDS
# (kubectl warns that helm's leftovers, the CRD and the namespace, lack its annotation.)
if kubectl apply -f deploy/xlattice-crds.yaml -f deploy/xlattice-operator.yaml >/dev/null 2>"$TMP/apply.err" &&
  kubectl -n "$OP_NS" rollout status deployment/xlattice-operator --timeout=120s >/dev/null; then
  ok "the plain manifests install the operator; Ready $((SECONDS - t0))s after kubectl apply"
else
  bad "kubectl apply -f deploy/ did not bring the operator up: $(cat "$TMP/apply.err")"
fi
# store-2's identity outlived its pod (memberGracePeriodSeconds 300): a StatefulSet pod
# keeps its NodeID by name, through the operator's reinstall too.
kubectl -n "$NS" scale statefulset store --replicas=3 >/dev/null
if kubectl -n "$NS" rollout status statefulset/store --timeout=120s >/dev/null &&
  grep -q "identity loaded node_id=$(cat "$TMP/store-2/node-id")" <<<"$(sidecar_log "$NS" store-2)"; then
  ok "store-2 comes back injected by the reinstalled webhook, with the NodeID it had before"
else
  bad "store-2 did not come back with its NodeID"
fi
check "the StatefulSet members' identities unchanged after the reinstall and store-2's return" \
  test "$(identities)" = "$before"

printf '\n%s\n' "node tests: $failures failure(s)"
[[ $failures -eq 0 ]]
