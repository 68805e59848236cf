#!/usr/bin/env bash
# The test command: installs what is missing, starts PostgreSQL and Redis if they are not
# running, and runs the whole suite (unit, milter, store, CLI, end-to-end through real Postfix
# and Dovecot). Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}

bash "$here/scripts/install.sh"

# Test-only Debian packages, never needed on a relay host: NSD, the authoritative DNS server
# the DNS tests start on loopback (tests/harness/dns.py), and Perl's Mail::DKIM, the second
# DKIM verifier, independent of dkimpy, the malformed corpus is checked with
# (tests/e2e/test_second_verifier.py). NSD's own service must not start (policy-rc.d 101
# while installing): the tests run NSD themselves.
test_packages=(nsd libmail-dkim-perl)
missing_test_packages=()
for p in "${test_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing_test_packages+=("$p")
done
if [ ${#missing_test_packages[@]} -gt 0 ]; then
    echo "[test] installing test-only Debian packages: ${missing_test_packages[*]}"
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing_test_packages[@]}" >/dev/null || { apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing_test_packages[@]}" >/dev/null; }
    [ -z "$made_policy" ] || rm -f "$policy"
fi
# shellcheck source=scripts/services.sh
. "$here/scripts/services.sh"
ensure_postgresql
ensure_redis

cd "$here"
export PATH="$venv/bin:$PATH"
exec "$venv/bin/pytest" -q -p no:cacheprovider --durations=15 "$@"
