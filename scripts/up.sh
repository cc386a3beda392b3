#!/usr/bin/env bash
# `make up`: the gateway (cordon-proxy) and the controller (cordon-controller serve) on this
# machine, in the foreground; Ctrl-C stops them.
#
# Without CMA credentials (the default) it first plays the demo: cordon-cma-sim, a local CMA
# simulator, sends a signed webhook; the controller claims the session, starts a gVisor
# sandbox behind the proxy and runs the demo's tool calls in it (examples/demo/scenario.toml:
# an API call whose token the proxy injects, a request the policy refuses, the file tools),
# then the example custom tools (examples/tools/tools.toml: a SQLite lookup and a PNG chart,
# each in a sandbox of its own, and a private service through the proxy);
# then a local session (docs/OPEN-MODELS.md): `cordon-controller run` with the demo agent
# (examples/demo/agent.toml), whose loop runs on the gateway against a scripted
# OpenAI-compatible model behind the proxy; then it prints what happened and where to look.
# Everything stays on this machine: the "API" and the model are scripts/demo-upstream.py on
# 127.0.0.1 with a demo CA.
#
# With CORDON_ENVIRONMENT_ID, ANTHROPIC_ENVIRONMENT_KEY and CORDON_WEBHOOK_SECRET set, it
# serves that real CMA self-hosted environment instead (docs/CONTROLLER.md).
#
#   CORDON_UP_EXIT=1   exit after the demo (its status is the scenario's verdict)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin="${CARGO_TARGET_DIR:?}/release"
images="${CORDON_IMAGES:-$HOME/.cache/cordon/images}"

if [[ $(id -u) -ne 0 ]]; then
    echo "make up: sandboxes need root (network namespaces, nftables, runsc); run it as root" >&2
    exit 1
fi

mode=demo
if [[ -n "${CORDON_ENVIRONMENT_ID:-}" ]]; then
    mode=cma
    for v in ANTHROPIC_ENVIRONMENT_KEY CORDON_WEBHOOK_SECRET; do
        if [[ -z "${!v:-}" ]]; then
            echo "make up: CORDON_ENVIRONMENT_ID is set, so $v must be too (docs/CONTROLLER.md)" >&2
            exit 1
        fi
    done
fi

# The default sandbox image: built once (about a minute: mmdebstrap downloads Debian
# packages), then reused until images/default.toml changes.
"$bin/cordon-controller" image build default --from-file images/default.toml --store "$images"

dir="$repo/state/up-$mode"
mkdir -p "$dir"
chmod 700 "$dir"
rm -f "$dir/audit.log" "$dir/upstream.log" "$dir/report.json"

pids=()
stop_all() {
    # Only the processes this script started, by pid, newest first.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 3128 3129 5300 8088 8089 8090 9901 9902 9300 9443; do
    if ! port_free "$p"; then
        echo "make up: port $p is in use (another make up?); stop what holds it" >&2
        exit 1
    fi
done

wait_for() { # url name pid
    for _ in $(seq 300); do
        curl -fsS "$1" > /dev/null 2>&1 && return 0
        if ! kill -0 "$3" 2>/dev/null; then
            echo "make up: $2 exited; the end of $dir/$2.log:" >&2
            tail -20 "$dir/$2.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "make up: $2 did not answer $1 within 30 s; see $dir/$2.log" >&2
    exit 1
}

private() { (umask 077 && printf '%s' "$2" > "$1"); }

# What both modes share: the listeners the sandboxes' nftables rules redirect to, and the
# sandboxes themselves.
common_config() {
    cat <<TOML
[proxy]
explicit_listen = "127.0.0.1:3128"
transparent_listen = "0.0.0.0:3129"
admin_listen = "127.0.0.1:9901"
metrics_listen = "127.0.0.1:9902"
state_dir = "."

[dns]
listen = "0.0.0.0:5300"

[dashboard]
listen = "127.0.0.1:8090"

[sandbox]
name_prefix = "cordon-up"
interface_prefix = "cup"
address_pool = "10.231.0.0/24"
images_dir = "$images"
TOML
}

environment_key=""
if [[ $mode == demo ]]; then
    # The demo API's PKI: a CA the proxy trusts for upstreams, a leaf for the two demo hosts.
    # Made again when the host list changes (llm.example.test joined it with local sessions).
    printf 'subjectAltName=DNS:api.example.test,DNS:blocked.example.test,DNS:llm.example.test\n' \
        > "$dir/upstream.ext.want"
    if [[ ! -f "$dir/upstream.pem" ]] || ! cmp -s "$dir/upstream.ext.want" "$dir/upstream.ext"; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=Cordon demo upstream CA" -keyout "$dir/upstream-ca.key" \
            -out "$dir/upstream-ca.pem" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=api.example.test" \
            -keyout "$dir/upstream.key" -out "$dir/upstream.csr" 2>/dev/null
        cp "$dir/upstream.ext.want" "$dir/upstream.ext"
        openssl x509 -req -in "$dir/upstream.csr" -CA "$dir/upstream-ca.pem" \
            -CAkey "$dir/upstream-ca.key" -CAcreateserial -days 30 -extfile "$dir/upstream.ext" \
            -out "$dir/upstream.pem" 2>/dev/null
    fi
    install -m 600 examples/demo/secrets.toml "$dir/secrets.toml"
    private "$dir/example-api-token" "cordon-demo-token-4d1c2b"
    private "$dir/demo-model-key" "sk-demo-model-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    private "$dir/webhook-secret" "whsec_$(head -c 24 /dev/urandom | base64)"
    environment_key="sk-ant-oat01-cordon-demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    {
        common_config
        cat <<TOML

[policy]
bundle = "$repo/examples/demo/policy"

[tls]
upstream_extra_roots = ["upstream-ca.pem"]

[upstream.connect_to]
"api.example.test:443" = "127.0.0.1:9443"
"blocked.example.test:443" = "127.0.0.1:9443"
"llm.example.test:443" = "127.0.0.1:9443"

[credentials]
store = "secrets.toml"

[controller]
listen = "127.0.0.1:8088"
admin_listen = "127.0.0.1:8089"
webhook_secret_file = "webhook-secret"
environment_id = "env_demo"
environment_key_env = "CORDON_DEMO_ENVIRONMENT_KEY"
base_url = "http://127.0.0.1:9300"
drain_interval_ms = 5000
max_idle_ms = 3000
tools = "$repo/examples/tools/tools.toml"
local_sessions = true
TOML
    } > "$dir/cordon.toml"
    python3 scripts/demo-upstream.py 9443 "$dir/upstream.pem" "$dir/upstream.key" \
        "$dir/upstream.log" "$dir/demo-model-key" 2> "$dir/upstream-server.log" &
    pids+=($!)
else
    {
        common_config
        cat <<TOML

[policy]
bundle = "$repo/examples/policies/agent-egress"

[controller]
listen = "${CORDON_WEBHOOK_LISTEN:-127.0.0.1:8088}"
admin_listen = "127.0.0.1:8089"
environment_id = "$CORDON_ENVIRONMENT_ID"
TOML
        if [[ -n "${CORDON_SECRETS:-}" ]]; then
            printf '\n[credentials]\nstore = "%s"\n' "$CORDON_SECRETS"
        fi
    } > "$dir/cordon.toml"
fi

# A dashboard login for this run: user "admin", operator, a new password each time.
dashboard_password=$(head -c 15 /dev/urandom | base64 | tr '+/' 'xy')
printf '%s' "$dashboard_password" | "$bin/cordon-controller" dashboard user add admin \
    --role operator --password-stdin --replace --config "$dir/cordon.toml" > /dev/null
dashboard_login="  dashboard  http://127.0.0.1:8090/  user admin, password $dashboard_password (new each make up)"

"$bin/cordon-proxy" --config "$dir/cordon.toml" 2> "$dir/proxy.log" &
pids+=($!)
wait_for http://127.0.0.1:9901/readyz proxy "${pids[-1]}"
CORDON_LOG=info CORDON_DEMO_ENVIRONMENT_KEY="$environment_key" \
    "$bin/cordon-controller" serve --config "$dir/cordon.toml" 2> "$dir/controller.log" &
pids+=($!)
wait_for http://127.0.0.1:8089/healthz controller "${pids[-1]}"

if [[ $mode == cma ]]; then
    cat <<MSG
Cordon is serving CMA environment $CORDON_ENVIRONMENT_ID:
  webhooks   POST http://${CORDON_WEBHOOK_LISTEN:-127.0.0.1:8088}/webhooks (put HTTPS in front; docs/CONTROLLER.md)
  sessions   $bin/cordon-controller sessions --config $dir/cordon.toml
  metrics    http://127.0.0.1:8089/metrics (controller), http://127.0.0.1:9902/metrics (proxy)
  audit log  $dir/audit.log      logs: $dir/proxy.log, $dir/controller.log
$dashboard_login
Ctrl-C stops the gateway.
MSG
    wait "${pids[@]}"
    exit
fi

echo "== the demo session: cordon-cma-sim -> signed webhook -> controller -> gVisor sandbox -> proxy"
set +e
started=$(date +%s%N)
# The logs outlive a run: the summaries below show this run's records only.
since=$(date -u +%Y-%m-%dT%H:%M:%S)
CORDON_SIM_ENVIRONMENT_KEY="$environment_key" "$bin/cordon-cma-sim" run \
    --scenario examples/demo/scenario.toml --listen 127.0.0.1:9300 \
    --webhook-url http://127.0.0.1:8088/webhooks --webhook-secret-file "$dir/webhook-secret" \
    --webhook-backoff-ms 1000 --start-after http://127.0.0.1:8089/healthz \
    --timeout-secs 300 --report "$dir/report.json"
verdict=$?
set -e
echo "(from the sessions opening to the work item stopped: $(( ($(date +%s%N) - started) / 1000000 )) ms)"

echo
echo "== a local session: the same sandboxes and tools, an open model's loop on the gateway (docs/OPEN-MODELS.md)"
# The demo's model is scripted (scripts/demo-upstream.py); the proxy injects its key. The
# agent asks before bash runs; --yes allows it here.
if ! "$bin/cordon-controller" agents show demo --config "$dir/cordon.toml" > /dev/null 2>&1; then
    "$bin/cordon-controller" agents create --file examples/demo/agent.toml --config "$dir/cordon.toml" > /dev/null
else
    "$bin/cordon-controller" agents update --file examples/demo/agent.toml --config "$dir/cordon.toml" > /dev/null
fi
set +e
"$bin/cordon-controller" run --agent demo --yes --archive --config "$dir/cordon.toml" \
    "Fetch the user from the example API, note it in the workspace, and look up order ord_1001." \
    2> "$dir/local-run.log" | sed 's/^/  /'
local_verdict=${PIPESTATUS[0]}
set -e
grep -E '^session .*\(agent' "$dir/local-run.log" | sed 's/^/  /' || true
if [[ $local_verdict -ne 0 ]]; then
    cat "$dir/local-run.log" >&2
    verdict=$local_verdict
fi

echo
echo "== sessions (cordon-controller sessions)"
"$bin/cordon-controller" sessions --config "$dir/cordon.toml" || true
echo
echo "== what the proxy decided for sesn_demo, its custom tools and the local agent's model ($dir/audit.log)"
python3 - "$dir/audit.log" "$since" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    if r.get("time", "")[:19] < sys.argv[2]:
        continue
    # The session's own requests, and its custom tools' (session tool:<name>, labelled with it).
    ours = (r.get("session") == "sesn_demo" or r.get("labels", {}).get("session") == "sesn_demo"
            or r.get("session", "").startswith("model:"))
    if not ours or r.get("kind") != "request":
        continue
    creds = "  injected " + ",".join(r["credentials"]) if r.get("credentials") else ""
    who = "" if r["session"] == "sesn_demo" else f'  [{r["session"]}]'
    print(f'  {r["decision"]:<5} {r.get("method", "")} https://{r.get("host", "")}{r.get("path", "")}'
          f' -> {r.get("status", "-")} ({r["reason"]}){creds}{who}')
PY
echo
echo "== custom tool calls and model requests (controller audit log, $dir/controller/audit.jsonl)"
python3 - "$dir/controller/audit.jsonl" "$dir/report.json" "$since" <<'PY'
import json, sys
try:
    records = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
except FileNotFoundError:
    records = []
# Tool calls of this run (the log also holds dashboard actions, and earlier runs).
calls = [r for r in records if "tool" in r and r.get("time", "")[:19] >= sys.argv[3]]
models = [r for r in records if r.get("kind") == "model_call" and r.get("time", "")[:19] >= sys.argv[3]]
for c in calls:
    print(f'  {c["tool"]:<14} {c["handler"]:<5} {c["outcome"]:<8} {c["duration_ms"]:7.1f} ms'
          f'  in {c["input_bytes"]} B, out {c["output_bytes"]} B, {c["images"]} image(s)')
for m in models:
    print(f'  model {m["model"]:<14} {m["outcome"]:<8} {m["duration_ms"]:5d} ms  tokens in {m["input_tokens"]}, out {m["output_tokens"]}, {m["tool_calls"]} call(s)  [agent {m["agent"]}]')
try:
    report = json.load(open(sys.argv[2], encoding="utf-8"))
except (FileNotFoundError, ValueError):
    report = {}
for session in report.get("sessions", []):
    for step in session.get("steps", []):
        if step.get("tool") in {c["tool"] for c in calls}:
            text = (step.get("result") or "").strip().replace("\n", " ")
            print(f'  -> {step["tool"]}: {text[:110]}')
PY
echo
echo "== what the demo API received ($dir/upstream.log); the sandbox never held the token"
python3 - "$dir/upstream.log" <<'PY'
import json, sys
try:
    lines = open(sys.argv[1], encoding="utf-8").readlines()
except FileNotFoundError:
    lines = []
for line in lines:
    head = json.loads(line)["head"].splitlines()
    auth = [h for h in head if h.lower().startswith("authorization:")]
    shown = [a.split("cordon-demo-token")[0] + "cordon-demo-token-…" if "cordon-demo-token" in a else a for a in auth]
    print(f"  {head[0]}   {' '.join(shown) or '(no authorization header)'}")
PY
echo
echo "== metrics (non-zero)"
curl -fsS http://127.0.0.1:8089/metrics \
    | grep -E '^cordon_controller_(tool_calls_total|custom_tool_calls_total|webhook_deliveries_total|work_items_total|sessions_active|lease_losses_total|session_start_seconds_(sum|count)|model_requests_total|model_tokens_total|local_runs_total)' \
    | grep -v ' 0$' | sed 's/^/  /' || true
curl -fsS http://127.0.0.1:9902/metrics \
    | grep -E '^cordon_proxy_(requests_total|credentials_total)' | grep -v ' 0$' | sed 's/^/  /' || true

cat <<MSG

Where to look:
$dashboard_login
  verdict    $dir/report.json (each tool call, its result, what the scenario expected)
  audit log  $dir/audit.log (one JSON line per decision)
  logs       $dir/proxy.log, $dir/controller.log
  sessions   $bin/cordon-controller sessions --config $dir/cordon.toml
  metrics    http://127.0.0.1:8089/metrics (controller), http://127.0.0.1:9902/metrics (proxy)
MSG
if [[ $verdict -ne 0 ]]; then
    echo "The demo scenario FAILED: see above and $dir/controller.log." >&2
fi
if [[ -n "${CORDON_UP_EXIT:-}" ]]; then
    exit "$verdict"
fi
echo "The gateway keeps running on the demo configuration; Ctrl-C stops it."
wait "${pids[@]}"
