# shellcheck shell=bash
# hack/lib.sh: what the scripts here share. Sourced, never run:
#
#   LOG_TAG=my-script   # optional; the default is the sourcing script's name
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# - messages that name their script: log, die; tools that must be on PATH: need
# - the report every test script prints and hack/test.sh counts: phase (a stage of a run),
#   step (a group of checks), ok / bad ("  ok   ..." / "  FAIL ..." lines; `failures`
#   counts the FAILs), check (ok or bad from a command), eventually (retry until true)
# - loopback ports: port_in_use, free_port
# - sa_kubeconfig: a kubeconfig that authenticates as a ServiceAccount (a bound token), for
#   running the operator on this host as the chart's ServiceAccount
[[ -n ${XLATTICE_LIB_SOURCED:-} ]] && return 0
XLATTICE_LIB_SOURCED=1

LOG_TAG=${LOG_TAG:-$(basename "${BASH_SOURCE[1]:-$0}" .sh)}
log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not on PATH"; }

# ---- the report -----------------------------------------------------------------------

failures=0
phase() { printf '\n==> %s\n' "$*"; }
step() { printf '\n--- %s\n' "$*"; }
ok() { printf '  ok   %s\n' "$*"; }
bad() { printf '  FAIL %s\n' "$*" >&2; failures=$((failures + 1)); }
check() { # DESCRIPTION COMMAND...: ok if the command succeeds, else bad
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
# Retries COMMAND (its output discarded) every 0.5 s for up to SECS seconds.
eventually() { # SECS COMMAND...
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# ---- loopback ports -------------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on, below the kernel's ephemeral range (32768-60999, which outgoing
# connections take) and not in USED_PORTS (ports picked but not bound yet).
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    if ! port_in_use "$p" && [[ " ${USED_PORTS:-} " != *" $p "* ]]; then
      echo "$p"
      return 0
    fi
    : "$i"
  done
  die "no free port found on 127.0.0.1"
}

# ---- kubeconfigs ----------------------------------------------------------------------

# OUT: the current kubeconfig's cluster with a bound token of NS/SA instead of its user.
sa_kubeconfig() { # NS SA OUT [DURATION]
  local server ca token
  server=$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  token=$(kubectl -n "$1" create token "$2" --duration="${4:-1h}")
  cat >"$3" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: $2, user: {token: "$token"}}]
contexts: [{name: test, context: {cluster: test, user: $2}}]
current-context: test
EOF
  chmod 600 "$3"
}
