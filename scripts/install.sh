#!/usr/bin/env bash
# Installs everything txrelay needs on a Debian/Ubuntu machine, as root, idempotently:
# Debian packages (Postfix, Dovecot auth, libmilter for pymilter, PostgreSQL and Redis
# when absent), a virtualenv in $TXRELAY_VENV with txrelay installed from this checkout, and
# /usr/local/bin/txrelay. Safe to run again: it only adds what is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install] %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "install.sh must run as root (it installs Debian packages)" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "install.sh needs a Debian or Ubuntu machine (apt-get)" >&2; exit 1; }

packages=(
    postfix postfix-pcre          # the MTA: SMTP, STARTTLS, queue, smtp-sink/smtp-source
    dovecot-core                  # SASL authentication for Postfix, from txrelay's SMTP login file
    libmilter-dev                 # pymilter is compiled against it
    gcc python3-dev python3-venv  # to build pymilter
    openssl ssl-cert ca-certificates
    swaks libnet-ssleay-perl      # a real SMTP client for tests and the demo (+ its STARTTLS)
    procps iproute2               # pgrep/ss used by the scripts
    curl                          # the metrics tests read /metrics as an operator would
    buildah podman runc catatonit debootstrap  # the container image, built and run without a Docker engine
    systemd                       # systemd-analyze proves the unit files where systemd is not PID 1
)
# PostgreSQL and Redis: use what runs already; install Debian's only where there is none.
command -v pg_ctlcluster >/dev/null || command -v postgres >/dev/null || packages+=(postgresql)
command -v redis-server >/dev/null || packages+=(redis-server)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # Postfix must not write a main.cf of its own: txrelay's commands configure it.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Package scripts must not start services under a policy that forbids it (containers, CI).
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

python=$(command -v python3)
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "txrelay needs Python >= 3.11; $python is $("$python" --version)" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv $venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi
log "installing txrelay from $here into $venv"
"$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
# Build-backend chatter goes to a log; a failure still stops the script and shows it.
if ! "$venv/bin/pip" install -q -e "$here[test]" >/tmp/txrelay-pip.log 2>&1; then
    cat /tmp/txrelay-pip.log >&2
    echo "pip install failed (log above)" >&2
    exit 1
fi
ln -sf "$venv/bin/txrelay" /usr/local/bin/txrelay
version=$("$venv/bin/txrelay" --version)  # fails the script if the CLI cannot start
log "done: $version"
