#!/usr/bin/env bash
# hack/test.sh [PHASE...]: the test command. Set-up (cached) first, then the phases given,
# or with none every phase, in this order (what CI runs: .ci/run):
#   lint   rustfmt, clippy -D warnings, shellcheck of every script under hack/
#   audit  cargo audit against ../shared/advisory-db (accepted advisories: audit.toml)
#   rust   the build, then every Rust test (unit, real sockets, the real sidecar binary,
#          a real kube-apiserver on loopback, test vectors)
#   interop  interop/go, a second implementation written from docs/protocol.md alone: the
#          test vectors, and sessions both ways with the real sidecar binary (go test)
#   fuzz   every decoder of network and file input, 20 s per target (hack/fuzz.sh)
#   chart  helm lint/template, values schema, deploy/ drift, helm install (hack/chart-test.sh,
#          on an API server of its own)
#   fips   clippy and every Rust test again on the AWS-LC FIPS module (--features fips)
#   node   a real node (hack/node.sh: kubelet, containerd, kube-router) with the project's
#          images, FIPS ones too, and the end-to-end tests on it (hack/node-test.sh)
# e.g. `hack/test.sh chart` or `hack/test.sh rust fips`. Ends with one line "N passed, M
# failed", counting the phases that ran.
# shellcheck disable=SC2317 # the phase_* functions and cleanup are called by name
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${XLATTICE_CACHE:-$HOME/.cache/xlattice}
export PATH="$CACHE/tools/bin:$PATH"
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PHASES=(lint audit rust interop fuzz chart fips node)
LOGS=$(mktemp -d /tmp/xlattice-test-logs.XXXXXX)
# One log per counted phase, empty until it runs.
touch "$LOGS"/{rust,fips,interop,fuzz,chart,node}.log
status=0

# ---- phases ---------------------------------------------------------------------------

phase_lint() {
  phase "format and lints"
  cargo fmt --all --check
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  shellcheck -x hack/*.sh
}

phase_audit() {
  phase "supply chain: cargo audit against ../shared/advisory-db (accepted advisories: audit.toml)"
  cargo audit --db "$ROOT/../shared/advisory-db" --no-fetch --deny warnings
}

# Every Rust test of the workspace, with FEATURES, into LOG; a failure marks the run failed.
cargo_tests() { # LOG [FEATURES]
  control_plane
  set +e
  cargo test --workspace --all-targets ${2:+--features "$2"} 2>&1 | tee "$1"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  set -e
}

phase_rust() {
  phase "build"
  cargo build --workspace --all-targets --quiet
  phase "cargo test (unit, real sockets, real kube-apiserver)"
  cargo_tests "$LOGS/rust.log"
}

phase_interop() {
  phase "interop: the Go implementation written from docs/protocol.md alone, against the vectors and the real sidecar"
  cargo build --quiet -p xlattice-sidecar --bin xlattice
  # -v: one "--- PASS/FAIL" line per test, counted below; -count=1: never a cached result.
  local rc=0
  (cd interop/go && XLATTICE_BIN="$ROOT/target/debug/xlattice" go test -count=1 -v ./...) >"$LOGS/interop.log" 2>&1 || rc=$?
  grep -E '^(--- |ok |FAIL|panic)' "$LOGS/interop.log" || true
  [[ $rc -eq 0 ]] || { tail -n 40 "$LOGS/interop.log"; status=1; }
}

phase_fuzz() {
  phase "fuzz: every decoder of network and file input, 20 s each (hack/fuzz.sh)"
  if ! hack/fuzz.sh "${XLATTICE_FUZZ_SECONDS:-20}" 2>&1 | tee "$LOGS/fuzz.log"; then
    echo "fuzzing found a crash"
    status=1
  fi
}

phase_chart() {
  phase "chart: helm lint, helm template, deploy/ drift, helm install (on a fresh control plane)"
  # The operator e2e leaves cluster-scoped objects (its ClusterRole, bindings) that a
  # helm install would refuse to adopt: the chart gets an API server of its own.
  CHART_CP_DIR=$(mktemp -d /tmp/xlattice-chart-cp.XXXXXX)
  hack/control-plane.sh up "$CHART_CP_DIR"
  eval "$(hack/control-plane.sh env "$CHART_CP_DIR")"
  if ! KUBECONFIG="$CHART_CP_DIR/kubeconfig" XLATTICE_KUBECONFIG="$CHART_CP_DIR/kubeconfig" \
    hack/chart-test.sh 2>&1 | tee "$LOGS/chart.log"; then
    echo "chart checks failed"
    status=1
  fi
}

phase_fips() {
  phase "cargo test again on the AWS-LC FIPS module (--features fips: protocol, sidecar, operator, cli)"
  # The same tests, the same API server: the record layer, the handshake, the webhook's TLS
  # and the kube client all on the FIPS module (tests/fips.rs checks its service indicator).
  # The FIPS variants sit beside the others in target/ (cargo keys artifacts by features).
  cargo clippy --workspace --all-targets --features xlattice-cli/fips --quiet -- -D warnings
  cargo_tests "$LOGS/fips.log" xlattice-cli/fips
}

phase_node() {
  phase "real node: kubelet, containerd, bridge network, kube-proxy, kube-router (hack/node.sh)"
  NODE_UP=1
  # The FIPS images first: the default build last leaves target/release's binaries (which
  # node-test runs on the host) the default ones.
  if hack/node.sh up && hack/node.sh images --fips && hack/node.sh images; then
    phase "end-to-end on the real node (hack/node-test.sh)"
    if ! (eval "$(hack/node.sh env)" && XLATTICE_NODE_FIPS=1 hack/node-test.sh) 2>&1 | tee "$LOGS/node.log"; then
      echo "node tests failed"
      status=1
    fi
  else
    echo "  FAIL the real node did not come up" | tee "$LOGS/node.log"
    tail -n 30 /tmp/xlattice-node/*.log 2>/dev/null || true
    status=1
  fi
  hack/node.sh down || status=1
}

# ---- the control plane the Rust tests share, up on first use ----------------------------

CP_DIR=''
control_plane() {
  [[ -z $CP_DIR ]] || return 0
  phase "control plane up"
  CP_DIR=$(mktemp -d /tmp/xlattice-test-cp.XXXXXX)
  hack/control-plane.sh up "$CP_DIR"
  eval "$(hack/control-plane.sh env "$CP_DIR")"
  export XLATTICE_KUBECONFIG="$CP_DIR/kubeconfig"
}

cleanup() {
  [[ -z $CP_DIR ]] || hack/control-plane.sh down "$CP_DIR" >/dev/null 2>&1 || true
  [[ -z ${CHART_CP_DIR:-} ]] || hack/control-plane.sh down "$CHART_CP_DIR" >/dev/null 2>&1 || true
  [[ -z ${NODE_UP:-} ]] || hack/node.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

# ---- the run ----------------------------------------------------------------------------

# Counts the "test result:" lines of cargo's logs and the "  ok"/"  FAIL" lines of the
# scripts' (fuzz, chart, node).
summary() {
  local passed failed cargo=("$LOGS"/rust.log "$LOGS"/fips.log) scripts=("$LOGS"/fuzz.log "$LOGS"/chart.log "$LOGS"/node.log)
  passed=$(cat "${cargo[@]}" | { grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' || true; } | awk '{s+=$4} END {print s+0}')
  failed=$(cat "${cargo[@]}" | { grep -Eo '[0-9]+ failed;' || true; } | awk '{s+=$1} END {print s+0}')
  passed=$((passed + $(cat "${scripts[@]}" | grep -c '^  ok ' || true)))
  failed=$((failed + $(cat "${scripts[@]}" | grep -c '^  FAIL ' || true)))
  passed=$((passed + $(grep -c '^--- PASS: ' "$LOGS/interop.log" || true)))
  failed=$((failed + $(grep -c '^--- FAIL: ' "$LOGS/interop.log" || true)))
  [ "$status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
  printf '\n%s passed, %s failed\n' "$passed" "$failed"
}

selected=("$@")
[[ ${#selected[@]} -gt 0 ]] || selected=("${PHASES[@]}")
for p in "${selected[@]}"; do
  [[ " ${PHASES[*]} " == *" $p "* ]] || die "no phase '$p'; the phases: ${PHASES[*]}"
done
hack/setup.sh
for p in "${PHASES[@]}"; do
  if [[ " ${selected[*]} " == *" $p "* ]]; then "phase_$p"; fi
done
summary
exit "$status"
