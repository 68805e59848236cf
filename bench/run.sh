#!/usr/bin/env bash
# Runs the txrelay performance benchmark from a checkout: bash bench/run.sh [--quick] [--profile]
#
# Installs what is missing (scripts/install.sh: Debian packages and the venv; opendkim and
# py-spy for the comparison and the profile), makes sure the machine's PostgreSQL and Redis
# run, then starts `python -m bench` with every argument given here (see --help). Needs root:
# the bench starts its own Postfix, Dovecot and OpenDKIM. Never stops shared services.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}

[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh must run as root (it starts Postfix)" >&2; exit 1; }

if [ ! -x "$venv/bin/txrelay" ]; then
    TXRELAY_VENV=$venv bash "$here/scripts/install.sh"
fi
if ! command -v opendkim >/dev/null; then
    echo "[bench] installing opendkim (the reference milter)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends opendkim >/dev/null
fi
case " $* " in
    *" --profile "*) [ -x "$venv/bin/py-spy" ] || "$venv/bin/pip" install -q py-spy ;;
esac

# shellcheck source=../scripts/services.sh
. "$here/scripts/services.sh"
ensure_postgresql
ensure_redis

cd "$here"
BENCH_VENV_BIN="$venv/bin" exec "$venv/bin/python" -m bench "$@"
