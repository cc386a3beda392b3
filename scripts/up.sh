#!/usr/bin/env bash
# `make up`: start the gateway on examples/cordon.toml (the agent-egress example policy),
# register this machine's loopback address as a demo session, print the curl commands that show
# an allowed and a denied request, and keep the gateway in the foreground (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:?}/release/cordon-proxy"
config=examples/cordon.toml

"$bin" --config "$config" ca print > /dev/null   # creates the CA under state/ on first run
"$bin" --config "$config" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null' EXIT INT TERM

for _ in $(seq 100); do
    curl -fsS http://127.0.0.1:9901/readyz > /dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "cordon-proxy exited; see the messages above" >&2; exit 1; }
    sleep 0.1
done
curl -fsS -X PUT http://127.0.0.1:9901/sessions/sesn_demo -d '{"source": "127.0.0.1"}' > /dev/null

cat <<MSG

Cordon is running (pid $pid): explicit proxy 127.0.0.1:3128, admin 127.0.0.1:9901,
metrics http://127.0.0.1:9902/metrics, audit log state/audit.log, CA state/ca.pem.
127.0.0.1 is registered as session sesn_demo. Try:

  # allowed by examples/policies/agent-egress (a registry read; needs internet to complete)
  curl --proxy http://127.0.0.1:3128 --cacert state/ca.pem https://pypi.org/simple/requests/

  # denied by policy: 403 with a JSON reason and a cordon-error header
  curl -i --proxy http://127.0.0.1:3128 --cacert state/ca.pem -X POST https://pypi.org/legacy/

  tail -f state/audit.log      # one JSON line per decision
Ctrl-C stops the gateway.
MSG
wait "$pid"
