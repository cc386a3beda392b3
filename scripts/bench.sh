#!/usr/bin/env bash
# `make bench`: Cordon side by side with direct, Squid ssl-bump and mitmdump on one machine.
# Installs the peers (scripts/bench-deps.sh), builds release binaries, runs `cordon-bench
# compare` (writes bench/results/<date>.json) and `cordon-bench report` (docs/BENCHMARKS.md and
# docs/bench/*.svg). Everything listens on 127.0.0.1; nothing reaches the internet.
#   BENCH_DURATION  seconds per measured run (default 6)
#   BENCH_ARGS      more `cordon-bench compare` flags, e.g. "--systems direct,cordon --scenarios 1,4"
#   BENCH_PROXY_CPUS / BENCH_LOAD_CPUS  taskset CPU lists (default 1 / 0 on 2+ cores, unpinned on 1)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cordon/target}"
scripts/bench-deps.sh
cargo build --release --locked -q -p cordon-proxy -p cordon-bench
bin="$CARGO_TARGET_DIR/release"
venv="${CORDON_BENCH_VENV:-$HOME/.cache/cordon/venv-bench}"

if (( $(nproc) >= 2 )); then
    proxy_cpus="${BENCH_PROXY_CPUS:-1}" load_cpus="${BENCH_LOAD_CPUS:-0}"
else
    proxy_cpus="${BENCH_PROXY_CPUS:-}" load_cpus="${BENCH_LOAD_CPUS:-}"
fi
pin=()
[[ -n "$load_cpus" ]] && pin=(taskset -c "$load_cpus")
# 10,000 idle connections need that many descriptors in the load generator and the proxies.
ulimit -n 40000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
out=$("${pin[@]}" "$bin/cordon-bench" compare \
    --cordon-bin "$bin/cordon-proxy" --mitmdump-bin "$venv/bin/mitmdump" \
    --duration "${BENCH_DURATION:-6}" --proxy-cpus "$proxy_cpus" --load-cpus "$load_cpus" \
    ${BENCH_ARGS:-})
"$bin/cordon-bench" report "$out"
