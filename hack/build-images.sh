#!/usr/bin/env bash
# hack/build-images.sh: build the operator and sidecar images from the Containerfile.
#
# Usage: hack/build-images.sh [TAG]            (default TAG: the chart's appVersion)
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

die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }

TAG=${1:-$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' charts/xlattice-operator/Chart.yaml)}
[[ -n $TAG ]] || die "no tag given and no appVersion in charts/xlattice-operator/Chart.yaml"
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "'$TAG' is not a valid image tag"
REGISTRY=${REGISTRY:-ghcr.io/xlattice}
OPERATOR_IMAGE=$REGISTRY/xlattice-operator:$TAG
SIDECAR_IMAGE=$REGISTRY/xlattice-sidecar:$TAG

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
  echo "==> cargo build --release --locked -p xlattice-operator -p xlattice-sidecar"
  cargo build --release --locked -p xlattice-operator -p xlattice-sidecar
fi
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
