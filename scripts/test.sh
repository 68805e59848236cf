#!/usr/bin/env bash
# The test command: installs what is missing, starts PostgreSQL and Redis if they are not
# running, and runs the whole suite (unit, milter, store, CLI, end-to-end through real Postfix
# and Dovecot). Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}

bash "$here/scripts/install.sh"
# Test-only Debian packages: Perl's Mail::DKIM is the second DKIM verifier, independent of
# dkimpy, that the malformed corpus is checked with (tests/e2e/test_second_verifier.py).
test_packages=(libmail-dkim-perl)
for p in "${test_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
    echo "[test] installing Debian package $p"
    apt-get install -y -q --no-install-recommends "$p" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$p" >/dev/null; }
done
# shellcheck source=scripts/services.sh
. "$here/scripts/services.sh"
ensure_postgresql
ensure_redis

cd "$here"
export PATH="$venv/bin:$PATH"
exec "$venv/bin/pytest" -q -p no:cacheprovider --durations=15 "$@"
