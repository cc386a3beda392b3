#!/usr/bin/env bash
# First measurement of the proxy (issue: egress proxy): HTTPS requests through Cordon vs direct
# to the same nginx upstream, in one run, with oha as the load generator (certificates
# verified). Writes a summary to stdout and JSON to bench/results/proxy-<date>.json.
#   scenarios: keep-alive at 8 connections (throughput), keep-alive at 1 connection (added
#   latency at low load), a new TLS connection per request (handshakes/s, warm leaf cache).
# Everything listens on 127.0.0.1; the proxy decides every request with the agent-egress policy.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cordon/target}"
duration="${BENCH_DURATION:-10s}"
command -v oha >/dev/null || cargo install oha --locked
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light; }
cargo build --release -q -p cordon-proxy
proxy_bin="$CARGO_TARGET_DIR/release/cordon-proxy"

work=$(mktemp -d /tmp/cordon-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(port); proxy_port=$(port); admin_port=$(port)

# Upstream PKI (a test CA, a leaf for pypi.org) and nginx.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench upstream CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" -days 2 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pypi.org" \
    -keyout "$work/up.key" -out "$work/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:pypi.org\n' > "$work/ext"
openssl x509 -req -in "$work/up.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -out "$work/up.pem" -days 2 -extfile "$work/ext" 2>/dev/null
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$up_port ssl http2;
        ssl_certificate $work/up.pem;
        ssl_certificate_key $work/up.key;
        location / { return 200 "ok\n"; }
    }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$up_port") 2>/dev/null && break; sleep 0.1; done
(exec 3<>"/dev/tcp/127.0.0.1/$up_port") 2>/dev/null || { cat "$work/nginx-error.log" >&2; echo "nginx did not start" >&2; exit 1; }

cat > "$work/cordon.toml" <<TOML
[proxy]
explicit_listen = "127.0.0.1:$proxy_port"
admin_listen = "127.0.0.1:$admin_port"
state_dir = "$work/state"
[policy]
bundle = "$PWD/examples/policies/agent-egress"
[tls]
upstream_extra_roots = ["$work/ca.pem"]
[upstream.connect_to]
"pypi.org:443" = "127.0.0.1:$up_port"
[audit]
path = "$work/audit.log"
TOML
"$proxy_bin" --config "$work/cordon.toml" ca print > "$work/cordon-ca.pem"
CORDON_LOG=warn "$proxy_bin" --config "$work/cordon.toml" &
proxy_pid=$!
pids+=($proxy_pid)
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS -X PUT "http://127.0.0.1:$admin_port/sessions/sesn_bench" -d '{"source":"127.0.0.1"}' >/dev/null

url=https://pypi.org/simple/requests/
direct=(--cacert "$work/ca.pem" --connect-to "pypi.org:443:127.0.0.1:$up_port")
through=(--cacert "$work/cordon-ca.pem" -x "http://127.0.0.1:$proxy_port")
cpu() { awk '{print $14 + $15}' "/proc/$proxy_pid/stat"; }
run() { # name, then oha args
    local name=$1; shift
    local before; before=$(cpu)
    oha --no-tui --output-format json -z "$duration" "$@" "$url" > "$work/$name.json"
    echo "$name $(( $(cpu) - before ))" >> "$work/cpu.txt"
}
: > "$work/cpu.txt"
oha --no-tui --output-format quiet -n 200 -c 4 "${through[@]}" "$url"   # warm the leaf cache
run direct_keepalive_c8 -c 8 "${direct[@]}"
if [[ -n "${PERF:-}" ]]; then   # PERF=1: profile the proxy during the keep-alive run
    perf record -g -o "${PERF_OUT:-/tmp/cordon-proxy.perf}" -p "$proxy_pid" -- sleep "${duration%s}" &
    perf_pid=$!
fi
run cordon_keepalive_c8 -c 8 "${through[@]}"
[[ -n "${PERF:-}" ]] && wait "$perf_pid"
run direct_keepalive_c1 -c 1 "${direct[@]}"
run cordon_keepalive_c1 -c 1 "${through[@]}"
run direct_newconn_c8 -c 8 --disable-keepalive "${direct[@]}"
run cordon_newconn_c8 -c 8 --disable-keepalive "${through[@]}"

mkdir -p bench/results
out="bench/results/proxy-$(date -u +%Y-%m-%d).json"
python3 - "$work" "$out" "$(getconf CLK_TCK)" <<'PY'
import json, sys, os
work, out, hz = sys.argv[1], sys.argv[2], int(sys.argv[3])
cpu = dict(l.split() for l in open(os.path.join(work, "cpu.txt")))
res = {}
for name in cpu:
    j = json.load(open(os.path.join(work, name + ".json")))
    s = j["summary"]; p = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    res[name] = {"rps": s["requestsPerSec"], "p50_ms": (p.get("p50") or 0) * 1000, "p99_ms": (p.get("p99") or 0) * 1000,
                 "success": s.get("successRate"), "status": codes, "proxy_cpu_s": int(cpu[name]) / hz}
def row(a, b, label):
    d, c = res[a], res[b]
    ratio = c["rps"] / d["rps"] if d["rps"] else 0
    per_cpu = c["rps"] / (c["proxy_cpu_s"] / 10) if c["proxy_cpu_s"] else 0
    print(f"{label:<38} direct {d['rps']:>9.0f}/s  cordon {c['rps']:>9.0f}/s  ratio {ratio:5.2f}  "
          f"p50 +{(c['p50_ms']-d['p50_ms'])*1000:7.0f} us  p99 +{(c['p99_ms']-d['p99_ms'])*1000:7.0f} us  "
          f"proxy cpu {c['proxy_cpu_s']:.1f}s  statuses {c['status']}")
row("direct_keepalive_c8", "cordon_keepalive_c8", "keep-alive, 8 connections")
row("direct_keepalive_c1", "cordon_keepalive_c1", "keep-alive, 1 connection (low load)")
row("direct_newconn_c8", "cordon_newconn_c8", "new TLS connection per request, 8")
json.dump(res, open(out, "w"), indent=2)
print("written to", out)
PY
