#!/usr/bin/env bash
# hack/build-images.sh: build the operator and sidecar images from the Containerfile.
#
# Usage: hack/build-images.sh [--fips] [TAG]            (default TAG: the chart's appVersion)
#        hack/build-images.sh [--fips] --archive DIR [TAG]
#
# --fips builds the binaries with `--features fips` (the AWS-LC FIPS 140-3 module; needs Go,
# Perl and CMake) and appends "-fips" to the default tag: the tags the chart's `fips: true`
# uses. They refuse to start under `--require-fips` only if the module is not in FIPS mode.
#
# --archive needs no container engine and no registry: it packages the same release
# binaries the way the Containerfile's default targets do (the binary, the C runtime it
# links, a nonroot user 65532, no shell) into docker-save archives DIR/<image>.tar, which
# `ctr images import` (hack/node.sh), `docker load` and `kind load image-archive` take.
# It also builds xlattice-member-app, the example member application
# (sidecar/examples/member_app.rs) that deploy/examples/ and the real-node tests run.
#
# Environment:
#   CONTAINER_ENGINE   docker or podman (default: the first of them that answers)
#   REGISTRY           image prefix (default ghcr.io/xlattice)
#   PLATFORM           e.g. linux/arm64 (default: the engine's own platform)
#   BUILD_ARGS         further arguments for `build`, e.g. "--build-arg RUST_VERSION=1.95"
#
# Prints how to load the images into kind or k3d and how to point the chart at them.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ARCHIVE_DIR='' ARCHIVE_OF=() FIPS=''
if [[ ${1:-} == --fips ]]; then
  FIPS=-fips
  shift
fi
if [[ ${1:-} == --archive-of ]]; then
  # --archive-of ROOT IMAGE OUT ENTRYPOINT_JSON: one archive of a prepared root (hack/node.sh).
  [[ $# -eq 5 ]] || die "--archive-of ROOT IMAGE OUT ENTRYPOINT_JSON"
  ARCHIVE_OF=("$2" "$3" "$4" "$5")
  shift 5
fi
if [[ ${1:-} == --archive ]]; then
  [[ -n ${2:-} ]] || die "--archive needs a directory"
  ARCHIVE_DIR=$2
  shift 2
fi

TAG=${1:-$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' charts/xlattice-operator/Chart.yaml)}
[[ -n $TAG ]] || die "no tag given and no appVersion in charts/xlattice-operator/Chart.yaml"
[[ -n ${1:-} ]] || TAG=$TAG$FIPS
# The same feature set for every binary of one build, so the release dependencies compile once
# per variant (cargo keeps both variants side by side in target/release/deps).
FEATURES=()
[[ -z $FIPS ]] || FEATURES=(--features "xlattice-operator/fips,xlattice-sidecar/fips,xlattice-cli/fips")
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "'$TAG' is not a valid image tag"
REGISTRY=${REGISTRY:-ghcr.io/xlattice}
OPERATOR_IMAGE=$REGISTRY/xlattice-operator:$TAG
SIDECAR_IMAGE=$REGISTRY/xlattice-sidecar:$TAG

MEMBER_APP_IMAGE=$REGISTRY/xlattice-member-app:$TAG

# ---- --archive: images without an engine ----------------------------------

# Stages BINARY at /usr/local/bin/NAME with the shared libraries it links (as ldd resolves
# them on this Debian 12 host, which is what distroless/cc-debian12 ships), a nonroot
# user and group 65532, /tmp and a home: the content of the Containerfile's images.
stage_rootfs() { # ROOT BINARY NAME
  local root=$1 bin=$2 name=$3 lib
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  install -m 0755 "$bin" "$root/usr/local/bin/$name"
  for lib in $(ldd "$bin" | grep -oE '/[^ ]+' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chown 65532:65532 "$root/home/nonroot"
}

# Writes DIR/FILE.tar: one layer, a config, a manifest (the docker-save layout).
# Deterministic: the same binaries give the same image ID.
write_archive() { # OUT IMAGE ROOT ENTRYPOINT_JSON CMD_JSON PORTS_JSON TITLE [USER]
  local out=$1 image=$2 root=$3 user=${8:-65532:65532} tmp layer_sha config_sha created=1970-01-01T00:00:00Z
  tmp=$(mktemp -d)
  # Owners as staged: root, but 65532 for the nonroot home.
  tar --sort=name --mtime=@0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$root" -cf "$tmp/layer.tar" .
  layer_sha=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  mkdir -p "$tmp/$layer_sha"
  mv "$tmp/layer.tar" "$tmp/$layer_sha/layer.tar"
  cat >"$tmp/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"$created",
 "config":{"User":"$user","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
  "Entrypoint":$4,"Cmd":$5,"WorkingDir":"/","ExposedPorts":$6,
  "Labels":{"org.opencontainers.image.title":"$7","org.opencontainers.image.licenses":"Apache-2.0"}},
 "rootfs":{"type":"layers","diff_ids":["sha256:$layer_sha"]},
 "history":[{"created":"$created","created_by":"hack/build-images.sh --archive"}]}
JSON
  config_sha=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/$config_sha.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' \
    "$config_sha" "$image" "$layer_sha" >"$tmp/manifest.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp" \
    -cf "$out.tmp" manifest.json "$config_sha.json" "$layer_sha"
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
  printf '  %s  %s (sha256:%s)\n' "$out" "$image" "${config_sha:0:12}"
}

build_archives() { # DIR
  local dir=$1 stage
  command -v ldd >/dev/null || die "ldd is required for --archive"
  # kubectl-xlattice goes in no image: it is built in the same invocation (one feature set,
  # so the release dependencies compile once) for hack/node-test.sh and the demo's host.
  echo "==> cargo build --release --locked ${FEATURES[*]} -p xlattice-operator -p xlattice-sidecar -p xlattice-cli --bins --example member_app"
  cargo build --release --locked --quiet "${FEATURES[@]}" -p xlattice-operator -p xlattice-sidecar -p xlattice-cli --bins --example member_app
  mkdir -p "$dir"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  stage_rootfs "$stage/operator" target/release/xlattice-operator xlattice-operator
  stage_rootfs "$stage/sidecar" target/release/xlattice xlattice
  stage_rootfs "$stage/member-app" target/release/examples/member_app member_app
  echo "==> docker-save archives in $dir"
  write_archive "$dir/xlattice-operator.tar" "$OPERATOR_IMAGE" "$stage/operator" \
    '["/usr/local/bin/xlattice-operator"]' '["run"]' '{"8080/tcp":{},"9443/tcp":{}}' xlattice-operator
  write_archive "$dir/xlattice-sidecar.tar" "$SIDECAR_IMAGE" "$stage/sidecar" \
    '["/usr/local/bin/xlattice"]' '["run"]' '{"7000/tcp":{},"8000/tcp":{},"15090/tcp":{}}' xlattice-sidecar
  write_archive "$dir/xlattice-member-app.tar" "$MEMBER_APP_IMAGE" "$stage/member-app" \
    '["/usr/local/bin/member_app"]' '["serve"]' '{}' xlattice-member-app
}

if [[ -n $ARCHIVE_DIR ]]; then
  build_archives "$ARCHIVE_DIR"
  exit 0
fi
if [[ ${#ARCHIVE_OF[@]} -gt 0 ]]; then
  # hack/node.sh's sandbox image: a prepared root, run as root (it only sleeps).
  write_archive "${ARCHIVE_OF[2]}" "${ARCHIVE_OF[1]}" "${ARCHIVE_OF[0]}" "${ARCHIVE_OF[3]}" \
    '[]' '{}' "${ARCHIVE_OF[1]%%:*}" 0:0
  exit 0
fi

# An engine counts only if it answers: a docker CLI without a daemon does not.
engine_works() { command -v "$1" >/dev/null 2>&1 && "$1" info >/dev/null 2>&1; }
if [[ -n ${CONTAINER_ENGINE:-} ]]; then
  engine_works "$CONTAINER_ENGINE" ||
    die "CONTAINER_ENGINE=$CONTAINER_ENGINE does not work here ('$CONTAINER_ENGINE info' fails or it is not installed)"
  ENGINE=$CONTAINER_ENGINE
elif engine_works docker; then
  ENGINE=docker
elif engine_works podman; then
  ENGINE=podman
else
  die "no container engine: neither 'docker info' nor 'podman info' succeeds.
Install Docker (with a running daemon) or Podman, or build elsewhere and push:
  cargo build --release --locked -p xlattice-operator -p xlattice-sidecar
  docker build --target operator -t $OPERATOR_IMAGE .
  docker build --target sidecar  -t $SIDECAR_IMAGE ."
fi

args=(-f Containerfile)
[[ -n ${PLATFORM:-} ]] && args+=(--platform "$PLATFORM")
# shellcheck disable=SC2206 # BUILD_ARGS is split on purpose
[[ -n ${BUILD_ARGS:-} ]] && args+=($BUILD_ARGS)
if [[ $ENGINE == docker ]]; then
  # The Containerfile uses RUN --mount (BuildKit).
  export DOCKER_BUILDKIT=1
fi

# The images package exactly this build (see the Containerfile); set
# STATIC=1 to build static musl binaries inside the container instead.
if [[ -z ${STATIC:-} ]]; then
  echo "==> cargo build --release --locked ${FEATURES[*]} -p xlattice-operator -p xlattice-sidecar"
  cargo build --release --locked "${FEATURES[@]}" -p xlattice-operator -p xlattice-sidecar
fi
# The Containerfile's STATIC build takes the same features (its builder has Go for --fips).
[[ -z $FIPS ]] || args+=(--build-arg "CARGO_FEATURES=xlattice-operator/fips,xlattice-sidecar/fips")
suffix=${STATIC:+-static}
echo "==> $ENGINE build --target operator$suffix -t $OPERATOR_IMAGE"
"$ENGINE" build "${args[@]}" --target "operator$suffix" -t "$OPERATOR_IMAGE" .
echo "==> $ENGINE build --target sidecar$suffix -t $SIDECAR_IMAGE"
"$ENGINE" build "${args[@]}" --target "sidecar$suffix" -t "$SIDECAR_IMAGE" .

cat <<EOF

Built:
  $OPERATOR_IMAGE
  $SIDECAR_IMAGE

Load them into a local cluster (no registry needed):
  kind:  kind load docker-image $OPERATOR_IMAGE $SIDECAR_IMAGE [--name CLUSTER]
  k3d:   k3d image import $OPERATOR_IMAGE $SIDECAR_IMAGE [-c CLUSTER]
EOF
if [[ $ENGINE == podman ]]; then
  cat <<EOF
  (podman: kind needs KIND_EXPERIMENTAL_PROVIDER=podman, or save and load an archive:
   podman save -o xlattice-images.tar $OPERATOR_IMAGE $SIDECAR_IMAGE
   kind load image-archive xlattice-images.tar  |  k3d image import xlattice-images.tar)
EOF
fi
cat <<EOF

Install the chart with them (IfNotPresent: use the loaded image, never pull):
  helm install xlattice charts/xlattice-operator -n xlattice-system --create-namespace \\
    --set image.repository=$REGISTRY/xlattice-operator --set image.tag=$TAG \\
    --set sidecar.image.repository=$REGISTRY/xlattice-sidecar --set sidecar.image.tag=$TAG \\
    --set image.pullPolicy=IfNotPresent --set sidecar.image.pullPolicy=IfNotPresent
EOF
