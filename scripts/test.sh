#!/usr/bin/env bash
# The test command: installs what is missing, starts PostgreSQL and Redis if they are not
# running, and runs the whole suite (unit, milter, store, CLI, end-to-end through real Postfix
# and Dovecot). Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}

bash "$here/scripts/install.sh"
# shellcheck source=scripts/services.sh
. "$here/scripts/services.sh"
ensure_postgresql
ensure_redis

cd "$here"
export PATH="$venv/bin:$PATH"
exec "$venv/bin/pytest" -q -p no:cacheprovider --durations=15 "$@"
