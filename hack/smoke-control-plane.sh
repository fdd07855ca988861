#!/usr/bin/env bash
# hack/smoke-control-plane.sh: end-to-end check of hack/control-plane.sh.
# Installs (cached after the first run), brings a control plane up in a fresh
# state dir, checks what the operator's tests rely on, runs kwok, tears down,
# and checks that a second `up` after `down` works. Prints "N passed, N failed".
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CP=$HACK_DIR/control-plane.sh
DIR=$(mktemp -d "${TMPDIR:-/tmp}/xlattice-smoke.XXXXXX")
passed=0
failed=0

cleanup() { "$CP" down "$DIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT

check() { # NAME COMMAND...
  local name=$1
  shift
  if "$@" >/tmp/xlattice-smoke-last.log 2>&1; then
    passed=$((passed + 1))
    echo "ok   - $name"
  else
    failed=$((failed + 1))
    echo "FAIL - $name"
    sed 's/^/       /' /tmp/xlattice-smoke-last.log | tail -n 20
  fi
}

echo "installing (cached after the first run; the first one builds for several minutes)"
"$CP" install >"$DIR.install.log" 2>&1 || { cat "$DIR.install.log"; exit 1; }
rm -f "$DIR.install.log"
eval "$("$CP" env "$DIR")"

check "up" "$CP" up "$DIR"
check "status reports ready" "$CP" status "$DIR"
check "kubectl get ns" kubectl get ns default
check "networking.k8s.io/v1 served" bash -c 'kubectl api-versions | grep -qx networking.k8s.io/v1'
check "server version is v1.34.x" bash -c \
  'kubectl version -o json | grep -q "\"gitVersion\": \"v1\.34\.[0-9]*\""'
check "create namespace + ServiceAccount" bash -c \
  'kubectl create namespace smoke && kubectl -n smoke create serviceaccount op'
# shellcheck disable=SC2016 # expanded by the inner bash
check "TokenRequest authenticates as the ServiceAccount" bash -c '
  token=$(kubectl -n smoke create token op --duration=10m)
  server=$(kubectl config view --minify -o jsonpath="{.clusters[0].cluster.server}")
  # Token only: no kubeconfig, so no admin client certificate.
  kubectl --kubeconfig=/dev/null --server="$server" --certificate-authority="$1/pki/ca.crt" \
    --token="$token" auth whoami -o jsonpath="{.status.userInfo.username}" |
    grep -qx system:serviceaccount:smoke:op' _ "$DIR"
# shellcheck disable=SC2016 # expanded by the inner bash
check "RBAC is enforced for the ServiceAccount" bash -c '
  [[ $(kubectl auth can-i list pods -n smoke --as=system:serviceaccount:smoke:op) == no ]]'
check "CRD becomes Established" bash -c '
  cat <<EOF | kubectl apply -f -
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.xlattice.io}
spec:
  group: smoke.xlattice.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations: [{rule: "self.replicas <= 9", message: "at most 9"}]
            properties: {replicas: {type: integer}}
EOF
  kubectl wait --for=condition=Established crd/widgets.smoke.xlattice.io --timeout=60s'
check "CEL validation rejects a bad object" bash -c '
  ! printf "apiVersion: smoke.xlattice.io/v1\nkind: Widget\nmetadata: {name: w, namespace: smoke}\nspec: {replicas: 12}\n" |
    kubectl apply -f - 2>/dev/null'
check "kwok: scheduler + fake node" "$CP" kwok "$DIR"
# shellcheck disable=SC2016 # expanded by the inner bash
check "kwok: pod with a native sidecar becomes Ready with an IP" bash -c '
  cat <<EOF | kubectl apply -f -
apiVersion: v1
kind: Pod
metadata: {name: member-0, namespace: smoke}
spec:
  initContainers: [{name: sidecar, image: example/sidecar, restartPolicy: Always}]
  containers: [{name: member, image: example/member}]
EOF
  kubectl -n smoke wait --for=condition=Ready pod/member-0 --timeout=60s &&
  [[ -n $(kubectl -n smoke get pod member-0 -o jsonpath="{.status.podIP}") ]]'
check "down" "$CP" down "$DIR"
check "state dir removed" test ! -e "$DIR"
check "second up after down" "$CP" up "$DIR"
check "second up is ready" kubectl get ns default
check "second down" "$CP" down "$DIR"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
