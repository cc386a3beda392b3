#!/usr/bin/env bash
# Installs the system packages Cordon builds and tests with, only those missing, so a fresh
# Debian 12 machine needs nothing but this repository and a Rust toolchain.
#   cmake, pkg-config, build-essential: C parts of Rust dependencies (pingora pulls libz-ng-sys)
#   curl, git: the integration tests' clients
#   iproute2, nftables: network namespaces and redirect rules (transparent mode, sandboxes)
#   prometheus: the real scraper the metrics test reads back through
#   runsc: gVisor, the sandbox runtime; python3: the escape suite's probes inside a sandbox
#   busybox-static: the statically linked busybox the musl-style (no glibc) image test is made of
#   mmdebstrap: builds sandbox images from Debian packages; e2fsprogs, mount: workspace quotas
#   (a loop-mounted ext4 filesystem per workspace)
#   python3-venv: a virtualenv ($CORDON_VENV, default ~/.cache/cordon/venv) with the reference
#   CMA libraries from PyPI (standardwebhooks, anthropic) the controller's tests check against
#   chromium, chromium-driver, fonts-dejavu-core: the dashboard's end-to-end tests drive a real
#   headless browser over WebDriver (and make dashboard-screenshots takes docs/ screenshots)
#   cargo-fuzz (crates.io): builds and runs the fuzz targets in fuzz/ (make fuzz, make test)
set -euo pipefail

packages=(build-essential cmake pkg-config curl git ca-certificates openssl iproute2 nftables prometheus runsc python3 python3-venv util-linux busybox-static mmdebstrap e2fsprogs mount chromium chromium-driver fonts-dejavu-core)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
    echo "installing: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

venv="${CORDON_VENV:-$HOME/.cache/cordon/venv}"
if ! "$venv/bin/python" -c 'import standardwebhooks, anthropic' 2>/dev/null; then
    echo "creating $venv (standardwebhooks, anthropic from PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'standardwebhooks>=1.0' 'anthropic>=2.10'
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (crates.io)"
    cargo install --locked --quiet cargo-fuzz@0.13.2
fi
