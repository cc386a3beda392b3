#!/usr/bin/env bash
# Installs what `make bench` compares against and profiles with, only what is missing; `make test`
# never needs any of it.
#   nginx-light: the fake upstream (TLS 1.3, HTTP/1.1 and HTTP/2, a test CA made per run)
#   squid-openssl: Squid with ssl-bump (a peer); its system service is stopped, the bench runs
#     its own instance in the foreground on 127.0.0.1 with a private config
#   linux-perf: profiles of the proxy where a target is missed
#   git: scenario 10 clones through the proxies from `git http-backend` (git's own CGI program)
#   python3-venv: mitmproxy (mitmdump, a peer) from PyPI in its own virtualenv,
#     $CORDON_BENCH_VENV (default ~/.cache/cordon/venv-bench), apart from the test venv
set -euo pipefail

packages=(nginx-light squid-openssl linux-perf python3-venv openssl util-linux procps git)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
    echo "bench-deps: installing ${missing[*]}"
    [[ $(id -u) -eq 0 ]] || { echo "bench-deps: need root to apt-get install ${missing[*]}" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # The package starts a system squid on :3128; the bench runs its own, so stop that one.
    if command -v systemctl >/dev/null && systemctl is-active -q squid 2>/dev/null; then
        systemctl disable --now squid || true
    fi
fi

venv="${CORDON_BENCH_VENV:-$HOME/.cache/cordon/venv-bench}"
if ! "$venv/bin/mitmdump" --version >/dev/null 2>&1; then
    echo "bench-deps: creating $venv (mitmproxy from PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'mitmproxy>=11,<13'
fi
