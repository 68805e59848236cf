#!/usr/bin/env bash
# Installs what only the tests and CI need, on top of scripts/install.sh (run by
# scripts/test.sh; never needed on a production node): the Debian tools the tests drive
# (swaks, curl, buildah/podman for the image test, systemd for systemd-analyze and journald,
# NSD for the DNS tests, Perl's Mail::DKIM as a second DKIM verifier, fail2ban-regex, PHP and
# Node.js for the webhook signature recipes; mailauth from npm, a DKIM verifier that knows
# Ed25519)
# and the [test] extra (pytest & co) into $TXRELAY_VENV. Idempotent.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}

[ "$(id -u)" -eq 0 ] || { echo "install-test-deps.sh must run as root (it installs Debian packages)" >&2; exit 1; }
[ -x "$venv/bin/pip" ] || { echo "no virtualenv at $venv: run scripts/install.sh first" >&2; exit 1; }

packages=(
    swaks libnet-ssleay-perl      # a real SMTP client (+ its STARTTLS)
    curl                          # the metrics tests read /metrics as an operator would
    buildah podman runc catatonit debootstrap  # the container image, built and run without a Docker engine
    systemd                       # systemd-analyze proves the unit files; journald for the tracker tests
    libmail-dkim-perl             # Mail::DKIM, a second DKIM verifier independent of dkimpy
    php-cli nodejs                # the webhook signature recipes of docs/bounces-and-webhooks.md
    chromium chromium-driver      # the web dashboard tests load every page in headless Chromium
)
# shellcheck source=scripts/apt.sh
. "$here/scripts/apt.sh"
apt_install_missing install-test-deps "${packages[@]}"

# NSD, the authoritative DNS server the DNS tests start on loopback (tests/harness/dns.py),
# and fail2ban, whose fail2ban-regex the tests run against txrelay's filter
# (deploy/fail2ban/). Their own services must not start (policy-rc.d 101 while installing):
# the tests run NSD themselves and need no fail2ban server.
for package in nsd fail2ban; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" && continue
    echo "[install-test-deps] installing Debian packages: $package"
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package" >/dev/null \
        || { apt-get update -q >/dev/null &&
             DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                 "$package" >/dev/null; }
    [ -z "$made_policy" ] || rm -f "$policy"
done

# The [test] extra alone (txrelay itself is installed by install.sh): read from pyproject.toml
# so that the list lives in one place.
requirements=$(mktemp /tmp/txrelay-test-requirements.XXXXXX)
trap 'rm -f "$requirements"' EXIT
"$venv/bin/python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["test"]))' \
    "$here/pyproject.toml" >"$requirements"
if ! "$venv/bin/pip" install -q -r "$requirements" >"$requirements.log" 2>&1; then
    cat "$requirements.log" >&2
    rm -f "$requirements.log"
    echo "pip install of the test tools failed (log above)" >&2
    exit 1
fi
rm -f "$requirements.log"

# mailauth (npm), a DKIM verifier that checks Ed25519 signatures too (Debian's Mail::DKIM
# 1.20230212 has no Ed25519): tests/harness/mailauth_verify.js runs it with the machine's
# Node.js. Beside the venv, so each venv has its own copy; the version is pinned.
mailauth_version=7.1.0
mailauth_dir="$venv/node"
if ! grep -qs "\"version\": \"$mailauth_version\"" "$mailauth_dir/node_modules/mailauth/package.json"; then
    command -v npm >/dev/null || { echo "npm (Node.js) is missing: the DKIM tests need it for mailauth" >&2; exit 1; }
    echo "[install-test-deps] installing mailauth $mailauth_version (npm) into $mailauth_dir"
    mkdir -p "$mailauth_dir"
    npm install --prefix "$mailauth_dir" --no-audit --no-fund --silent "mailauth@$mailauth_version" >/dev/null
fi
