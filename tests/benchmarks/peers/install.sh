#!/usr/bin/env bash
# Installs the optional reference servers of tests/benchmarks/bench_servers.py into this folder: nodemailer's
# smtp-server and Haraka (npm, pinned by package-lock.json) and a go-smtp sink built from Debian's packages.
# Run as root on Debian with Node 20 and npm; safe to run again (it skips what is already there).
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive GOPATH=/usr/share/gocode GO111MODULE=off

# go-smtp 0.12 and go-sasl as Debian ships them; no Go module proxy is needed (GOPATH is Debian's source tree).
missing=()
for package in golang-go golang-github-emersion-go-smtp-dev golang-github-emersion-go-sasl-dev; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    no_services=""  # a policy-rc.d of our own (Debian's convention: exit 101 forbids starting services)
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        no_services=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$no_services"
        chmod +x "$no_services"
        trap 'rm -f "$no_services"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -n "$no_services" ]]; then
        rm -f "$no_services"
        trap - EXIT
    fi
fi

# smtp-server and Haraka exactly as package-lock.json pins them, again only when the lockfile changed; no install
# scripts (the one there builds Haraka's optional native syslog module, which the sink does not load).
if ! cmp -s package-lock.json node_modules/.installed-lock.json; then
    npm ci --no-audit --no-fund --ignore-scripts
    cp package-lock.json node_modules/.installed-lock.json
fi

# Haraka would otherwise run `openssl dhparam 2048` at every start and offer no STARTTLS until it is done.
if [[ ! -s dhparams.pem ]]; then
    openssl dhparam -out dhparams.pem.part 2048 2>/dev/null
    mv dhparams.pem.part dhparams.pem
fi

(cd gosmtp_sink && go build -o gosmtp_sink .)
echo "peers installed in $(pwd)"
