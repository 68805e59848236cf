#!/usr/bin/env bash
# The demo: brings up the whole relay on loopback and sends a signed test mail through it.
#
#   scripts/demo.sh                      install, configure, start, provision, send, show
#   scripts/demo.sh --relayhost H:PORT   deliver to that relay host instead of the capture sink
#   scripts/demo.sh --stop               stop everything the demo started
#
# Postfix submission listens on 127.0.0.1:587 (self-signed certificate, STARTTLS + AUTH
# required), Dovecot checks the SASL logins, the txrelay milter authorises, signs and accounts,
# and by default every message goes to a capture sink writing the Maildir printed at the end.
# Running it twice works: what runs is left running, what exists is reused.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${TXRELAY_VENV:-/opt/txrelay/venv}
conf=/etc/txrelay/txrelay.toml
state=/var/lib/txrelay/demo
run=/run/txrelay
maildir=$state/maildir
sink_port=2525
relayhost="[127.0.0.1]:$sink_port"
account="Demo Shop"
domain=shop.example
connection="Web shop"
bounce_domain=bounces.relay.localdomain

log() { printf '\n==> %s\n' "$*"; }

stop_pidfile() {
    local file=$1
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$file"
}

stop_all() {
    log "stopping the demo relay"
    postfix stop 2>/dev/null || true
    stop_pidfile "$run/milter.pid"
    stop_pidfile "$run/tracker.pid"
    stop_pidfile "$run/sink.pid"
    if [ -f "$conf" ] && [ -f /etc/txrelay/dovecot/dovecot.conf ]; then
        doveadm -c /etc/txrelay/dovecot/dovecot.conf stop 2>/dev/null || true
    fi
    echo "stopped: Postfix, txrelay milter and tracker, capture sink, txrelay's Dovecot (PostgreSQL and Redis left running)"
}

start_background() {  # name, pidfile, logfile, command...
    local name=$1 pidfile=$2 logfile=$3
    shift 3
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "$name already running (pid $(cat "$pidfile"))"
        return 0
    fi
    nohup "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    echo "$name started (pid $!, log $logfile)"
}

wait_for_socket() {  # path, what
    for _ in $(seq 1 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "$2 did not come up (no socket $1)" >&2
    return 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --stop) stop_all; exit 0 ;;
        --relayhost) relayhost=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

log "installing packages and txrelay"
bash "$here/scripts/install.sh"
# shellcheck source=scripts/apt.sh
. "$here/scripts/apt.sh"
apt_install_missing demo swaks libnet-ssleay-perl  # the demo's SMTP client (+ its STARTTLS)
# shellcheck source=scripts/services.sh
. "$here/scripts/services.sh"
ensure_postgresql
ensure_redis
export PATH="$venv/bin:$PATH"
mkdir -p "$state" "$run" /var/log/txrelay

log "database and configuration"
# init creates role and database txrelay (the role's password only in $conf). A database
# txrelay made by an older demo belongs to postgres: keep using it as before.
database=()
owner=$(psql -h 127.0.0.1 -U postgres -Atc \
    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'txrelay'")
if [ -n "$owner" ] && [ "$owner" != txrelay ]; then
    database=(--database-url=postgresql://postgres@127.0.0.1:5432/txrelay)
fi
# The demo runs no DNS server its domains could publish DKIM records in: it lets them
# send unpublished ([dkim] require_published = false; a real relay keeps the default, true).
# Every run: the demo's settings never change, and a newer txrelay may write a newer Dovecot
# configuration (e.g. the SMTP login file's passdb); the running Dovecot reloads it below.
# Its bounce domain: each message's envelope sender becomes an address there that names it.
txrelay init --config-path="$conf" --smtp-host=127.0.0.1 "${database[@]}" --force \
    --set dkim.require_published=false --set bounce.domain="$bounce_domain"

log "bounce domain $bounce_domain: DSNs and complaints come back on 127.0.0.1:25"
# Postfix's pipe hands them to `txrelay inbound deliver` as the txrelay user (never root):
# it reads the configuration and the bounce secret through the txrelay group.
getent passwd txrelay >/dev/null \
    || useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin txrelay
bounce_key=$(txrelay --config="$conf" --json config show \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["settings"]["bounce.secret_file"]["value"])' \
    2>/dev/null || echo /etc/txrelay/bounce.key)
[ -f "$bounce_key" ] || "$venv/bin/python" -c 'import sys; from pathlib import Path
from txrelay.bounce_secret import write_bounce_secret; write_bounce_secret(Path(sys.argv[1]))' \
    "$bounce_key"
chgrp txrelay "$(dirname "$conf")" "$conf" "$bounce_key"

log "Postfix (main instance): submission on 127.0.0.1:587, milter, Dovecot SASL; port 25 takes mail for $bounce_domain"
# Debian's "No configuration" install leaves no main.cf: start from Postfix's compiled-in
# defaults (main.cf.dist is a commented template whose empty values would break Postfix).
[ -f /etc/postfix/main.cf ] || : >/etc/postfix/main.cf
[ -f /etc/postfix/master.cf ] || cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
[ -f /etc/ssl/private/ssl-cert-snakeoil.key ] || make-ssl-cert generate-default-snakeoil
postconf -e \
    "myhostname = relay.localdomain" \
    "mydestination =" \
    "inet_interfaces = loopback-only" \
    "relayhost = $relayhost" \
    "smtp_tls_security_level = may" \
    "smtpd_tls_cert_file = /etc/ssl/certs/ssl-cert-snakeoil.pem" \
    "smtpd_tls_key_file = /etc/ssl/private/ssl-cert-snakeoil.key" \
    "maillog_file = /var/log/txrelay/postfix.log" \
    "compatibility_level = 3.6"
# Postfix's local delivery opens the aliases database on every session: make it where the
# package left none ("error: open database /etc/aliases.db" otherwise).
[ -f /etc/aliases ] || printf 'postmaster: root\n' >/etc/aliases
alias_db=$(postconf -h alias_database | sed -n 's/^hash:\(.*\)/\1.db/p')
if [ -n "$alias_db" ] && [ ! -f "$alias_db" ]; then
    newaliases
    echo "made ${alias_db} (newaliases)"
fi
txrelay --config="$conf" postfix configure

log "Dovecot (txrelay's auth-only instance)"
if doveadm -c /etc/txrelay/dovecot/dovecot.conf who >/dev/null 2>&1 \
        || pgrep -f "dovecot -c /etc/txrelay/dovecot/dovecot.conf" >/dev/null; then
    doveadm -c /etc/txrelay/dovecot/dovecot.conf reload
    echo "Dovecot already running (configuration reloaded)"
else
    # Dovecot keeps the stdio it was started with: give it a file, not the caller's terminal.
    dovecot -c /etc/txrelay/dovecot/dovecot.conf </dev/null >>/var/log/txrelay/dovecot-start.log 2>&1 \
        || { cat /var/log/txrelay/dovecot-start.log >&2; exit 1; }
fi

log "capture sink and milter"
# The sink restarts every run (its Maildir stays): the check below reads the Message-IDs
# that the current sink logs, which a sink left running by an older demo did not.
stop_pidfile "$run/sink.pid"
start_background "capture sink" "$run/sink.pid" /var/log/txrelay/sink.log \
    txrelay sink --listen="127.0.0.1:$sink_port" --maildir="$maildir"
start_background "txrelay milter" "$run/milter.pid" /var/log/txrelay/milter.log \
    txrelay --config="$conf" milter
start_background "txrelay tracker" "$run/tracker.pid" /var/log/txrelay/tracker.log \
    txrelay --config="$conf" tracker
wait_for_socket "$run/milter.sock" "the milter"
if postfix status >/dev/null 2>&1; then postfix reload; else postfix start </dev/null; fi

log "provisioning: account \"$account\", domain $domain, connection \"$connection\""
txrelay --config="$conf" account show "$account" >/dev/null 2>&1 \
    || txrelay --config="$conf" account create "$account" --admin-email="postmaster@$domain"
txrelay --config="$conf" domain list --json | grep -q "\"$domain\"" \
    || txrelay --config="$conf" domain add "$account" "$domain" \
        --list-help="https://$domain/help"
if txrelay --config="$conf" connection show "$connection" --account="$account" >/dev/null 2>&1; then
    access=$(txrelay --config="$conf" --json connection rotate-password "$connection" \
        --account="$account")
else
    access=$(txrelay --config="$conf" --json connection create "$account" "$connection" \
        --domain="$domain")
fi
username=$(printf '%s' "$access" | python3 -c 'import json,sys; print(json.load(sys.stdin)["username"])')
password=$(printf '%s' "$access" | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')
cat <<EOF

SMTP access data for the demo connection (shown once; rotate with
'txrelay connection rotate-password "$connection" --account="$account"'):
  host      127.0.0.1
  port      587, STARTTLS required
  username  $username
  password  $password
EOF

log "sending a test mail with swaks (STARTTLS + AUTH)"
message_id="demo-$(date +%s%N)@$domain"
sink_log=/var/log/txrelay/sink.log
sink_log_start=$(( $(stat -c %s "$sink_log" 2>/dev/null || echo 0) + 1 ))
# "Message-Id", spelt as swaks spells its own: swaks replaces a default header only when
# the name matches exactly, and "Message-ID" gave the demo mail two of them. Every value as
# --option=value: a value beginning with '-' is then never read as an option.
swaks --silent=1 --server=127.0.0.1 --port=587 --tls \
    --auth=PLAIN --auth-user="$username" --auth-password="$password" \
    --from="orders@$domain" --to=customer@example.net \
    --header="From: Demo Shop <orders@$domain>" --header="Subject: txrelay demo" \
    --header="Message-Id: <$message_id>" --body="Thank you for your order."

if [ "$relayhost" = "[127.0.0.1]:$sink_port" ]; then
    log "waiting for the message at the capture sink ($maildir)"
    # The sink logs each message's Maildir key and Message-ID: read the log written since
    # the mail was sent, never every file of a Maildir that may hold many thousands.
    delivered=""
    for _ in $(seq 1 100); do
        key=$(tail -c "+$sink_log_start" "$sink_log" 2>/dev/null \
            | sed -n "s/^sink stored=\([^ ]*\) .* message_id=<$message_id>\$/\1/p" | head -n 1)
        [ -n "$key" ] && [ -f "$maildir/new/$key" ] && { delivered=$maildir/new/$key; break; }
        sleep 0.2
    done
    if [ -z "$delivered" ]; then
        echo "the test mail <$message_id> did not reach the capture sink within 20 s;" \
             "see /var/log/txrelay/postfix.log and milter.log" >&2
        exit 1
    fi
    echo "delivered: $delivered"
    echo "--- headers ---"
    sed '/^\r\?$/q' "$delivered"
    echo "--- DKIM check against the key txrelay stores (as receivers would see it in DNS) ---"
    "$venv/bin/python" "$here/scripts/verify_dkim.py" --config="$conf" "$delivered"
fi

log "ledger and statistics (the tracker reads Postfix's log)"
sleep 2
txrelay --config="$conf" account show "$account"
txrelay --config="$conf" stats --account="$account"
cat <<EOF

The relay is up. Maildir of the capture sink: $maildir
Mail that comes back (DSNs, complaints) to $bounce_domain: 127.0.0.1:25, counted by
'txrelay inbound stats' (README: "Bounces, complaints and webhooks in the demo")
Logs: /var/log/txrelay/ (postfix.log, milter.log, tracker.log, sink.log)
Stop everything: scripts/demo.sh --stop
EOF
