#!/usr/bin/env bash
# hack/chart-test.sh: checks of the Helm chart, the plain manifests under deploy/ and the
# examples. Called by hack/test.sh; runs on its own too:
#
#   eval "$(hack/control-plane.sh env)"          # helm and kubectl on PATH
#   hack/chart-test.sh                           # static checks only
#   XLATTICE_KUBECONFIG=/tmp/xlattice-cp/kubeconfig hack/chart-test.sh   # + a real API server
#
# Static: helm lint (default and non-default values); what `helm template` renders, checked
# object by object in k8s-openapi types with the operator's own argument parser, golden
# renderings, refused values, monitoring switches, promtool on the alerts and the examples
# (all in operator/tests/chart.rs, run here and by `cargo test`); deploy/ in sync with the
# chart; the Containerfile's builder sees a whole workspace.
#
# With XLATTICE_KUBECONFIG (a running API server): deploy/ validated by the server (dry
# run); helm install into a fresh namespace with webhook.url (pods stay Pending: no
# kubelet, so no --wait); the RBAC bound to the operator's ServiceAccount; the examples
# accepted by the CRD (server dry run) and a bad cluster refused; helm upgrade to 2
# replicas adds the PDB; if an operator binary is at hand (XLATTICE_OPERATOR_BIN, default
# target/debug/xlattice-operator), it runs with the installed Deployment's args as the
# chart's ServiceAccount behind webhook.url: caBundle written, a member pod injected, and
# with it stopped (failurePolicy Fail) pods refused except in the release namespace,
# kube-system and opted-out namespaces; helm uninstall leaves no webhook configuration
# and keeps the CRD; `kubectl apply -f deploy/` for real, and `kubectl delete -f
# deploy/xlattice-operator.yaml` leaves no webhook configuration and keeps the CRD; the
# monitoring objects (all switched on) accepted by prometheus-operator's own CRDs (from its
# Go module), a misspelt field refused by name.
set -euo pipefail
cd "$(dirname "$0")/.."
CHART=charts/xlattice-operator
WEBHOOK=xlattice-sidecar-injector
CRD=xlatticeclusters.xlattice.io

failures=0
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v helm >/dev/null 2>&1 || die "helm is not on PATH; run: eval \"\$(hack/control-plane.sh env)\""
TMP=$(mktemp -d /tmp/xlattice-chart-test.XXXXXX)
LIVE_NS=""
LIVE_RELEASE=xlattice-chart-test
OPERATOR_PID=""
PLAIN_APPLIED=""
MONITORING_CRDS=()
cleanup() {
  if [[ ${#MONITORING_CRDS[@]} -gt 0 ]]; then
    kubectl delete crd "${MONITORING_CRDS[@]}" --wait=false >/dev/null 2>&1 || true
  fi
  if [[ -n $PLAIN_APPLIED ]]; then
    kubectl delete -f "$TMP/deploy-plain.yaml" --wait=false >/dev/null 2>&1 || true
  fi
  if [[ -n $OPERATOR_PID ]]; then
    kill "$OPERATOR_PID" 2>/dev/null || true
    wait "$OPERATOR_PID" 2>/dev/null || true
  fi
  if [[ -n $LIVE_NS ]]; then
    helm uninstall "$LIVE_RELEASE" -n "$LIVE_NS" >/dev/null 2>&1 || true
    kubectl delete namespace "$LIVE_NS" --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

APP_VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$CHART/Chart.yaml")

CUSTOM_VALUES=operator/tests/fixtures/chart/custom-values.yaml
URL=https://127.0.0.1:9443/mutate-pods
EXAMPLES=(deploy/examples/statefulset-cluster.yaml deploy/examples/deployment-cluster.yaml deploy/examples/client-job.yaml)

step "helm lint"
if helm lint "$CHART" >"$TMP/lint.out" 2>&1; then ok "helm lint (default values)"; else cat "$TMP/lint.out" >&2; bad "helm lint (default values)"; fi
if helm lint "$CHART" --namespace ops -f "$CUSTOM_VALUES" >"$TMP/lint.out" 2>&1; then ok "helm lint (non-default values)"; else cat "$TMP/lint.out" >&2; bad "helm lint (non-default values)"; fi

step "helm template: every rendering in k8s-openapi types, values refused, monitoring, alerts, examples (operator/tests/chart.rs)"
# --workspace: the features the rust phase built with, so nothing is rebuilt.
if cargo test --quiet --workspace --test chart >"$TMP/chart-rs.out" 2>&1; then
  ok "operator/tests/chart.rs: $(grep -o '[0-9]* passed' "$TMP/chart-rs.out" | tail -1)"
else
  cat "$TMP/chart-rs.out" >&2
  bad "operator/tests/chart.rs failed (above)"
fi

render() { # OUT NAMESPACE ARGS...
  local out=$1 ns=$2
  shift 2
  if ! helm template xlattice "$CHART" --namespace "$ns" "$@" >"$out" 2>"$out.err"; then
    cat "$out.err" >&2
    bad "helm template --namespace $ns $*"
    return 1
  fi
}

step "deploy/ is rendered from the chart"
if hack/render-deploy.sh --check >"$TMP/drift.out" 2>&1; then
  ok "$(paste -sd ';' "$TMP/drift.out")"
else
  cat "$TMP/drift.out" >&2
  bad "deploy/xlattice-crds.yaml or deploy/xlattice-operator.yaml differs from the chart: regenerate them with hack/render-deploy.sh and commit them"
fi
for f in charts/xlattice-operator/crds/xlatticeclusters.yaml deploy/crds/xlatticeclusters.yaml; do
  [[ -f $f ]] || bad "$f is missing"
done
if cmp -s charts/xlattice-operator/crds/xlatticeclusters.yaml deploy/crds/xlatticeclusters.yaml; then
  ok "charts/…/crds and deploy/crds hold the same CRD"
else
  bad "charts/xlattice-operator/crds/xlatticeclusters.yaml and deploy/crds/xlatticeclusters.yaml differ; regenerate both: cargo run -p xlattice-operator -- crd"
fi

step "the Containerfile's builder sees a whole workspace"
# Its COPY lines, replayed into an empty directory: cargo must load the workspace from what
# they copy (a member missing there fails every image build, which no engine runs here).
ctx=$(mktemp -d)
while read -r -a words; do
  dst=$ctx/${words[-1]}
  for src in "${words[@]:1:${#words[@]}-2}"; do
    if [[ -d $src ]]; then
      mkdir -p "$dst" && cp -r "$src/." "$dst/"
    elif [[ $dst == */ ]]; then
      mkdir -p "$dst" && cp "$src" "$dst"
    else
      mkdir -p "$(dirname "$dst")" && cp "$src" "$dst"
    fi
  done
done < <(awk '/^FROM /{builder = / AS builder$/} builder && /^COPY / && !/--from/' Containerfile)
if (cd "$ctx" && cargo metadata --offline --locked --format-version 1 >/dev/null 2>"$TMP/containerfile.err"); then
  ok "Containerfile: the COPY lines give cargo a loadable, locked workspace"
else
  bad "Containerfile: cargo cannot load the workspace its COPY lines build: $(head -n 3 "$TMP/containerfile.err" | paste -sd ' ')"
fi
rm -rf "$ctx"

# ---- against a real API server ----------------------------------------------------------
if [[ -z ${XLATTICE_KUBECONFIG:-} ]]; then
  step "XLATTICE_KUBECONFIG not set: skipping helm install/uninstall against an API server"
else
  export KUBECONFIG=$XLATTICE_KUBECONFIG
  command -v kubectl >/dev/null 2>&1 || die "kubectl is not on PATH; run: eval \"\$(hack/control-plane.sh env)\""
  step "real API server ($XLATTICE_KUBECONFIG)"
  kubectl get --raw /readyz >/dev/null || die "the API server of $XLATTICE_KUBECONFIG is not ready"
  if kubectl get mutatingwebhookconfiguration "$WEBHOOK" >/dev/null 2>&1; then
    die "a MutatingWebhookConfiguration $WEBHOOK exists already (left behind by another test or install?);
  owner: $(kubectl get mutatingwebhookconfiguration "$WEBHOOK" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-namespace}/{.metadata.annotations.meta\.helm\.sh/release-name}')
  remove it (kubectl delete mutatingwebhookconfiguration $WEBHOOK) and run again"
  fi
  LIVE_NS=xl-chart-test-$(date +%s)-$$
  kubectl create namespace "$LIVE_NS" >/dev/null

  # deploy/ as the server sees it (dry run; its namespace swapped for the fresh one).
  sed "s/xlattice-system/$LIVE_NS/g" deploy/xlattice-operator.yaml >"$TMP/deploy-live.yaml"
  if kubectl apply --dry-run=server -f deploy/xlattice-crds.yaml -f "$TMP/deploy-live.yaml" >"$TMP/apply.out" 2>&1; then
    ok "kubectl apply --dry-run=server -f deploy/xlattice-crds.yaml -f deploy/xlattice-operator.yaml ($(grep -cE '^[^ ]+ (created|configured|unchanged)' "$TMP/apply.out") objects)"
  else
    cat "$TMP/apply.out" >&2
    bad "the API server refuses deploy/xlattice-crds.yaml or deploy/xlattice-operator.yaml"
  fi

  if helm install "$LIVE_RELEASE" "$CHART" -n "$LIVE_NS" --set webhook.url=$URL --timeout 2m >"$TMP/install.out" 2>&1; then
    ok "helm install -n $LIVE_NS --set webhook.url=$URL"
  else
    cat "$TMP/install.out" >&2
    bad "helm install failed"
  fi
  kubectl wait --for condition=established --timeout=60s "crd/$CRD" >/dev/null 2>&1 ||
    bad "CRD $CRD is not established after helm install"
  got=$(kubectl get mutatingwebhookconfiguration "$WEBHOOK" -o jsonpath='{.webhooks[0].clientConfig.url} {.webhooks[0].namespaceSelector.matchExpressions[0].values}' 2>&1) || true
  if [[ $got == "$URL "*"\"$LIVE_NS\""*'"kube-system"'* ]]; then
    ok "webhook configuration installed: url $URL, excludes $LIVE_NS and kube-system"
  else
    bad "webhook configuration not as expected: $got"
  fi
  kubectl -n "$LIVE_NS" get deployment/xlattice-operator serviceaccount/xlattice-operator service/xlattice-operator >/dev/null ||
    bad "Deployment, ServiceAccount or Service missing after helm install"
  # The operator's RBAC, bound to the ServiceAccount the Deployment runs as.
  sa=system:serviceaccount:$LIVE_NS:xlattice-operator
  for q in "list pods --all-namespaces" "patch mutatingwebhookconfigurations/$WEBHOOK" \
    "get leases/xlattice-operator -n $LIVE_NS" "update xlatticeclusters.xlattice.io/status -n default" \
    "create rolebindings -n default" "bind clusterroles/xlattice-operator-identities"; do
    # shellcheck disable=SC2086 # $q holds several arguments
    if [[ $(kubectl auth can-i --as="$sa" $q 2>/dev/null) == yes ]]; then ok "operator can $q"; else bad "operator cannot $q (RBAC)"; fi
  done
  # Secrets only through the identities role it binds where clusters are (operator/tests/
  # least_privilege.rs tries that binding everywhere as the ServiceAccount).
  for q in "delete mutatingwebhookconfigurations/other" "list secrets -n kube-system" "create secrets -n default" \
    "bind clusterroles/admin"; do
    # shellcheck disable=SC2086
    if [[ $(kubectl auth can-i --as="$sa" $q 2>/dev/null) == no ]]; then ok "operator cannot $q"; else bad "operator can $q (RBAC)"; fi
  done

  for f in "${EXAMPLES[@]}"; do
    if kubectl apply --dry-run=server -n "$LIVE_NS" -f "$f" >"$TMP/ex.out" 2>&1; then
      ok "kubectl apply --dry-run=server $f"
    else
      cat "$TMP/ex.out" >&2
      bad "the API server refuses $f"
    fi
  done
  cat >"$TMP/bad-cluster.yaml" <<'EOF'
apiVersion: xlattice.io/v1alpha1
kind: XLatticeCluster
metadata:
  name: bad
spec:
  selector: {matchLabels: {app: bad}}
  clusterPort: 7000
  clientPort: 7000
EOF
  if kubectl apply --dry-run=server -n "$LIVE_NS" -f "$TMP/bad-cluster.yaml" >"$TMP/ex.out" 2>&1; then
    bad "an XLatticeCluster with clusterPort == clientPort was accepted"
  elif grep -q "clientPort" "$TMP/ex.out"; then
    ok "a bad XLatticeCluster is refused: $(grep -o 'spec[^:]*: [^,]*' "$TMP/ex.out" | head -1)"
  else
    cat "$TMP/ex.out" >&2
    bad "a bad XLatticeCluster was refused without naming the field"
  fi

  # The monitoring objects, all switched on, as prometheus-operator's own CRDs define them
  # (strict field validation: a misspelt or misplaced field is refused, not dropped).
  if crds=$(hack/promtool.sh crds 2>"$TMP/crds.err"); then
    for kind in servicemonitors podmonitors prometheusrules; do
      if ! kubectl get crd "$kind.monitoring.coreos.com" >/dev/null 2>&1; then
        kubectl apply --server-side -f "$crds/monitoring.coreos.com_$kind.yaml" >/dev/null
        MONITORING_CRDS+=("$kind.monitoring.coreos.com")
      fi
    done
    kubectl wait --for=condition=Established crd/servicemonitors.monitoring.coreos.com \
      crd/podmonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com --timeout=30s >/dev/null
    render "$TMP/monitoring-live.yaml" "$LIVE_NS" --set monitoring.labels.release=prom \
      --set monitoring.dashboard.enabled=true --set monitoring.serviceMonitor.enabled=true \
      --set monitoring.podMonitor.enabled=true --set monitoring.prometheusRule.enabled=true \
      --show-only templates/servicemonitor.yaml --show-only templates/podmonitor.yaml \
      --show-only templates/prometheusrule.yaml --show-only templates/dashboard.yaml
    if kubectl apply --dry-run=server -f "$TMP/monitoring-live.yaml" >"$TMP/mon.out" 2>&1; then
      ok "ServiceMonitor, PodMonitor, PrometheusRule (and the dashboard ConfigMap) accepted by prometheus-operator's CRDs ($(grep -o 'prometheus-operator@[^/]*' <<<"$crds"); server dry run)"
    else
      cat "$TMP/mon.out" >&2
      bad "the API server refuses the chart's monitoring objects"
    fi
    # That validation bites: a misspelt field in the PodMonitor is refused by name.
    sed 's/podMetricsEndpoints:/podMetricsEndpointz:/' "$TMP/monitoring-live.yaml" >"$TMP/monitoring-bad.yaml"
    if kubectl apply --dry-run=server -f "$TMP/monitoring-bad.yaml" >"$TMP/mon.out" 2>&1; then
      bad "a PodMonitor with a misspelt field was accepted: the CRD validation is not in force"
    elif grep -q podMetricsEndpointz "$TMP/mon.out"; then
      ok "a misspelt PodMonitor field is refused by name"
    else
      cat "$TMP/mon.out" >&2
      bad "a misspelt PodMonitor field was refused without naming it"
    fi
  else
    cat "$TMP/crds.err" >&2
    bad "prometheus-operator's CRDs unavailable (hack/promtool.sh crds; hack/setup.sh fetches them)"
  fi

  # Upgrade: more replicas bring the PDB; the CRD and the webhook stay.
  if helm upgrade "$LIVE_RELEASE" "$CHART" -n "$LIVE_NS" --reuse-values --set replicas=2 --timeout 2m >"$TMP/upgrade.out" 2>&1; then
    ok "helm upgrade --set replicas=2"
    [[ $(kubectl -n "$LIVE_NS" get deployment xlattice-operator -o jsonpath='{.spec.replicas}') == 2 ]] || bad "Deployment not scaled to 2 by the upgrade"
    if kubectl -n "$LIVE_NS" get poddisruptionbudget xlattice-operator >/dev/null 2>&1; then
      ok "PodDisruptionBudget created"
    else
      bad "no PodDisruptionBudget after upgrading to 2 replicas"
    fi
  else
    cat "$TMP/upgrade.out" >&2
    bad "helm upgrade failed"
  fi

  # The chart's webhook configuration with the real operator behind it: the operator
  # binary runs on this host as the chart's ServiceAccount (token), with the args of the
  # installed Deployment (addresses moved to free loopback ports). Checks: the args parse,
  # the RBAC suffices to start, the caBundle gets written, a member pod gets the sidecar,
  # and with the operator gone (failurePolicy Fail) pods are refused except in the
  # release namespace, kube-system and opted-out namespaces.
  OPERATOR_BIN=${XLATTICE_OPERATOR_BIN:-${CARGO_TARGET_DIR:-target}/debug/xlattice-operator}
  if [[ ! -x $OPERATOR_BIN ]]; then
    step "no operator binary at $OPERATOR_BIN (cargo build, or set XLATTICE_OPERATOR_BIN): skipping injection through the chart's webhook"
  else
    step "injection through the chart's webhook by $OPERATOR_BIN"
    WPORT=$(free_port)
    MPORT=$(USED_PORTS=$WPORT free_port)
    WURL=https://127.0.0.1:$WPORT/mutate-pods
    helm upgrade "$LIVE_RELEASE" "$CHART" -n "$LIVE_NS" --reuse-values --set replicas=1 --set webhook.url="$WURL" \
      --timeout 2m >"$TMP/upgrade.out" 2>&1 || { cat "$TMP/upgrade.out" >&2; bad "helm upgrade --set webhook.url=$WURL failed"; }
    # Its addresses moved to the free loopback ports.
    op_args=()
    while IFS= read -r arg; do
      case $arg in
      --metrics-addr=*) arg=--metrics-addr=127.0.0.1:$MPORT ;;
      --webhook-addr=*) arg=--webhook-addr=127.0.0.1:$WPORT ;;
      esac
      op_args+=("$arg")
    done < <(kubectl -n "$LIVE_NS" get deployment xlattice-operator -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')
    sa_kubeconfig "$LIVE_NS" xlattice-operator "$TMP/operator.kubeconfig"
    KUBECONFIG=$TMP/operator.kubeconfig POD_NAMESPACE=$LIVE_NS POD_NAME=chart-test-operator RUST_LOG=info \
      "$OPERATOR_BIN" "${op_args[@]}" >"$TMP/operator.log" 2>&1 &
    OPERATOR_PID=$!
    ready=""
    for _ in $(seq 1 120); do
      kill -0 "$OPERATOR_PID" 2>/dev/null || break
      if curl -sf "http://127.0.0.1:$MPORT/readyz" >/dev/null 2>&1 &&
        [[ -n $(kubectl get mutatingwebhookconfiguration "$WEBHOOK" -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ]]; then
        ready=1
        break
      fi
      sleep 0.5
    done
    if [[ -n $ready ]]; then
      ok "operator started with the chart's args (${op_args[*]:0:3} …) as ServiceAccount $LIVE_NS/xlattice-operator; caBundle written"
    else
      tail -20 "$TMP/operator.log" >&2
      bad "the operator did not become ready or did not write the caBundle within 60 s (log above)"
    fi

    APP_NS=xl-chart-app-$(date +%s)-$$
    kubectl create namespace "$APP_NS" >/dev/null
    pod() { # NAMESPACE NAME [LABEL=VALUE]
      local labels=""
      [[ -n ${3:-} ]] && labels="labels: {${3%%=*}: ${3#*=}}"
      kubectl apply -n "$1" -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $2, $labels}
spec:
  containers: [{name: app, image: registry.k8s.io/pause:3.10}]
EOF
    }
    if [[ -n $ready ]]; then
      kubectl apply -n "$APP_NS" -f deploy/examples/statefulset-cluster.yaml >/dev/null
      if pod "$APP_NS" store-0 app.kubernetes.io/name=store >"$TMP/pod.out" 2>&1; then
        got=$(kubectl -n "$APP_NS" get pod store-0 -o jsonpath='{.spec.initContainers[0].name} {.spec.initContainers[0].image} {.spec.initContainers[0].restartPolicy} {.spec.volumes[*].secret.secretName} {.spec.volumes[*].projected.sources[15].configMap.name}')
        want="xlattice-sidecar ghcr.io/xlattice/xlattice-sidecar:$APP_VERSION Always xlattice-id-store-0 store-directory-15"
        if [[ $got == "$want" ]]; then ok "member pod injected: $got"; else bad "member pod not injected as expected: got '$got', want '$want'"; fi
      else
        cat "$TMP/pod.out" >&2
        bad "creating a member pod failed with the operator running"
      fi
      if pod "$APP_NS" bystander >/dev/null 2>&1 && [[ -z $(kubectl -n "$APP_NS" get pod bystander -o jsonpath='{.spec.initContainers}') ]]; then
        ok "a pod of no cluster is admitted unchanged"
      else
        bad "a pod of no cluster was refused or changed"
      fi
      # Let the operator remove its finalizer while it runs.
      kubectl -n "$APP_NS" delete xlatticecluster store --timeout=60s >/dev/null 2>&1 || bad "XLatticeCluster store was not deleted (finalizer) within 60 s"
    fi
    kill "$OPERATOR_PID" 2>/dev/null || true
    wait "$OPERATOR_PID" 2>/dev/null || true
    OPERATOR_PID=""

    # failurePolicy Fail with no webhook serving.
    if pod "$APP_NS" refused >"$TMP/pod.out" 2>&1; then
      bad "with the operator down and failurePolicy Fail, a pod in $APP_NS was admitted"
    elif grep -q "inject.xlattice.io" "$TMP/pod.out"; then
      ok "operator down: pods in served namespaces are refused ($(grep -o 'failed calling webhook "[^"]*"' "$TMP/pod.out" | head -1))"
    else
      cat "$TMP/pod.out" >&2
      bad "pod refused for another reason than the webhook"
    fi
    for ns in "$LIVE_NS" kube-system; do
      if pod "$ns" xl-chart-test-$$ >"$TMP/pod.out" 2>&1; then
        ok "operator down: pods in $ns are still admitted (never sent to the webhook)"
        kubectl -n "$ns" delete pod "xl-chart-test-$$" --wait=false >/dev/null 2>&1 || true
      else
        cat "$TMP/pod.out" >&2
        bad "operator down: a pod in $ns was refused; the operator could not restart"
      fi
    done
    kubectl label namespace "$APP_NS" xlattice.io/injection=disabled >/dev/null
    if pod "$APP_NS" opted-out >"$TMP/pod.out" 2>&1; then
      ok "operator down: a namespace labelled xlattice.io/injection=disabled is not sent to the webhook"
    else
      cat "$TMP/pod.out" >&2
      bad "the xlattice.io/injection=disabled namespace label does not bypass the webhook"
    fi
    kubectl delete namespace "$APP_NS" --wait=false >/dev/null 2>&1 || true
  fi

  # After an uninstall: no webhook left to block pod creation, the CRD (and so every
  # XLatticeCluster and identity) kept.
  uninstalled_cleanly() {
    if kubectl get mutatingwebhookconfiguration "$WEBHOOK" >/dev/null 2>&1; then
      bad "$1 left MutatingWebhookConfiguration $WEBHOOK behind: it would block pod creation"
    else
      ok "no MutatingWebhookConfiguration left after $1"
    fi
    if kubectl get crd "$CRD" >/dev/null 2>&1; then
      ok "CRD $CRD kept after $1 (XLatticeClusters and identities survive)"
    else
      bad "CRD $CRD was deleted by $1"
    fi
  }
  if helm uninstall "$LIVE_RELEASE" -n "$LIVE_NS" >"$TMP/uninstall.out" 2>&1; then
    ok "helm uninstall"
  else
    cat "$TMP/uninstall.out" >&2
    bad "helm uninstall failed"
  fi
  uninstalled_cleanly "helm uninstall"
  for o in deployment/xlattice-operator service/xlattice-operator serviceaccount/xlattice-operator; do
    if kubectl -n "$LIVE_NS" get "$o" >/dev/null 2>&1; then bad "$o left after helm uninstall"; fi
  done
  for o in clusterrole/xlattice-operator clusterrolebinding/xlattice-operator; do
    if kubectl get "$o" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-namespace}' 2>/dev/null | grep -qx "$LIVE_NS"; then
      bad "$o left after helm uninstall"
    fi
  done

  # The plain manifests for real, as `kubectl apply -f deploy/` (namespace swapped for a
  # fresh one: namespaces never finish deleting on a bare API server), then their
  # uninstall: `kubectl delete -f deploy/xlattice-operator.yaml` keeps the CRD.
  PLAIN_NS=$LIVE_NS-plain
  sed "s/xlattice-system/$PLAIN_NS/g" deploy/xlattice-operator.yaml >"$TMP/deploy-plain.yaml"
  PLAIN_APPLIED=1
  if kubectl apply -f deploy/xlattice-crds.yaml -f "$TMP/deploy-plain.yaml" >"$TMP/apply.out" 2>&1; then
    ok "kubectl apply -f deploy/ ($(grep -cE '^[^ ]+ (created|configured|unchanged)' "$TMP/apply.out") objects, namespace $PLAIN_NS)"
  else
    cat "$TMP/apply.out" >&2
    bad "kubectl apply -f deploy/ failed"
  fi
  kubectl -n "$PLAIN_NS" get deployment/xlattice-operator role/xlattice-operator rolebinding/xlattice-operator >/dev/null ||
    bad "deploy/: Deployment, Role or RoleBinding not in namespace $PLAIN_NS"
  if kubectl delete -f "$TMP/deploy-plain.yaml" --wait=false >"$TMP/delete.out" 2>&1; then
    ok "kubectl delete -f deploy/xlattice-operator.yaml"
  else
    cat "$TMP/delete.out" >&2
    bad "kubectl delete -f deploy/xlattice-operator.yaml failed"
  fi
  PLAIN_APPLIED=""
  uninstalled_cleanly "kubectl delete -f deploy/xlattice-operator.yaml"

  kubectl delete namespace "$LIVE_NS" --wait=false >/dev/null 2>&1 || true
  LIVE_NS=""
fi

echo
if [[ $failures -gt 0 ]]; then
  echo "chart-test: $failures check(s) FAILED" >&2
  exit 1
fi
echo "chart-test: all checks passed"
