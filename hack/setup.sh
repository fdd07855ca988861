#!/usr/bin/env bash
# hack/setup.sh: install everything the demo and the tests need, on a fresh machine.
# Idempotent and cached under ${XLATTICE_CACHE:-~/.cache/xlattice}: a second run
# takes seconds. Needs only what the machine image ships (Go, Rust, npm, openssl).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${XLATTICE_CACHE:-$HOME/.cache/xlattice}
TOOLS=$CACHE/tools
CARGO_AUDIT_VERSION=0.22.2
CARGO_FUZZ_VERSION=0.13.2

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

phase "control plane: kube-apiserver, etcd, kubectl, helm (cached in $CACHE)"
hack/control-plane.sh install >&2

phase "promtool, Prometheus's rule checker (cached in $CACHE), and prometheus-operator's CRDs (Go module cache): hack/chart-test.sh checks the chart's alerts and monitoring objects"
hack/promtool.sh install >&2
hack/promtool.sh crds >/dev/null

phase "real node: containerd, runc, CNI plugins, ipset (Debian); kubelet, kube-controller-manager, kube-proxy, kube-router; the pause image"
hack/node.sh install >&2

export PATH="$TOOLS/bin:$PATH"
if ! command -v cargo-audit >/dev/null 2>&1; then
  phase "cargo-audit $CARGO_AUDIT_VERSION (cached in $TOOLS)"
  cargo install cargo-audit --version "$CARGO_AUDIT_VERSION" --locked --root "$TOOLS" \
    --target-dir "$CACHE/target-tools" >&2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  phase "cargo-fuzz $CARGO_FUZZ_VERSION (cached in $TOOLS)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS" \
    --target-dir "$CACHE/target-tools" >&2
fi
if ! command -v shellcheck >/dev/null 2>&1; then
  phase "shellcheck (Debian): hack/test.sh lints every script under hack/"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >&2
fi
phase "every crate of Cargo.lock, for every platform (cargo fetch): chart-test loads the Containerfile's workspace offline, and a build fetches only this platform's"
cargo fetch --locked >&2
phase "setup done"
