#!/usr/bin/env bash
# Installs what a production txrelay node needs on a Debian/Ubuntu machine, as root,
# idempotently: Debian packages (Postfix, Dovecot auth, libmilter and a compiler for pymilter,
# PostgreSQL and Redis when absent), a virtualenv in $TXRELAY_VENV (default /opt/txrelay/venv)
# with txrelay installed from this checkout (a copy, not a link to the checkout: the checkout
# can be removed afterwards), and /usr/local/bin/txrelay (not with --no-link).
# Nothing for tests, CI or the image:
# scripts/install-test-deps.sh (run by scripts/test.sh) and scripts/build-image.sh install
# those. Safe to run again: it adds what is missing and reinstalls txrelay from the checkout.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}
# The command on PATH; --no-link: none (scripts/test.sh, whose venv is not the node's).
link=/usr/local/bin/txrelay
case "${1:-}" in
    "") ;;
    --no-link) link= ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (the only one is --no-link)" >&2; exit 2 ;;
esac
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install] %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "install.sh must run as root (it installs Debian packages)" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "install.sh needs a Debian or Ubuntu machine (apt-get)" >&2; exit 1; }

packages=(
    postfix                       # the MTA: SMTP, STARTTLS, queue
    dovecot-core                  # SASL authentication for Postfix, from txrelay's SMTP login file
    libmilter-dev                 # pymilter is compiled against it
    gcc python3-dev python3-venv  # to build pymilter
    openssl ssl-cert ca-certificates  # TLS tools, the snakeoil certificate, CA roots
    postgresql-client             # psql: txrelay init creates its role and database with it
    procps iproute2               # pgrep/ss used by the scripts
)
# PostgreSQL and Redis: use what runs already; install Debian's only where there is none.
command -v pg_ctlcluster >/dev/null || command -v postgres >/dev/null || packages+=(postgresql)
command -v redis-server >/dev/null || packages+=(redis-server)

# shellcheck source=scripts/apt.sh
. "$here/scripts/apt.sh"
apt_install_missing install "${packages[@]}"

# The daemons and Postfix's pipe to `txrelay inbound deliver` run as unprivileged users, so
# the venv's interpreter must be one they may execute: the distribution's /usr/bin/python3
# first (a python3 under a private home, e.g. pyenv's in /root, is not).
python=$(command -v python3)
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python=/usr/bin/python3
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "txrelay needs Python >= 3.11; $python is $("$python" --version)" >&2; exit 1; }

runs_as_nobody() {
    command -v runuser >/dev/null || return 0
    runuser -u nobody -- "$venv/bin/python" -c '' 2>/dev/null
}
if [ -x "$venv/bin/python" ] && [ -n "$link" ] && ! runs_as_nobody; then
    # A node's venv (not the tests'): made with an interpreter only root may run.
    log "recreating $venv: its Python ($(readlink -f "$venv/bin/python")) is not one the txrelay user may run"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv $venv ($python)"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi
log "installing txrelay from $here into $venv"
"$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
# Non-editable, from a copy of the sources: the venv holds its own copy of the code, and no
# build/ directory in the checkout can put a since-removed module back into the wheel.
# --force-reinstall --no-deps makes the copy current even when the version number did not
# change (a checkout between releases). Build chatter goes to a log; a failure shows it.
source_copy=$(mktemp -d /tmp/txrelay-src.XXXXXX)
pip_log=$source_copy.log
trap 'rm -rf "$source_copy" "$pip_log"' EXIT
cp -r "$here/pyproject.toml" "$here/README.md" "$here/txrelay" "$source_copy/"
if ! { "$venv/bin/pip" install -q "$source_copy" \
        && "$venv/bin/pip" install -q --no-deps --force-reinstall "$source_copy"; } >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    echo "pip install failed (log above)" >&2
    exit 1
fi
[ -z "$link" ] || ln -sf "$venv/bin/txrelay" "$link"
version=$("$venv/bin/txrelay" --version)  # fails the script if the CLI cannot start
log "done: $version"
