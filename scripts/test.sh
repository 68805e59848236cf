#!/usr/bin/env bash
# The test command: installs what is missing (scripts/install.sh: txrelay from this checkout,
# reinstalled at every run so the daemons the tests start run the current code;
# scripts/install-test-deps.sh: the test tools), starts PostgreSQL and Redis if they are not
# running, and runs the whole suite (unit, milter, store, CLI, end-to-end through real Postfix
# and Dovecot). Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}

# No /usr/local/bin/txrelay link: the tests run their venv's txrelay, and that link belongs
# to the node's own installation.
TXRELAY_VENV=$venv bash "$here/scripts/install.sh" --no-link
TXRELAY_VENV=$venv bash "$here/scripts/install-test-deps.sh"
# shellcheck source=scripts/services.sh
. "$here/scripts/services.sh"
ensure_postgresql
ensure_redis

cd "$here"
export PATH="$venv/bin:$PATH"
# Two pytest-xdist workers (PYTEST_WORKERS=N for another number, 0 for none): most e2e time
# is waiting for Postfix, the sink and timeouts, so two test files run at a time. Each file
# runs whole on one worker. The whole suite (no arguments) then runs the files that use what
# the machine has once (tests/conftest.py MACHINE_WIDE: the systemd journal, fixed role
# names, the image build, the bench) alone, one after the other.
pytest=("$venv/bin/pytest" -q -p no:cacheprovider --durations=15)
parallel=(-n "${PYTEST_WORKERS:-2}" --dist loadgroup)
if [ $# -gt 0 ]; then
    exec "${pytest[@]}" "${parallel[@]}" "$@"
fi
status=0
"${pytest[@]}" "${parallel[@]}" -m "not machine_wide" || status=$?
echo "[test] the machine-wide tests, alone"
"${pytest[@]}" -m machine_wide || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
exit "$status"
