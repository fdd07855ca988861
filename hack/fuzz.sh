#!/usr/bin/env bash
# hack/fuzz.sh [SECONDS]: runs every libFuzzer target of protocol/fuzz (cargo-fuzz, with
# AddressSanitizer) for SECONDS each (default 20), from seeds made of the test vectors
# (docs/test-vectors/v1.json and v2.json) and a corpus kept in ${XLATTICE_CACHE:-~/.cache/xlattice}
# that grows from run to run. Any crash, leak or timeout fails, and the input that caused it
# is left in protocol/fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> <file>).
# cargo-fuzz needs nightly flags (-Zsanitizer); RUSTC_BOOTSTRAP lets the stable toolchain
# accept them, so no second toolchain is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${1:-20}
CACHE=${XLATTICE_CACHE:-$HOME/.cache/xlattice}
export PATH="$CACHE/tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
TARGETS=(hello proof reply records directory identity)

SEEDS=$(mktemp -d /tmp/xlattice-fuzz-seeds.XXXXXX)
trap 'rm -rf "$SEEDS"' EXIT
python3 - "$ROOT/docs/test-vectors/v1.json" "$SEEDS" "$ROOT/docs/test-vectors/v2.json" <<'PY'
import json, os, sys
vectors, out = json.load(open(sys.argv[1])), sys.argv[2]
def put(target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    open(os.path.join(out, target, name), "wb").write(data)
h = bytes.fromhex
# The reply target's first byte picks the client's offer: 0 version 1, 2 version 2.
for hs in json.load(open(sys.argv[3]))["handshakes"]:
    put("hello", "v2-" + hs["name"], h(hs["hello"]))
    put("reply", "v2-" + hs["name"], b"\x02" + h(hs["reply"]))
for hs in vectors["handshakes"]:
    put("hello", hs["name"], h(hs["hello"]))
    put("reply", hs["name"], b"\x00" + h(hs["reply"]))
    if hs.get("proof_plaintext"):
        put("proof", hs["name"], h(hs["proof_plaintext"]))
    c2s = b"".join(h(r["record"]) for r in hs["records"] if r["direction"] == "client_to_server")
    put("records", hs["name"], c2s)
for r in vectors["rejections"]:
    put("hello", "rejection-" + r["name"], h(r["hello"]))
put("directory", "vectors.json", json.dumps(vectors["directory"]).encode())
s = vectors["identities"]["server"]
put("identity", "server", b"\0".join(s[k].encode() for k in ("node_id", "sk_private_pkcs8_pem", "ck_private_pkcs8_pem")))
put("identity", "public", s["ck_public_spki_pem"].encode())
PY

cd protocol/fuzz
cargo fuzz build -O --target-dir "$CACHE/target-fuzz" >&2
failed=0
for target in "${TARGETS[@]}"; do
  corpus="$CACHE/fuzz-corpus/$target"
  mkdir -p "$corpus"
  # -rss_limit_mb: a decoder that allocates what the wire announces fails here.
  if cargo fuzz run -O --target-dir "$CACHE/target-fuzz" "$target" "$corpus" "$SEEDS/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=512 -timeout=10 -print_final_stats=1 \
    >"$SEEDS/$target.log" 2>&1; then
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$SEEDS/$target.log" | grep -Eo '[0-9]+$' || echo '?')
    echo "  ok fuzz $target: $execs inputs in ${SECONDS_EACH}s, no crash (corpus: $(find "$corpus" -maxdepth 1 -type f | wc -l) inputs)"
  else
    echo "  FAIL fuzz $target:"
    tail -n 40 "$SEEDS/$target.log"
    failed=1
  fi
done
exit "$failed"
