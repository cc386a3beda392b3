#!/usr/bin/env bash
# `make bench-instructions`: user-space instructions per request of a cordon-proxy binary,
# counted by callgrind (valgrind). Unlike requests per second, the count does not move with
# the other work on a shared machine (repeat runs agree within about 0.3%), so it is how a
# change to the hot path is judged before `make bench` confirms it in wall-clock terms. It does
# not count the kernel's share (about a third of the proxy's CPU in scenario 1; see
# docs/BENCHMARKS.md).
#
# It reuses `cordon-bench compare`'s set-up (test PKI, nginx upstream, cordon.toml) by running
# scenario 1 briefly with --keep-work, then starts the proxy under callgrind on that work
# directory, warms 8 keep-alive connections up, and counts N requests of scenario 1's shape
# (bench policy), of scenario 5's (agent-egress policy, credential injection) and of scenario
# 8's (a 4 KiB POST body, bench policy).
#   CORDON_BIN  the binary to measure (default: the release build)
#   N           requests counted per scenario (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cordon/target}"
scripts/bench-deps.sh
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --locked -q -p cordon-proxy -p cordon-bench
bin="$CARGO_TARGET_DIR/release"
cordon="${CORDON_BIN:-$bin/cordon-proxy}"
n="${N:-2000}"
venv="${CORDON_BENCH_VENV:-$HOME/.cache/cordon/venv-bench}"

scratch=$(mktemp -d /tmp/cordon-instructions.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n "${work:-}" ]] && rm -rf "$work"
    rm -rf "$scratch"
}
trap cleanup EXIT

"$bin/cordon-bench" compare --cordon-bin "$cordon" --mitmdump-bin "$venv/bin/mitmdump" \
    --systems cordon --scenarios 1 --duration 1 --proxy-cpus "" --keep-work \
    --out "$scratch" 2>"$scratch/compare.log" >/dev/null
work=$(sed -n 's/^cordon-bench: work directory \(.*\) (kept)$/\1/p' "$scratch/compare.log")
[[ -d "$work" ]] || { cat "$scratch/compare.log" >&2; exit 1; }

upstream=$(grep -o 'listen 127.0.0.1:[0-9]*' "$work/nginx.conf" | cut -d: -f2)
explicit=$(sed -n 's/^explicit_listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$work/cordon.toml")
admin=$(sed -n 's/^admin_listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$work/cordon.toml")
/usr/sbin/nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
pids+=($!)

load() {
    local requests=$1 url=$2
    shift 2
    "$bin/cordon-bench" load --proxy "127.0.0.1:$explicit" --ca "$work/intercept-ca.pem" \
        -c 8 -n "$requests" -d 600 "$url" "$@" >"$scratch/load.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["errors"] == 0 else "load errors: %s" % d["error_samples"])' "$scratch/load.json"
}

# measure LABEL BUNDLE URL [load flags]: the proxy on BUNDLE under callgrind, 400 requests to
# warm up, then N counted.
measure() {
    local label=$1 bundle=$2 url=$3
    shift 3
    sed "s#^bundle = .*#bundle = \"$bundle\"#" "$work/cordon.toml" >"$work/$label.toml"
    rm -rf "$work/cordon-state" "$work/cordon-audit.log"
    CORDON_LOG=warn CORDON_BENCH_GITHUB_TOKEN=bench-github-token CORDON_BENCH_GIT_TOKEN=bench-git-token \
        valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$scratch/$label.callgrind.%p" \
        "$cordon" --config "$work/$label.toml" >/dev/null 2>"$scratch/valgrind.log" &
    local vg=$!
    pids+=("$vg")
    for _ in $(seq 200); do
        curl -sf -o /dev/null "http://127.0.0.1:$admin/healthz" && break
        sleep 0.3
    done
    # The agent-egress policy denies sources no session holds.
    curl -sf -o /dev/null -X PUT -H 'content-type: application/json' \
        -d '{"source":"127.0.0.1","agent_id":"bench"}' "http://127.0.0.1:$admin/sessions/sesn_bench"
    load 400 "$url" "$@"
    callgrind_control -z "$vg" >/dev/null
    callgrind_control -i on "$vg" >/dev/null
    load "$n" "$url" "$@"
    callgrind_control -d "$label" "$vg" >/dev/null
    kill -INT "$vg"
    wait "$vg" 2>/dev/null || true
}
measure scenario-1 "$PWD/bench/peers/cordon/policy" "https://bench.test:$upstream/"
measure scenario-5 "$PWD/examples/policies/agent-egress" \
    "https://api.github.com:$upstream/repos/rust-lang/rust" -H 'accept: application/vnd.github+json'
# Scenario 8's shape: a 4 KiB POST body (the bench policy).
measure scenario-8 "$PWD/bench/peers/cordon/policy" "https://bench.test:$upstream/" \
    --post-bytes 4096 -H 'content-type: application/json'

shopt -s nullglob
profiles=("$scratch"/*.callgrind.*.*)
if (( ${#profiles[@]} == 0 )); then
    echo "bench-instructions: callgrind wrote no profile of $cordon (is it the proxy binary itself, not a wrapper script? valgrind's log follows)" >&2
    cat "$scratch/valgrind.log" >&2
    exit 1
fi
echo "instructions per request (callgrind, user space, $n requests, 8 keep-alive connections), $cordon:"
for f in "${profiles[@]}"; do
    label=$(sed -n 's/^desc: Trigger: dump //p' "$f")
    total=$(sed -n 's/^summary: //p' "$f")
    [[ -n "$label" && -n "$total" ]] && printf '  %s: %d\n' "$label" $((total / n))
    if [[ -n "${KEEP_PROFILES:-}" ]]; then cp "$f" "$KEEP_PROFILES/$label.callgrind"; fi
done
