#!/usr/bin/env bash
# hack/chart-test.sh: checks of the Helm chart, the plain manifests under deploy/ and the
# examples. Called by hack/test.sh; runs on its own too:
#
#   eval "$(hack/control-plane.sh env)"          # helm and kubectl on PATH
#   hack/chart-test.sh                           # static checks only
#   XLATTICE_KUBECONFIG=/tmp/xlattice-cp/kubeconfig hack/chart-test.sh   # + a real API server
#
# Static: helm lint (default and non-default values); helm template with default,
# non-default, webhook.url and webhook-disabled values, each rendering checked object by
# object (replicas, PDB only when replicas > 1, securityContext, probes, operator flags
# against operator/src/main.rs, webhook rules and namespace exclusions, url override); bad
# values refused with a message naming the field; the monitoring objects (dashboard
# ConfigMap, ServiceMonitor, PodMonitor, PrometheusRule) absent by default, each rendered by
# its own switch, and the dashboard JSON parsing; the PrometheusRule (default values) as a
# plain rules file through `promtool check rules` and `promtool test rules` with
# hack/monitoring/alerts.test.yaml (each alert fires when it should, with its labels and
# annotations, and not when it should not); deploy/ in sync with the chart; the
# examples consistent with their XLatticeCluster.
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
command -v python3 >/dev/null 2>&1 || die "python3 is required"
# promtool (hack/promtool.sh install; hack/setup.sh builds it): on PATH after
# eval "$(hack/control-plane.sh env)", else from the cache. Missing, the alert checks FAIL.
PROMTOOL=${XLATTICE_PROMTOOL:-$(command -v promtool || hack/promtool.sh path 2>/dev/null || true)}
ALERT_TESTS=hack/monitoring/alerts.test.yaml

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

# Structured access to rendered YAML: PyYAML when present, else kubectl's JSON (which
# needs an API server for the kinds, hence XLATTICE_KUBECONFIG).
if python3 -c 'import yaml' 2>/dev/null; then
  LOADER=yaml
elif [[ -n ${XLATTICE_KUBECONFIG:-} ]] && command -v kubectl >/dev/null 2>&1; then
  LOADER=kubectl
else
  die "need PyYAML (python3 -m pip install pyyaml) or XLATTICE_KUBECONFIG + kubectl to parse rendered manifests"
fi
export LOADER

# ---- the checker ---------------------------------------------------------------------
cat >"$TMP/check.py" <<'PY'
"""Checks a `helm template` rendering of the chart against expectations (JSON, argv[2])."""
import json, os, re, subprocess, sys

def load(path, namespace):
    if os.environ["LOADER"] == "yaml":
        import yaml
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d]
    # kubectl puts objects without a namespace (as helm install would) in --namespace.
    out = subprocess.run(
        ["kubectl", "--kubeconfig", os.environ["XLATTICE_KUBECONFIG"], "create", "--dry-run=client",
         "--validate=false", "--namespace", namespace, "-o", "json", "-f", path],
        check=True, capture_output=True, text=True).stdout
    # One JSON document per object, concatenated (or one List).
    docs, i, dec = [], 0, json.JSONDecoder()
    while i < len(out):
        if out[i].isspace():
            i += 1
            continue
        doc, i = dec.raw_decode(out, i)
        docs.extend(doc["items"] if doc.get("kind") == "List" else [doc])
    return docs

def operator_flags():
    """Long flags of `xlattice-operator run`, read from operator/src/main.rs."""
    src = open("operator/src/main.rs").read()
    body = re.search(r"struct RunArgs\s*\{(.*?)\n\}", src, re.S).group(1)
    flags, envs, attrs = set(), set(), []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("#[arg("):
            attrs.append(line)
            envs.update(re.findall(r'env\s*=\s*"([^"]+)"', line))
        m = re.match(r"(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:", line)
        if m:
            longs = [x for a in attrs for x in re.findall(r'long\s*=\s*"([^"]+)"', a)]
            flags.add(longs[0] if longs else m.group(1).replace("_", "-"))
            attrs = []
    return flags, envs

errors = []
def check(cond, what):
    if not cond:
        errors.append(what)
    return cond

want = json.loads(sys.argv[2])
ns = want["namespace"]
objs = load(sys.argv[1], ns)
by_kind = {}
for o in objs:
    by_kind.setdefault(o["kind"], []).append(o)
def one(kind, name=None):
    found = [o for o in by_kind.get(kind, []) if name is None or o["metadata"]["name"] == name]
    check(len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}")
    return found[0] if found else {}

# Deployment
dep = one("Deployment", "xlattice-operator")
check(dep.get("metadata", {}).get("namespace") == ns, f"Deployment namespace {dep.get('metadata', {}).get('namespace')} != {ns}")
spec = dep.get("spec", {})
check(spec.get("replicas") == want["replicas"], f"replicas {spec.get('replicas')} != {want['replicas']}")
pod = spec.get("template", {}).get("spec", {})
labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
sel = spec.get("selector", {}).get("matchLabels", {})
check(sel and all(labels.get(k) == v for k, v in sel.items()), "Deployment selector does not match its pod labels")
psc = pod.get("securityContext", {})
check(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot is not true")
check(psc.get("runAsUser") == 65532, f"pod securityContext.runAsUser {psc.get('runAsUser')} != 65532")
check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile is not RuntimeDefault")
containers = pod.get("containers", [])
check(len(containers) == 1, f"{len(containers)} containers in the operator pod, expected 1")
c = containers[0] if containers else {}
csc = c.get("securityContext", {})
check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"capabilities.drop {csc.get('capabilities')} != [ALL]")
check(csc.get("runAsNonRoot") is True and csc.get("runAsUser") == 65532, "container does not run as non-root uid 65532")
check(csc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccompProfile is not RuntimeDefault")
check(c.get("image") == want["operatorImage"], f"operator image {c.get('image')} != {want['operatorImage']}")
check(c.get("imagePullPolicy") == want["pullPolicy"], f"imagePullPolicy {c.get('imagePullPolicy')} != {want['pullPolicy']}")
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
check(ports.get("metrics") == want["metricsPort"], f"metrics containerPort {ports.get('metrics')} != {want['metricsPort']}")
for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
    get = c.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path and get.get("port") in ("metrics", want["metricsPort"]),
          f"{probe} is not GET {path} on the metrics port: {get}")
if want.get("resources"):
    check(c.get("resources") == want["resources"], f"operator resources {c.get('resources')} != {want['resources']}")

# Operator flags: every flag the chart passes exists in operator/src/main.rs.
args = c.get("args", [])
check(args[:1] == ["run"], f"operator args do not start with 'run': {args[:1]}")
known, known_envs = operator_flags()
flags = {}
for a in args[1:]:
    m = re.match(r"--([a-z0-9-]+)(?:=(.*))?$", a)
    if not check(m, f"operator arg {a!r} is not --flag[=value]"):
        continue
    check(m.group(1) in known, f"operator has no flag --{m.group(1)} (operator/src/main.rs RunArgs: {sorted(known)})")
    flags.setdefault(m.group(1), []).append(m.group(2))
def flag(name):
    return (flags.get(name) or [None])[-1]
check(flag("sidecar-image") == want["sidecarImage"], f"--sidecar-image {flag('sidecar-image')} != {want['sidecarImage']}")
check(flag("sidecar-pull-policy") == want["sidecarPullPolicy"], f"--sidecar-pull-policy {flag('sidecar-pull-policy')} != {want['sidecarPullPolicy']}")
for f, v in want["sidecarResources"].items():
    check(flag(f) == v, f"--{f} {flag(f)} != {v}")
check(flag("metrics-addr") == f"0.0.0.0:{want['metricsPort']}", f"--metrics-addr {flag('metrics-addr')}")
check(flag("leader-elect") == "true", f"--leader-elect {flag('leader-elect')} != true")
check(flag("lease-name") == "xlattice-operator", "--lease-name is not xlattice-operator (the name rbac/roles.yaml grants)")
check(flag("lease-seconds") == str(want["leaseSeconds"]), f"--lease-seconds {flag('lease-seconds')} != {want['leaseSeconds']}")
check(("log-json" in flags) == want["logJson"], f"--log-json present: {'log-json' in flags}, want {want['logJson']}")
check(flag("keygen-threads") == want.get("keygenThreads"), f"--keygen-threads {flag('keygen-threads')} != {want.get('keygenThreads')}")
check(("require-fips" in flags) == want.get("requireFips", False), f"--require-fips present: {'require-fips' in flags}, want {want.get('requireFips', False)}")
env = {e["name"]: e for e in c.get("env", [])}
for name, path in (("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")):
    check(env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == path, f"env {name} is not the downward API {path}")
    check(name in known_envs, f"env {name} is not read by the operator (operator/src/main.rs)")
check(env.get("RUST_LOG", {}).get("value", "").startswith(want["logLevel"]), f"RUST_LOG {env.get('RUST_LOG')} does not start with {want['logLevel']}")

# ServiceAccount and its bindings
sa_name = pod.get("serviceAccountName")
sa = one("ServiceAccount", sa_name)
check(sa.get("metadata", {}).get("namespace") == ns, "ServiceAccount is not in the release namespace")
for kind in ("ClusterRoleBinding", "RoleBinding"):
    for b in by_kind.get(kind, []):
        subj = [s for s in b.get("subjects", []) if s.get("kind") == "ServiceAccount"]
        check(any(s.get("name") == sa_name and s.get("namespace") == ns for s in subj),
              f"{kind} {b['metadata']['name']} does not bind ServiceAccount {ns}/{sa_name}")
check(by_kind.get("ClusterRole") and by_kind.get("Role"), "RBAC roles (ClusterRole, Role) are missing")

# PodDisruptionBudget only with more than one replica
pdbs = by_kind.get("PodDisruptionBudget", [])
if want["replicas"] > 1:
    if check(len(pdbs) == 1, f"replicas {want['replicas']} but {len(pdbs)} PodDisruptionBudgets"):
        pdb = pdbs[0]["spec"]
        check(pdb.get("minAvailable") == want["minAvailable"], f"PDB minAvailable {pdb.get('minAvailable')} != {want['minAvailable']}")
        check(pdb.get("selector", {}).get("matchLabels") == sel, "PDB selector differs from the Deployment's")
    check("podAntiAffinity" in pod.get("affinity", {}), "replicas > 1 without pod anti-affinity")
else:
    check(not pdbs, f"replicas 1 but a PodDisruptionBudget is rendered")

# Service: 443 -> webhook port, metrics when enabled
svc = one("Service", "xlattice-operator")
sports = {p["name"]: p for p in svc.get("spec", {}).get("ports", [])}
check(svc.get("spec", {}).get("selector") == sel, "Service selector differs from the Deployment's")
if want["webhookEnabled"]:
    check(sports.get("webhook", {}).get("port") == 443 and sports["webhook"].get("targetPort") == "webhook",
          f"Service webhook port is not 443 -> webhook: {sports.get('webhook')}")
    check(ports.get("webhook") == want["webhookPort"], f"webhook containerPort {ports.get('webhook')} != {want['webhookPort']}")
    check(flag("webhook-addr") == f"0.0.0.0:{want['webhookPort']}", f"--webhook-addr {flag('webhook-addr')}")
    check(flag("webhook-service") == svc["metadata"]["name"], "--webhook-service is not the Service's name")
    check(sorted(flags.get("webhook-san", [])) == sorted(want["sans"]), f"--webhook-san {flags.get('webhook-san')} != {want['sans']}")
else:
    check("no-webhook" in flags, "webhook disabled but --no-webhook not passed")
check(("metrics" in sports) == want["metrics"], f"metrics Service port present: {'metrics' in sports}, want {want['metrics']}")
annotations = spec.get("template", {}).get("metadata", {}).get("annotations", {})
check(("prometheus.io/scrape" in annotations) == want["metrics"], "prometheus.io annotations do not follow metrics.enabled")

# The webhook configuration
mwcs = by_kind.get("MutatingWebhookConfiguration", [])
if not want["webhookEnabled"]:
    check(not mwcs, "webhook disabled but a MutatingWebhookConfiguration is rendered")
elif check(len(mwcs) == 1, f"{len(mwcs)} MutatingWebhookConfigurations"):
    mwc = mwcs[0]
    check(mwc["metadata"]["name"] == "xlattice-sidecar-injector", f"webhook configuration is named {mwc['metadata']['name']}, the operator patches xlattice-sidecar-injector")
    hooks = mwc.get("webhooks", [])
    check(len(hooks) == 1, f"{len(hooks)} webhooks")
    h = hooks[0] if hooks else {}
    check(h.get("sideEffects") == "None", "sideEffects is not None")
    check(h.get("admissionReviewVersions") == ["v1"], "admissionReviewVersions is not [v1]")
    check(h.get("failurePolicy") == want["failurePolicy"], f"failurePolicy {h.get('failurePolicy')} != {want['failurePolicy']}")
    check(h.get("timeoutSeconds") == want["timeoutSeconds"], f"timeoutSeconds {h.get('timeoutSeconds')} != {want['timeoutSeconds']}")
    rules = h.get("rules", [])
    check(rules and all(r.get("operations") == ["CREATE"] and r.get("resources") == ["pods"] and r.get("apiGroups") == [""] for r in rules),
          f"rules are not pods CREATE: {rules}")
    cc = h.get("clientConfig", {})
    if want.get("url"):
        check(cc.get("url") == want["url"] and "service" not in cc, f"clientConfig is not url {want['url']}: {cc}")
    else:
        s = cc.get("service", {})
        check("url" not in cc and s.get("name") == svc["metadata"]["name"] and s.get("namespace") == ns
              and s.get("port") == 443 and s.get("path") == "/mutate-pods", f"clientConfig.service is wrong: {cc}")
    exprs = h.get("namespaceSelector", {}).get("matchExpressions", [])
    notin = set(v for e in exprs if e.get("key") == "kubernetes.io/metadata.name" and e.get("operator") == "NotIn" for v in e.get("values", []))
    for n in [ns, "kube-system"] + want.get("alsoExcluded", []):
        check(n in notin, f"the webhook's namespaceSelector does not exclude namespace {n!r} (NotIn: {sorted(notin)})")
    isin = [e.get("values") for e in exprs if e.get("key") == "kubernetes.io/metadata.name" and e.get("operator") == "In"]
    check(isin == ([want["namespacesIn"]] if want.get("namespacesIn") else []), f"namespaceSelector In {isin} != {want.get('namespacesIn')}")
    if want.get("namespaceMatchLabels"):
        check(h.get("namespaceSelector", {}).get("matchLabels") == want["namespaceMatchLabels"], "namespaceSelector.matchLabels not rendered")
    if want.get("objectSelector"):
        check(h.get("objectSelector") == want["objectSelector"], f"objectSelector {h.get('objectSelector')} != {want['objectSelector']}")

# No object lands in another namespace.
for o in objs:
    n = o.get("metadata", {}).get("namespace")
    check(n in (None, ns), f"{o['kind']} {o['metadata']['name']} is in namespace {n}, not {ns}")

if errors:
    for e in errors:
        print(f"  FAIL {sys.argv[3]}: {e}", file=sys.stderr)
    sys.exit(1)
print(f"  ok   {sys.argv[3]}: {len(objs)} objects checked")
PY

check_render() { # NAME FILE EXPECTATIONS-JSON
  if python3 "$TMP/check.py" "$2" "$3" "$1"; then :; else bad "$1: rendering does not meet expectations (above)"; fi
}

APP_VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$CHART/Chart.yaml")

# ---- non-default values -------------------------------------------------------------
DIGEST=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
cat >"$TMP/custom-values.yaml" <<EOF
replicas: 3
image:
  repository: registry.example.com/xl/operator
  tag: "1.2.3"
  pullPolicy: Always
sidecar:
  image:
    repository: registry.example.com/xl/sidecar
    tag: "1.2.3"
    digest: $DIGEST
    pullPolicy: Never
  resources:
    requests: {cpu: 50m, memory: 48Mi}
    limits: {memory: 96Mi}
logLevel: debug
logFormat: json
resources:
  requests: {cpu: 250m, memory: 128Mi}
  limits: {cpu: "2", memory: 512Mi}
keygenThreads: 4
leaderElection: {enabled: true, leaseDurationSeconds: 20}
webhook:
  port: 10443
  failurePolicy: Ignore
  timeoutSeconds: 5
  namespaces: [apps, data]
  excludeNamespaces: [monitoring]
  namespaceSelector:
    matchLabels: {team: storage}
  objectSelector:
    matchExpressions: [{key: xlattice.io/skip, operator: DoesNotExist}]
  extraSANs: [xlattice.example.com]
metrics: {enabled: false, port: 9090}
podDisruptionBudget: {minAvailable: 2}
serviceAccount: {annotations: {example.com/role: operator}}
podAnnotations: {example.com/team: storage}
priorityClassName: system-cluster-critical
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
EOF

step "helm lint"
if helm lint "$CHART" >"$TMP/lint.out" 2>&1; then ok "helm lint (default values)"; else cat "$TMP/lint.out" >&2; bad "helm lint (default values)"; fi
if helm lint "$CHART" --namespace ops -f "$TMP/custom-values.yaml" >"$TMP/lint.out" 2>&1; then ok "helm lint (non-default values)"; else cat "$TMP/lint.out" >&2; bad "helm lint (non-default values)"; fi

step "helm template and rendered objects"
render() { # OUT NAMESPACE ARGS...
  local out=$1 ns=$2
  shift 2
  if ! helm template xlattice "$CHART" --namespace "$ns" "$@" >"$out" 2>"$out.err"; then
    cat "$out.err" >&2
    bad "helm template --namespace $ns $*"
    return 1
  fi
}
if render "$TMP/default.yaml" xlattice-system; then
  check_render "default values" "$TMP/default.yaml" "$(cat <<EOF
{"namespace": "xlattice-system", "replicas": 1, "operatorImage": "ghcr.io/xlattice/xlattice-operator:$APP_VERSION",
 "pullPolicy": "IfNotPresent", "sidecarImage": "ghcr.io/xlattice/xlattice-sidecar:$APP_VERSION", "sidecarPullPolicy": "IfNotPresent",
 "sidecarResources": {"sidecar-cpu-request": "10m", "sidecar-memory-request": "32Mi", "sidecar-memory-limit": "128Mi"},
 "metricsPort": 8080, "webhookPort": 9443, "metrics": true, "webhookEnabled": true, "failurePolicy": "Fail", "timeoutSeconds": 10,
 "sans": ["127.0.0.1", "localhost"], "leaseSeconds": 15, "logJson": false, "logLevel": "info",
 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}}
EOF
)"
fi
if render "$TMP/custom.yaml" ops -f "$TMP/custom-values.yaml"; then
  check_render "non-default values" "$TMP/custom.yaml" "$(cat <<EOF
{"namespace": "ops", "replicas": 3, "minAvailable": 2, "operatorImage": "registry.example.com/xl/operator:1.2.3",
 "pullPolicy": "Always", "sidecarImage": "registry.example.com/xl/sidecar:1.2.3@$DIGEST", "sidecarPullPolicy": "Never",
 "sidecarResources": {"sidecar-cpu-request": "50m", "sidecar-memory-request": "48Mi", "sidecar-memory-limit": "96Mi"},
 "metricsPort": 9090, "webhookPort": 10443, "metrics": false, "webhookEnabled": true, "failurePolicy": "Ignore", "timeoutSeconds": 5,
 "sans": ["127.0.0.1", "localhost", "xlattice.example.com"], "leaseSeconds": 20, "logJson": true, "logLevel": "debug",
 "keygenThreads": "4", "alsoExcluded": ["monitoring"], "namespacesIn": ["apps", "data"],
 "namespaceMatchLabels": {"team": "storage"},
 "objectSelector": {"matchExpressions": [{"key": "xlattice.io/skip", "operator": "DoesNotExist"}]},
 "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "512Mi"}}}
EOF
)"
fi
URL=https://127.0.0.1:9443/mutate-pods
if render "$TMP/url.yaml" dev --set webhook.url=$URL; then
  check_render "webhook.url=$URL" "$TMP/url.yaml" "$(cat <<EOF
{"namespace": "dev", "replicas": 1, "operatorImage": "ghcr.io/xlattice/xlattice-operator:$APP_VERSION",
 "pullPolicy": "IfNotPresent", "sidecarImage": "ghcr.io/xlattice/xlattice-sidecar:$APP_VERSION", "sidecarPullPolicy": "IfNotPresent",
 "sidecarResources": {"sidecar-cpu-request": "10m", "sidecar-memory-request": "32Mi", "sidecar-memory-limit": "128Mi"},
 "metricsPort": 8080, "webhookPort": 9443, "metrics": true, "webhookEnabled": true, "failurePolicy": "Fail", "timeoutSeconds": 10,
 "sans": ["127.0.0.1", "localhost"], "leaseSeconds": 15, "logJson": false, "logLevel": "info", "url": "$URL"}
EOF
)"
fi
URL2=https://10.1.2.3:8443/mutate-pods
if render "$TMP/url2.yaml" dev --set webhook.url=$URL2 --set replicas=2; then
  check_render "webhook.url=$URL2, replicas=2" "$TMP/url2.yaml" "$(cat <<EOF
{"namespace": "dev", "replicas": 2, "minAvailable": 1, "operatorImage": "ghcr.io/xlattice/xlattice-operator:$APP_VERSION",
 "pullPolicy": "IfNotPresent", "sidecarImage": "ghcr.io/xlattice/xlattice-sidecar:$APP_VERSION", "sidecarPullPolicy": "IfNotPresent",
 "sidecarResources": {"sidecar-cpu-request": "10m", "sidecar-memory-request": "32Mi", "sidecar-memory-limit": "128Mi"},
 "metricsPort": 8080, "webhookPort": 9443, "metrics": true, "webhookEnabled": true, "failurePolicy": "Fail", "timeoutSeconds": 10,
 "sans": ["127.0.0.1", "localhost", "10.1.2.3"], "leaseSeconds": 15, "logJson": false, "logLevel": "info", "url": "$URL2"}
EOF
)"
fi
if render "$TMP/nowebhook.yaml" xlattice-system --set webhook.enabled=false; then
  check_render "webhook.enabled=false" "$TMP/nowebhook.yaml" "$(cat <<EOF
{"namespace": "xlattice-system", "replicas": 1, "operatorImage": "ghcr.io/xlattice/xlattice-operator:$APP_VERSION",
 "pullPolicy": "IfNotPresent", "sidecarImage": "ghcr.io/xlattice/xlattice-sidecar:$APP_VERSION", "sidecarPullPolicy": "IfNotPresent",
 "sidecarResources": {"sidecar-cpu-request": "10m", "sidecar-memory-request": "32Mi", "sidecar-memory-limit": "128Mi"},
 "metricsPort": 8080, "webhookPort": 9443, "metrics": true, "webhookEnabled": false, "failurePolicy": "Fail", "timeoutSeconds": 10,
 "sans": [], "leaseSeconds": 15, "logJson": false, "logLevel": "info"}
EOF
)"
fi
# fips: the default tags get "-fips", the operator refuses to start outside FIPS mode (and
# makes its sidecars refuse: tested in sidecar/tests/injected.rs); an explicit tag is kept.
if render "$TMP/fips.yaml" xlattice-system --set fips=true; then
  check_render "fips=true" "$TMP/fips.yaml" "$(cat <<EOF
{"namespace": "xlattice-system", "replicas": 1, "operatorImage": "ghcr.io/xlattice/xlattice-operator:$APP_VERSION-fips",
 "pullPolicy": "IfNotPresent", "sidecarImage": "ghcr.io/xlattice/xlattice-sidecar:$APP_VERSION-fips", "sidecarPullPolicy": "IfNotPresent",
 "sidecarResources": {"sidecar-cpu-request": "10m", "sidecar-memory-request": "32Mi", "sidecar-memory-limit": "128Mi"},
 "metricsPort": 8080, "webhookPort": 9443, "metrics": true, "webhookEnabled": true, "failurePolicy": "Fail", "timeoutSeconds": 10,
 "sans": ["127.0.0.1", "localhost"], "leaseSeconds": 15, "logJson": false, "logLevel": "info", "requireFips": true}
EOF
)"
fi
if render "$TMP/fips-tag.yaml" xlattice-system --set fips=true --set image.tag=9.9.9 --set sidecar.image.tag=9.9.8; then
  if grep -q 'image: "ghcr.io/xlattice/xlattice-operator:9.9.9"$' "$TMP/fips-tag.yaml" &&
    grep -q -- '- --sidecar-image=ghcr.io/xlattice/xlattice-sidecar:9.9.8$' "$TMP/fips-tag.yaml" &&
    grep -q -- '- --require-fips$' "$TMP/fips-tag.yaml"; then
    ok "fips=true with explicit tags: the tags kept as given, --require-fips"
  else
    bad "fips=true with explicit tags: $(grep -E 'image: |sidecar-image|require-fips' "$TMP/fips-tag.yaml" | tr -s ' ')"
  fi
fi

# restartWorkloads.enabled: the workload ClusterRole is always defined (rbac/roles.yaml is
# included whole) but bound only when enabled, like the main one: cluster-wide or in each
# watched namespace. Counted by name: the definition, then a name and a roleRef per binding.
restart_refs() { grep -c 'name: xlattice-operator-restart-workloads$' "$1" || true; }
for case in "true||3" "false||1" "true|a,b|5" "false|a,b|1"; do
  IFS='|' read -r enabled watch want <<<"$case"
  args=(--set "restartWorkloads.enabled=$enabled")
  [[ -n $watch ]] && args+=(--set "watchNamespaces={$watch}")
  if render "$TMP/restart.yaml" xlattice-system "${args[@]}"; then
    if [[ $(restart_refs "$TMP/restart.yaml") == "$want" ]] && grep -q -- "- --restart-workloads=$enabled$" "$TMP/restart.yaml"; then
      ok "restartWorkloads.enabled=$enabled${watch:+, watchNamespaces=$watch}: workload role bound $(((want - 1) / 2)) time(s), --restart-workloads=$enabled"
    else
      bad "restartWorkloads.enabled=$enabled${watch:+, watchNamespaces=$watch}: $(restart_refs "$TMP/restart.yaml") references (want $want), or no --restart-workloads=$enabled"
    fi
  fi
done

step "wrong values are refused, naming the field"
refuse() { # EXPECTED-TEXT HELM-ARGS...
  local expect=$1
  shift
  if helm template xlattice "$CHART" --namespace ops "$@" >/dev/null 2>"$TMP/refuse.err"; then
    bad "helm template $* succeeded; it must fail"
  elif grep -qF -- "$expect" "$TMP/refuse.err"; then
    ok "$* -> $(grep -F -- "$expect" "$TMP/refuse.err" | head -1 | sed 's/^[[:space:]-]*//')"
  else
    cat "$TMP/refuse.err" >&2
    bad "helm template $* failed without naming '$expect'"
  fi
}
refuse "/replicas" --set replicas=two
refuse "/replicas" --set replicas=0
refuse "/logLevel" --set logLevel=loud
refuse "/logFormat" --set logFormat=xml
refuse "/image/pullPolicy" --set image.pullPolicy=Sometimes
refuse "/image/repository" --set image.repository=
refuse "/sidecar/image/pullPolicy" --set sidecar.image.pullPolicy=Sometimes
refuse "/sidecar/image/digest" --set sidecar.image.digest=md5:abc
refuse "/sidecar/resources/requests/memory" --set sidecar.resources.requests.memory=lots
refuse "/sidecar/resources/limits" --set sidecar.resources.limits.cpu=1
refuse "/webhook/failurePolicy" --set webhook.failurePolicy=Maybe
refuse "/webhook/timeoutSeconds" --set webhook.timeoutSeconds=60
refuse "/webhook/url" --set webhook.url=http://insecure.example.com/mutate-pods
refuse "/webhook/port" --set webhook.port=443
refuse "/webhook/namespaces" --set 'webhook.namespaces[0]=Not_A_Namespace'
refuse "/metrics/enabled" --set metrics.enabled=maybe
refuse "unknownKey" --set unknownKey=1
refuse "webhook.namespaces" --set 'webhook.namespaces={apps,kube-system}'
refuse "webhook.namespaces" --set 'webhook.namespaces={ops}'
refuse "leaderElection.enabled" --set replicas=2 --set leaderElection.enabled=false
refuse "metrics.port" --set webhook.port=8080

step "monitoring: off by default, each part on its own switch"
DASHBOARD_JSON=$CHART/dashboards/xlattice.json
if python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["panels"] and d["uid"]' "$DASHBOARD_JSON" 2>"$TMP/dash.err"; then
  ok "$DASHBOARD_JSON is JSON ($(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["panels"]))' "$DASHBOARD_JSON") panels)"
else
  cat "$TMP/dash.err" >&2
  bad "$DASHBOARD_JSON does not parse as a Grafana dashboard"
fi
# Kind/name of every object of a rendering (helm's output is regular enough for a regex,
# and the monitoring kinds need no API server to be read).
cat >"$TMP/monitoring.py" <<'PY'
"""Checks the monitoring objects of a rendering: argv[2] lists the parts expected on."""
import json, os, re, sys
PARTS = {"dashboard": ("ConfigMap", "xlattice-dashboard"), "serviceMonitor": ("ServiceMonitor", "xlattice-operator"),
         "podMonitor": ("PodMonitor", "xlattice-sidecars"), "prometheusRule": ("PrometheusRule", "xlattice-operator")}
path, want, ns, name = sys.argv[1], set(filter(None, sys.argv[2].split(","))), sys.argv[3], sys.argv[4]
text = open(path).read()
docs = [d for d in re.split(r"(?m)^---[ \t]*$", text) if re.search(r"(?m)^kind:", d)]
def kind_name(d):
    return (re.search(r"(?m)^kind:\s*(\S+)", d).group(1),
            re.search(r"(?m)^  name:\s*(\S+)", d).group(1))
found = {}
for d in docs:
    found.setdefault(kind_name(d), []).append(d)
errors = []
for part, key in PARTS.items():
    n = len(found.get(key, []))
    if (n == 1) != (part in want) or n > 1:
        errors.append(f"{part}: {n} {key[0]}/{key[1]} rendered, want {1 if part in want else 0}")
for part in want:
    docs_of = found.get(PARTS[part], [])
    if not docs_of:
        continue
    d = docs_of[0]
    if not re.search(rf"(?m)^  namespace: {re.escape(ns)}$", d):
        errors.append(f"{part} is not in namespace {ns}")
    if "release: prom" not in d:
        errors.append(f"{part} lacks the monitoring.labels label release: prom")
    if part == "dashboard":
        if 'grafana_dashboard: "1"' not in d:
            errors.append('the dashboard ConfigMap is not labelled grafana_dashboard: "1"')
        if os.environ.get("LOADER") == "yaml":
            import yaml
            data = yaml.safe_load(d)["data"]["xlattice.json"]
            if json.loads(data) != json.load(open(sys.argv[5])):
                errors.append("the ConfigMap's xlattice.json differs from the chart's dashboard")
    if part == "serviceMonitor" and not re.search(r"(?m)^    - port: metrics$", d):
        errors.append("the ServiceMonitor does not scrape the Service's metrics port")
    if part == "podMonitor":
        if not re.search(r"(?m)^    - port: xl-admin$", d):
            errors.append("the PodMonitor does not scrape the sidecar's xl-admin port (15090)")
        for label in ("xlattice_cluster", "xlattice_namespace"):
            if f"targetLabel: {label}" not in d:
                errors.append(f"the PodMonitor does not set {label}")
    if part == "prometheusRule":
        alerts = re.findall(r"(?m)^\s+- alert: (\S+)", d)
        if len(alerts) < 9:
            errors.append(f"only {len(alerts)} alerts: {alerts}")
        # What Prometheus must not see: helm syntax left over, or an unquoted annotation.
        if "{{ ." in d or "{{- " in d:
            errors.append("helm template syntax left in the PrometheusRule")
        if len(re.findall(r"(?m)^\s+(summary|description|runbook): \"", d)) != 3 * len(alerts):
            errors.append("not every alert has a quoted summary, description and runbook")
for e in errors:
    print(f"  FAIL {name}: {e}", file=sys.stderr)
if not errors:
    print(f"  ok   {name}: {sorted(want) or 'none'} rendered, nothing else")
sys.exit(1 if errors else 0)
PY
check_monitoring() { # NAME FILE NAMESPACE PARTS(comma-separated)
  python3 "$TMP/monitoring.py" "$2" "$4" "$3" "$1" "$DASHBOARD_JSON" || bad "$1: monitoring objects not as expected (above)"
}
check_monitoring "default values" "$TMP/default.yaml" xlattice-system ""
MONITORING_ALL="dashboard,serviceMonitor,podMonitor,prometheusRule"
if render "$TMP/monitoring.yaml" mon --set monitoring.labels.release=prom \
  --set monitoring.dashboard.enabled=true --set monitoring.serviceMonitor.enabled=true \
  --set monitoring.podMonitor.enabled=true --set monitoring.prometheusRule.enabled=true; then
  check_monitoring "monitoring all on" "$TMP/monitoring.yaml" mon "$MONITORING_ALL"
fi
for part in ${MONITORING_ALL//,/ }; do
  if render "$TMP/monitoring-$part.yaml" mon --set monitoring.labels.release=prom --set "monitoring.$part.enabled=true"; then
    check_monitoring "monitoring.$part.enabled alone" "$TMP/monitoring-$part.yaml" mon "$part"
  fi
done
refuse "monitoring.serviceMonitor.enabled needs metrics.enabled" --set monitoring.serviceMonitor.enabled=true --set metrics.enabled=false
refuse "certificateExpiryDays" --set monitoring.prometheusRule.enabled=true --set monitoring.prometheusRule.certificateExpiryDays=200
refuse "/monitoring" --set monitoring.grafana=true
refuse "/monitoring/prometheusRule/degradedFor" --set monitoring.prometheusRule.degradedFor=soon

step "alerts: promtool check rules, promtool test rules $ALERT_TESTS (default values)"
# The PrometheusRule's spec is a plain Prometheus rules file; rendered with the default
# values, since the tests assert the default thresholds and `for` durations.
if [[ -n $PROMTOOL ]] && render "$TMP/alerts.yaml" xlattice-system --set monitoring.prometheusRule.enabled=true; then
  mkdir -p "$TMP/alerts"
  cp "$ALERT_TESTS" "$TMP/alerts/alerts.test.yaml"
  # Text, not YAML: the rule's spec is the indented block under `spec:` (PyYAML optional).
  if python3 - "$TMP/alerts.yaml" "$TMP/alerts/xlattice-rules.yaml" <<'PY'; then
import re, sys
docs = [d for d in re.split(r"(?m)^---[ \t]*$", open(sys.argv[1]).read()) if re.search(r"(?m)^kind: PrometheusRule$", d)]
assert len(docs) == 1, f"{len(docs)} PrometheusRules rendered"
lines = docs[0].split("\n")
out = []
for line in lines[lines.index("spec:") + 1:]:
    if line and not line.startswith("  "):
        break
    out.append(line[2:])
assert out and out[0] == "groups:", "the PrometheusRule's spec does not start with groups:"
open(sys.argv[2], "w").write("\n".join(out).rstrip() + "\n")
PY
    if "$PROMTOOL" check rules --lint-fatal "$TMP/alerts/xlattice-rules.yaml" >"$TMP/promtool.out" 2>&1; then
      ok "promtool check rules: $(grep -o '[0-9]* rules found' "$TMP/promtool.out")"
    else
      cat "$TMP/promtool.out" >&2
      bad "promtool check rules refuses the chart's PrometheusRule"
    fi
    # Every alert must have a test that expects it to fire.
    if python3 - "$TMP/alerts/xlattice-rules.yaml" "$ALERT_TESTS" >"$TMP/untested.out" <<'PY'; then
import re, sys
alerts = set(re.findall(r"(?m)^\s*- alert: (\S+)$", open(sys.argv[1]).read()))
fired = set(re.findall(r"(?m)^\s*alertname: (\S+)\n\s*exp_alerts:[ \t]*(?:&\S+)?[ \t]*\n", open(sys.argv[2]).read()))
fired |= set(re.findall(r"(?m)^\s*alertname: (\S+)\n\s*exp_alerts:[ \t]*\*\S+", open(sys.argv[2]).read()))
print(" ".join(sorted(alerts - fired)))
sys.exit(1 if alerts - fired or not alerts else 0)
PY
      ok "every alert of the rule has a test in which it fires"
    else
      bad "alerts without a test that expects them to fire: $(cat "$TMP/untested.out")"
    fi
    rc=0
    (cd "$TMP/alerts" && "$PROMTOOL" test rules --junit=junit.xml alerts.test.yaml) >"$TMP/promtool.out" 2>&1 || rc=$?
    # One ok/FAIL per test group, from the JUnit report.
    if ! python3 - "$TMP/alerts/junit.xml" "$rc" <<'PY'; then
import sys, xml.etree.ElementTree as ET
try:
    cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
except (OSError, ET.ParseError):
    cases = []  # no report: the test file did not load
n = failed = 0
for case in cases:
    n += 1
    if case.find("failure") is not None or case.find("error") is not None:
        failed += 1
        print(f"  FAIL promtool test rules: {case.get('name')}", file=sys.stderr)
    else:
        print(f"  ok   promtool test rules: {case.get('name')}")
sys.exit(0 if n and not failed and sys.argv[2] == "0" else 1)
PY
      cat "$TMP/promtool.out" >&2
      bad "promtool test rules $ALERT_TESTS failed (exit $rc; above)"
    fi
  else
    bad "cannot extract the PrometheusRule's spec from the rendering"
  fi
elif [[ -z $PROMTOOL ]]; then
  bad "promtool not found, the alerts are not checked: run hack/promtool.sh install (hack/setup.sh does)"
fi

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

step "examples are consistent with their XLatticeCluster"
cat >"$TMP/examples.py" <<'PY'
import json, os, subprocess, sys
def load(path):
    if os.environ["LOADER"] == "yaml":
        import yaml
        return [d for d in yaml.safe_load_all(open(path)) if d]
    out = subprocess.run(["kubectl", "--kubeconfig", os.environ["XLATTICE_KUBECONFIG"], "create", "--dry-run=client",
                          "--validate=false", "-o", "json", "-f", path], check=True, capture_output=True, text=True).stdout
    # One JSON document per object, concatenated (or one List).
    docs, i, dec = [], 0, json.JSONDecoder()
    while i < len(out):
        if out[i].isspace():
            i += 1
            continue
        doc, i = dec.raw_decode(out, i)
        docs.extend(doc["items"] if doc.get("kind") == "List" else [doc])
    return docs
errors = []
clusters = {}
docs = {f: load(f) for f in sys.argv[1:]}
for f, objs in docs.items():
    for o in objs:
        if o["kind"] == "XLatticeCluster":
            clusters[o["metadata"]["name"]] = o["spec"]
for f, objs in docs.items():
    for o in objs:
        if o["kind"] not in ("StatefulSet", "Deployment"):
            continue
        tmpl = o["spec"]["template"]
        labels = tmpl["metadata"].get("labels", {})
        mine = [(n, s) for n, s in clusters.items()
                if all(labels.get(k) == v for k, v in s["selector"].get("matchLabels", {}).items())]
        if len(mine) != 1:
            errors.append(f"{f}: {o['kind']} {o['metadata']['name']} matches {len(mine)} clusters")
            continue
        name, spec = mine[0]
        up = spec.get("upstream", {})
        upstream = (up.get("clusterPort", spec["clusterPort"] + 10000), up.get("clientPort", spec["clientPort"] + 10000))
        text = json.dumps(tmpl)
        for c in tmpl["spec"]["containers"]:
            for p in c.get("ports", []):
                if p["containerPort"] in (spec["clusterPort"], spec["clientPort"]):
                    errors.append(f"{f}: container {c['name']} declares port {p['containerPort']}, which the sidecar owns")
        for port in upstream:
            if str(port) not in text:
                errors.append(f"{f}: {o['kind']} {o['metadata']['name']} never mentions upstream port {port} of cluster {name}")
        if o["kind"] == "StatefulSet" and o["spec"].get("serviceName") != f"{name}-members":
            errors.append(f"{f}: StatefulSet serviceName {o['spec'].get('serviceName')} is not the operator's headless Service {name}-members")
    for o in objs:
        if o["kind"] != "Job":
            continue
        pod = o["spec"]["template"]["spec"]
        projected = {
            v["name"]: sorted(s["configMap"]["name"] for s in v["projected"].get("sources", []) if "configMap" in s)
            for v in pod.get("volumes", []) if "projected" in v
        }
        c = pod["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        vol = mounts.get("/var/run/xlattice/directory")
        shards = [sorted(f"{n}-directory-{k}" for k in range(16)) for n in clusters]
        if not vol or projected.get(vol) not in shards:
            errors.append(f"{f}: the Job does not project all 16 shards <cluster>-directory-0..15 of a cluster at /var/run/xlattice/directory")
        if c.get("args", [None])[0] != "connect":
            errors.append(f"{f}: the Job does not run `xlattice connect`")
for e in errors:
    print(f"  FAIL {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
EXAMPLES=(deploy/examples/statefulset-cluster.yaml deploy/examples/deployment-cluster.yaml deploy/examples/client-job.yaml)
for f in "${EXAMPLES[@]}"; do [[ -f $f ]] || bad "$f is missing"; done
if python3 "$TMP/examples.py" "${EXAMPLES[@]}"; then ok "examples: selectors, upstream ports, serviceName, directory mount"; else bad "examples are inconsistent (above)"; fi

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
  for q in "list pods --all-namespaces" "create secrets -n default" "patch mutatingwebhookconfigurations/$WEBHOOK" \
    "get leases/xlattice-operator -n $LIVE_NS" "update xlatticeclusters.xlattice.io/status -n default"; do
    # shellcheck disable=SC2086 # $q holds several arguments
    if [[ $(kubectl auth can-i --as="$sa" $q 2>/dev/null) == yes ]]; then ok "operator can $q"; else bad "operator cannot $q (RBAC)"; fi
  done
  # shellcheck disable=SC2086
  if [[ $(kubectl auth can-i --as="$sa" delete mutatingwebhookconfigurations/other 2>/dev/null) == no ]]; then
    ok "operator cannot touch other webhook configurations"
  else
    bad "operator may delete other webhook configurations"
  fi

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
    mapfile -t op_args < <(kubectl -n "$LIVE_NS" get deployment xlattice-operator -o json | python3 -c '
import json, sys
c = json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0]
for a in c["args"]:
    if a.startswith("--metrics-addr="):
        a = "--metrics-addr=127.0.0.1:" + sys.argv[1]
    elif a.startswith("--webhook-addr="):
        a = "--webhook-addr=127.0.0.1:" + sys.argv[2]
    print(a)
' "$MPORT" "$WPORT")
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
