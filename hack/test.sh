#!/usr/bin/env bash
# hack/test.sh: the test command. Everything CI runs, in the order it runs it:
#   set-up (cached), lint (rustfmt, clippy, shellcheck of hack/), build, supply-chain audit, a real control plane on
#   loopback, every Rust test (unit, real sockets, real API server), fuzzing of every
#   decoder (hack/fuzz.sh, 20 s per target), chart checks, every Rust test again on the
#   AWS-LC FIPS module (--features fips), then a real node (hack/node.sh: kubelet,
#   containerd, kube-router) with the project's images, FIPS ones too, and the end-to-end
#   tests on it (hack/node-test.sh).
# Ends with one line "N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${XLATTICE_CACHE:-$HOME/.cache/xlattice}
export PATH="$CACHE/tools/bin:$PATH"
LOG=$(mktemp -d)/test.log
CHART_LOG=${LOG%.log}-chart.log
NODE_LOG=${LOG%.log}-node.log
FUZZ_LOG=${LOG%.log}-fuzz.log
FIPS_LOG=${LOG%.log}-fips.log
: >"$FUZZ_LOG"
: >"$FIPS_LOG"
: >"$CHART_LOG"
: >"$NODE_LOG"
step() { printf '\n==> %s\n' "$*"; }

hack/setup.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
shellcheck -x hack/*.sh

step "supply chain: cargo audit against ../shared/advisory-db (accepted advisories: audit.toml)"
cargo audit --db "$ROOT/../shared/advisory-db" --no-fetch --deny warnings

step "build"
cargo build --workspace --all-targets --quiet

step "control plane up"
CP_DIR=$(mktemp -d /tmp/xlattice-test-cp.XXXXXX)
CHART_CP_DIR=$(mktemp -d /tmp/xlattice-chart-cp.XXXXXX)
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  hack/control-plane.sh down "$CP_DIR" >/dev/null 2>&1 || true
  hack/control-plane.sh down "$CHART_CP_DIR" >/dev/null 2>&1 || true
  if [ -n "${NODE_UP:-}" ]; then hack/node.sh down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
hack/control-plane.sh up "$CP_DIR"
eval "$(hack/control-plane.sh env "$CP_DIR")"
export XLATTICE_KUBECONFIG="$CP_DIR/kubeconfig"

step "cargo test (unit, real sockets, real kube-apiserver)"
set +e
cargo test --workspace --all-targets 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e

step "fuzz: every decoder of network and file input, 20 s each (hack/fuzz.sh)"
if ! hack/fuzz.sh "${XLATTICE_FUZZ_SECONDS:-20}" 2>&1 | tee "$FUZZ_LOG"; then
  echo "fuzzing found a crash"
  status=1
fi

if [ -x hack/chart-test.sh ]; then
  step "chart: helm lint, helm template, deploy/ drift, helm install (on a fresh control plane)"
  # The operator e2e leaves cluster-scoped objects (its ClusterRole, bindings) that a
  # helm install would refuse to adopt: the chart gets an API server of its own.
  hack/control-plane.sh up "$CHART_CP_DIR"
  if ! KUBECONFIG="$CHART_CP_DIR/kubeconfig" XLATTICE_KUBECONFIG="$CHART_CP_DIR/kubeconfig" \
    hack/chart-test.sh 2>&1 | tee "$CHART_LOG"; then
    echo "chart checks failed"
    status=1
  fi
fi

step "cargo test again on the AWS-LC FIPS module (--features fips: protocol, sidecar, operator, cli)"
# The same tests, the same API server: the record layer, the handshake, the webhook's TLS and
# the kube client all on the FIPS module (tests/fips.rs checks its service indicator). The
# FIPS variants sit beside the others in target/ (cargo keys artifacts by feature set).
cargo clippy --workspace --all-targets --features xlattice-cli/fips --quiet -- -D warnings
set +e
cargo test --workspace --all-targets --features xlattice-cli/fips 2>&1 | tee "$FIPS_LOG"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
set -e

step "real node: kubelet, containerd, bridge network, kube-proxy, kube-router (hack/node.sh)"
NODE_UP=1
# The FIPS images first: the default build last leaves target/release's binaries (which
# node-test runs on the host) the default ones.
if hack/node.sh up && hack/node.sh images --fips && hack/node.sh images; then
  step "end-to-end on the real node (hack/node-test.sh)"
  if ! (eval "$(hack/node.sh env)" && XLATTICE_NODE_FIPS=1 hack/node-test.sh) 2>&1 | tee "$NODE_LOG"; then
    echo "node tests failed"
    status=1
  fi
else
  echo "  FAIL the real node did not come up" | tee "$NODE_LOG"
  tail -n 30 /tmp/xlattice-node/*.log 2>/dev/null || true
  status=1
fi
hack/node.sh down || status=1

passed=$(cat "$LOG" "$FIPS_LOG" | grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' | awk '{s+=$4} END {print s+0}')
failed=$(cat "$LOG" "$FIPS_LOG" | grep -Eo '[0-9]+ failed;' | awk '{s+=$1} END {print s+0}')
chart_ok=$(grep -c '^  ok ' "$CHART_LOG" || true)
chart_failed=$(grep -c '^  FAIL ' "$CHART_LOG" || true)
node_ok=$(grep -c '^  ok ' "$NODE_LOG" || true)
fuzz_ok=$(grep -c '^  ok ' "$FUZZ_LOG" || true)
fuzz_failed=$(grep -c '^  FAIL ' "$FUZZ_LOG" || true)
node_failed=$(grep -c '^  FAIL ' "$NODE_LOG" || true)
passed=$((passed + chart_ok + node_ok + fuzz_ok))
failed=$((failed + chart_failed + node_failed + fuzz_failed))
[ "$status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
printf '\n%s passed, %s failed\n' "$passed" "$failed"
exit "$status"
