#!/usr/bin/env bash
# hack/node-bench.sh: benchmarks on the real node, each a ratio against a baseline measured
# in the same run, rounds interleaved (the order flips every round):
#   1. pod create -> Ready: a member pod (webhook injection, identity minted, native
#      sidecar started and ready) against the same pod that matches no cluster
#   2. data path pod -> pod: app -> its sidecar (CONNECT) -> the peer's sidecar -> the peer
#      app, against app -> peer app over plaintext TCP on the pod network; the peer app
#      echoes, so both directions carry the bytes at once (rate = one direction)
#   3. revocation: a StatefulSet of N members loses one; per surviving sidecar, the time
#      from the deletion to the sidecar serving the directory without it, with the operator
#      stamping the directory version on member pods (the default) against the kubelet's
#      own sync period (the operator run with XLATTICE_REFRESH_MEMBER_PODS=false); the
#      kubelet's syncFrequency is at its default (1 min). Then, the same way, one member's
#      keys rotated: per member, the request to the sidecar serving the new keys
#
#   hack/node.sh up && hack/node.sh images && eval "$(hack/node.sh env)"
#   hack/node-bench.sh   # XL_BENCH_ROUNDS (default 7), XL_BENCH_MIB (default 512),
#                        # XL_BENCH_SECTIONS (default "startup datapath revocation"),
#                        # XL_BENCH_MEMBERS (revocation sizes, default "20 100")
set -euo pipefail
cd "$(dirname "$0")/.."
NS=xl-bench
ROUNDS=${XL_BENCH_ROUNDS:-7}
MIB=${XL_BENCH_MIB:-512}
SECTIONS=${XL_BENCH_SECTIONS:-startup datapath revocation}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
IMAGE=ghcr.io/xlattice/xlattice-member-app:0.1.0
now_ms() { date +%s%3N; }
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kubectl get node "${XLATTICE_NODE_IP:?run: eval \"\$(hack/node.sh env)\"}" >/dev/null || die "no node"

if ! helm status xlattice -n xlattice-system >/dev/null 2>&1; then
  helm install xlattice charts/xlattice-operator -n xlattice-system --create-namespace --wait >/dev/null
fi
kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$NS" >/dev/null
trap 'kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true' EXIT
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: xlattice.io/v1alpha1
kind: XLatticeCluster
metadata: {name: bench}
spec: {selector: {matchLabels: {bench: member}}, clusterPort: 7000, clientPort: 8000}
EOF

# Summary of per-round ratios: median, min-max.
summary() { sort -g | awk '{a[NR]=$1} END {printf "median %.2f (min %.2f, max %.2f, %d rounds)", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[1], a[NR], NR}'; }

pod_yaml() { # NAME LABEL
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, labels: {bench: $2}}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: $IMAGE, args: ["serve"], env: [{name: POD_NAME, value: $1}]}]
EOF
}
# Milliseconds from `kubectl create` to the pod's Ready condition.
startup_ms() { # NAME LABEL
  local t0
  t0=$(now_ms)
  pod_yaml "$1" "$2" | kubectl -n "$NS" create -f - >/dev/null
  kubectl -n "$NS" wait "pod/$1" --for=condition=Ready --timeout=120s >/dev/null
  echo $(($(now_ms) - t0))
}

if want startup; then
echo "== pod create -> Ready, $ROUNDS rounds: injected member vs the same pod uninjected"
ratios=()
for r in $(seq 1 "$ROUNDS"); do
  if ((r % 2)); then
    plain=$(startup_ms "plain-$r" none); member=$(startup_ms "member-$r" member)
  else
    member=$(startup_ms "member-$r" member); plain=$(startup_ms "plain-$r" none)
  fi
  ratio=$(awk -v m="$member" -v p="$plain" 'BEGIN {printf "%.2f", m / p}')
  ratios+=("$ratio")
  printf '  round %d: plain %5d ms, injected %5d ms, ratio %s\n' "$r" "$plain" "$member" "$ratio"
  kubectl -n "$NS" delete pod "plain-$r" "member-$r" --wait=false >/dev/null
done
printf '  injected / plain: %s\n' "$(printf '%s\n' "${ratios[@]}" | summary)"
fi

if want datapath; then
echo "== data path pod -> pod, $MIB MiB echoed per run, $ROUNDS rounds"
for p in a b; do
  pod_yaml "member-$p" member | kubectl -n "$NS" apply -f - >/dev/null
  # The plaintext peer listens on its pod IP: nothing in between but the pod network.
  pod_yaml "plain-$p" none | sed 's/env: \[/env: [{name: LISTEN_HOST, value: 0.0.0.0}, /' | kubectl -n "$NS" apply -f - >/dev/null
done
kubectl -n "$NS" wait pod/member-a pod/member-b pod/plain-a pod/plain-b --for=condition=Ready --timeout=120s >/dev/null
plain_b=$(kubectl -n "$NS" get pod plain-b -o 'jsonpath={.status.podIP}')
# member-a must see member-b in its directory before the first session.
for _ in $(seq 60); do
  kubectl -n "$NS" exec member-a -c app -- member_app hello member-b >/dev/null 2>&1 && break
  sleep 1
done
rate() { sed -n 's/.*mib_per_s=\([0-9.]*\).*/\1/p'; }
ratios=()
for r in $(seq 1 "$ROUNDS"); do
  run_plain() { kubectl -n "$NS" exec plain-a -- member_app bench "$plain_b:17000" "$MIB" | rate; }
  run_member() { kubectl -n "$NS" exec member-a -c app -- member_app bench via:member-b "$MIB" | rate; }
  if ((r % 2)); then plain=$(run_plain); member=$(run_member); else member=$(run_member); plain=$(run_plain); fi
  ratio=$(awk -v m="$member" -v p="$plain" 'BEGIN {printf "%.2f", m / p}')
  ratios+=("$ratio")
  printf '  round %d: plaintext %7s MiB/s, through two sidecars %7s MiB/s, ratio %s\n' "$r" "$plain" "$member" "$ratio"
done
printf '  two sidecars / plaintext: %s\n' "$(printf '%s\n' "${ratios[@]}" | summary)"
fi

# Percentiles of a list of milliseconds (one per line): p50, p99, max.
percentiles() { sort -g | awk '{a[NR]=$1} END {i50=int((NR-1)*0.5)+1; i99=int((NR-1)*0.99)+1; printf "p50 %d ms, p99 %d ms, max %d ms (%d sidecars)", a[i50], a[i99], a[NR], NR}'; }
loaded_at() { # POD: when its sidecar loaded what it serves (ms since the epoch)
  kubectl get --raw "/api/v1/namespaces/$NS/pods/$1:15090/proxy/metrics" 2>/dev/null |
    awk '$1 == "xlattice_sidecar_directory_loaded_timestamp_seconds" {printf "%.0f", $2 * 1000}'
}
set_refresh() { # true|false: the operator stamps member pods, or leaves it to the kubelet
  kubectl -n xlattice-system set env deployment/xlattice-operator XLATTICE_REFRESH_MEMBER_PODS="$1" >/dev/null
  kubectl -n xlattice-system rollout status deployment/xlattice-operator --timeout=120s >/dev/null
}
rev_yaml() { # N
  cat <<YAML
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: rev}
spec:
  replicas: $1
  podManagementPolicy: Parallel
  selector: {matchLabels: {bench: member, set: rev}}
  template:
    metadata: {labels: {bench: member, set: rev}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      terminationGracePeriodSeconds: 1
      containers: [{name: app, image: $IMAGE, args: ["serve"]}]
YAML
}
# Per sidecar rev-0..rev-LAST: ms from T until it loaded what it serves now, one per line.
served_since() { # T LAST
  local t=$1 last=$2 pod at waited
  for i in $(seq 0 "$last"); do
    pod=rev-$i waited=0
    while :; do
      at=$(loaded_at "$pod")
      if [[ -n $at && $at -gt $t ]]; then
        echo $((at - t))
        break
      fi
      if ((waited > 180)); then
        echo "  $pod: nothing new loaded 180 s after the change" >&2
        break
      fi
      sleep 1
      waited=$((waited + 1))
    done
  done
}
# In an N-member StatefulSet: one member removed (per survivor, deletion -> new directory
# served), then one member's keys rotated (per member, the request -> the new keys served:
# the rotated one's own sidecar loads its new Secret, the others the new directory).
revocation() { # N MODE
  local n=$1 mode=$2 t_del t_rot
  rev_yaml "$n" | kubectl -n "$NS" apply -f - >/dev/null
  kubectl -n "$NS" rollout status statefulset/rev --timeout=600s >/dev/null
  # Settle: whatever the pods' creation changed has reached every sidecar, whichever way
  # (the kubelet syncs each pod at least once a minute).
  sleep 90
  t_del=$(now_ms)
  kubectl -n "$NS" scale statefulset rev --replicas=$((n - 1)) >/dev/null
  printf '  %3d members, %-13s removal: %s\n' "$n" "$mode" "$(served_since "$t_del" $((n - 2)) | percentiles)"
  sleep 90
  t_rot=$(now_ms)
  kubectl -n "$NS" annotate pod rev-0 xlattice.io/rotate="$t_rot" --overwrite >/dev/null
  printf '  %3d members, %-13s rotation: %s\n' "$n" "$mode" "$(served_since "$t_rot" $((n - 2)) | percentiles)"
}

if want revocation; then
  echo "== revocation: one member of N removed (per survivor: deletion -> directory served without it), then one rotated (per member: request -> new keys served)"
  for n in ${XL_BENCH_MEMBERS:-20 100}; do
    for mode in stamped kubelet-sync; do
      if [[ $mode == stamped ]]; then set_refresh true; else set_refresh false; fi
      revocation "$n" "$mode"
      kubectl -n "$NS" delete statefulset rev --wait=true >/dev/null
      kubectl -n "$NS" wait pod -l set=rev --for=delete --timeout=300s >/dev/null 2>&1 || true
    done
  done
  set_refresh true
fi
