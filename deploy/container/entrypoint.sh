#!/bin/bash
# The txrelay container's entrypoint: configures Postfix, Dovecot and txrelay from the
# environment, then runs and supervises Postfix, Dovecot, the milter and the tracker. When
# one of them stops, the others are stopped and the container exits (the orchestrator
# restarts it); SIGTERM stops them in order: Postfix first, so no mail comes in while the
# milter is going away.
#
# Environment (docs/deployment.md has the full list):
#   RELAY_DATABASE_ADMIN_URL  a PostgreSQL admin (e.g. the postgres image's superuser),
#                             used only by the database step of `txrelay init` at start: it
#                             creates (or keeps) the role RELAY_DATABASE_NAME, owner of the
#                             database of that name (the CLI's), and NAME_milter (the milter's
#                             and tracker's), neither a superuser. Unset before any daemon
#                             starts. Required unless TXRELAY_DATABASE_URL is set.
#   RELAY_DATABASE_NAME       that role and database (default txrelay)
#   TXRELAY_DATABASE_URL      instead: a database your DBA made, used as it is (and then
#                             TXRELAY_DATABASE_MILTER_URL for the daemons' role);
#                             any TXRELAY_<SECTION>_<KEY> is a setting
#   TXRELAY_REDIS_URL         required unless TXRELAY_REDIS_MODE is sentinel (then
#                             TXRELAY_REDIS_SENTINELS and _SENTINEL_MASTER) or cluster
#                             (TXRELAY_REDIS_CLUSTER_NODES); it still carries their password
#   RELAY_HOSTNAME            Postfix myhostname and the host shops connect to (default: hostname -f)
#   RELAY_SUBMISSION_LISTEN   submission (= :587, default), a port, or HOST:PORT
#   RELAY_IMPLICIT_TLS_LISTEN also a service with implicit TLS there, e.g. 465 (default: none)
#   TXRELAY_DATABASE_MILTER_URL  the milter's and tracker's own role (default: the URL above;
#                             docs/operations.md, "Least privilege in PostgreSQL")
#   TXRELAY_DATABASE_KEK_FILE the key that seals DKIM keys (default /var/lib/txrelay/kek, in
#                             the /var/lib/txrelay volume; made at first start; back it up)
#   TXRELAY_BOUNCE_SECRET_FILE the key of return paths (default /var/lib/txrelay/bounce.key,
#                             in the volume; made at first start; the same on every node)
#   TXRELAY_BOUNCE_DKIM_KEY_FILE the relay's DKIM key for CFBL (default
#                             /var/lib/txrelay/bounce-dkim.pem, in the volume; likewise)
#   RELAY_TLS_CERT, RELAY_TLS_KEY   PEM files (default /etc/txrelay/tls/{cert,key}.pem,
#                             a self-signed pair is made there when both are missing)
#   RELAY_RELAYHOST           Postfix relayhost, e.g. [smtp.example.net]:587 (default: direct)
#   POSTCONF_<name>=<value>   any other main.cf parameter, e.g. POSTCONF_inet_protocols=ipv4
#   RELAY_LOG_ROTATE_MB, RELAY_LOG_ROTATE_HOURS, RELAY_LOG_KEEP_DAYS, RELAY_LOG_CHECK_SECONDS
#                             rotation of the Postfix log (txrelay-rotate-maillog)
set -euo pipefail

log() { printf '%s txrelay-entrypoint: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

config=${TXRELAY_CONFIG:-/etc/txrelay/txrelay.toml}
hostname=${RELAY_HOSTNAME:-$(hostname -f 2>/dev/null || hostname)}
listen=${RELAY_SUBMISSION_LISTEN:-submission}
implicit_tls=${RELAY_IMPLICIT_TLS_LISTEN:-}
cert=${RELAY_TLS_CERT:-/etc/txrelay/tls/cert.pem}
key=${RELAY_TLS_KEY:-/etc/txrelay/tls/key.pem}
maillog=/var/log/txrelay/postfix.log
milter_socket=${TXRELAY_MILTER_SOCKET:-unix:/run/txrelay/milter.sock}
as_txrelay=(setpriv --reuid txrelay --regid txrelay --init-groups --inh-caps=-all --)

# The admin URL goes to init's database step only: no daemon inherits it.
admin_url=${RELAY_DATABASE_ADMIN_URL:-}
unset RELAY_DATABASE_ADMIN_URL
database_name=${RELAY_DATABASE_NAME:-txrelay}
[ -n "${TXRELAY_DATABASE_URL:-}" ] || [ -n "$admin_url" ] \
    || die "set RELAY_DATABASE_ADMIN_URL (postgresql://postgres:PASSWORD@host/postgres: init makes txrelay's own roles with it), or TXRELAY_DATABASE_URL (a database your DBA made)"
case "${TXRELAY_REDIS_MODE:-standalone}" in
    standalone) [ -n "${TXRELAY_REDIS_URL:-}" ] \
        || die "set TXRELAY_REDIS_URL (redis://host:6379/0), or TXRELAY_REDIS_MODE=sentinel|cluster" ;;
    sentinel) [ -n "${TXRELAY_REDIS_SENTINELS:-}" ] && [ -n "${TXRELAY_REDIS_SENTINEL_MASTER:-}" ] \
        || die "TXRELAY_REDIS_MODE=sentinel needs TXRELAY_REDIS_SENTINELS (host:port,...) and TXRELAY_REDIS_SENTINEL_MASTER" ;;
    cluster) [ -n "${TXRELAY_REDIS_CLUSTER_NODES:-}" ] \
        || die "TXRELAY_REDIS_MODE=cluster needs TXRELAY_REDIS_CLUSTER_NODES (host:port,...)" ;;
    *) die "TXRELAY_REDIS_MODE=${TXRELAY_REDIS_MODE}: use standalone, sentinel or cluster" ;;
esac

case "$listen" in
    submission) port=587 ;;
    *:*) port=${listen##*:} ;;
    *) port=$listen ;;
esac
[[ "$port" =~ ^[0-9]+$ ]] || die "RELAY_SUBMISSION_LISTEN=$listen: use submission, PORT or HOST:PORT"

# What `txrelay connection create` tells shops, and where the metrics are served: settings
# the operator may still override.
export TXRELAY_CONFIG=$config
export TXRELAY_SMTP_HOST=${TXRELAY_SMTP_HOST:-$hostname}
export TXRELAY_SMTP_PORT=${TXRELAY_SMTP_PORT:-$port}
export TXRELAY_MILTER_SOCKET=$milter_socket
export TXRELAY_METRICS_MILTER_LISTEN=${TXRELAY_METRICS_MILTER_LISTEN-0.0.0.0:9151}
export TXRELAY_METRICS_TRACKER_LISTEN=${TXRELAY_METRICS_TRACKER_LISTEN-0.0.0.0:9152}
export TXRELAY_TRACKER_LOG_PATH=$maillog
# In a volume: a KEK made anew by each container would leave the sealed keys unreadable.
export TXRELAY_DATABASE_KEK_FILE=${TXRELAY_DATABASE_KEK_FILE:-/var/lib/txrelay/kek}
# Likewise the bounce secret: bounces of mail already sent carry tokens made with it.
export TXRELAY_BOUNCE_SECRET_FILE=${TXRELAY_BOUNCE_SECRET_FILE:-/var/lib/txrelay/bounce.key}
export TXRELAY_BOUNCE_DKIM_KEY_FILE=${TXRELAY_BOUNCE_DKIM_KEY_FILE:-/var/lib/txrelay/bounce-dkim.pem}

configure_txrelay() {
    # init writes txrelay.toml and Dovecot's auth configuration from these settings, and
    # migrates the database (several nodes starting at once: the migration is one
    # transaction per node; the first wins, the others find nothing to do).
    local settings=() name value section
    while IFS='=' read -r name value; do
        [ "$name" = TXRELAY_CONFIG ] && continue
        name=${name#TXRELAY_}
        section=${name%%_*}
        settings+=(--set "${section,,}.$(tr 'A-Z' 'a-z' <<<"${name#*_}")=$value")
    done < <(env | grep -E '^TXRELAY_[A-Z]+_[A-Z0-9_]+=' || true)
    local database=()
    if [ -z "${TXRELAY_DATABASE_URL:-}" ]; then
        # Nothing runs as the superuser: init creates (or keeps) role $database_name, owner
        # of the database (the CLI's [database] url), and ${database_name}_milter (the
        # daemons' milter_url, granted only what they need), with passwords of its own. A
        # restart keeps them (init reads the configuration it replaces); a new container
        # sets new ones.
        database=(--admin-url "$admin_url" --database-name "$database_name")
        log "PostgreSQL roles $database_name (owner, CLI) and ${database_name}_milter (milter, tracker): made or kept with the admin URL, neither a superuser"
    elif [ -n "$admin_url" ]; then
        log "TXRELAY_DATABASE_URL is set: RELAY_DATABASE_ADMIN_URL is not used"
    fi
    log "configuring txrelay (database schema, Dovecot auth) for $hostname"
    # The certificate made or mounted above (init would otherwise make a self-signed one of
    # its own beside the configuration); init checks that the key is the certificate's.
    txrelay init --config-path "$config" --force --tls-cert "$cert" --tls-key "$key" \
        "${database[@]}" "${settings[@]}" >/dev/null
    chgrp txrelay "$config" && chmod 0640 "$config"
    # The daemons run as txrelay: they read the keys through its group.
    local file
    for file in "$TXRELAY_DATABASE_KEK_FILE" "$TXRELAY_BOUNCE_SECRET_FILE" \
            "$TXRELAY_BOUNCE_DKIM_KEY_FILE"; do
        [ ! -f "$file" ] || { chgrp txrelay "$file" && chmod 0640 "$file"; }
    done
    # Keys stored in clear by an older image are sealed now (a no-op once they all are).
    txrelay --config "$config" keys encrypt >/dev/null
}

make_certificate() {
    [ -s "$cert" ] && [ -s "$key" ] && return 0
    [ -e "$cert" ] || [ -e "$key" ] && die "only one of $cert and $key exists"
    log "no TLS certificate: making a self-signed one for $hostname in $(dirname "$cert")"
    mkdir -p "$(dirname "$cert")" "$(dirname "$key")"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
        -subj "/CN=$hostname" -addext "subjectAltName=DNS:$hostname" \
        -keyout "$key" -out "$cert" 2>/dev/null
    chmod 0600 "$key"
}

configure_postfix() {
    log "configuring Postfix: submission on $listen, relayhost '${RELAY_RELAYHOST:-}'"
    cp /etc/postfix/master.cf.dist /etc/postfix/master.cf
    cat >/etc/postfix/main.cf <<EOF
# Written by txrelay-entrypoint at every start from the environment: change the
# environment (RELAY_*, POSTCONF_*), not this file.
compatibility_level = 3.6
myhostname = $hostname
mydestination =
alias_maps =
alias_database =
local_transport = error:this relay delivers no local mail
mynetworks = 127.0.0.0/8
relayhost = ${RELAY_RELAYHOST:-}
smtpd_tls_cert_file = $cert
smtpd_tls_key_file = $key
smtp_tls_security_level = may
smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt
maillog_file = $maillog
# Global settings txrelay postfix configure leaves to the admin (it only adds its own
# service); this Postfix relays nothing but txrelay's mail, so they are set here.
disable_mime_output_conversion = yes
smtputf8_enable = yes
enable_long_queue_ids = yes
EOF
    # No chroot (the auth and milter sockets are outside the queue), no port 25: this
    # Postfix only relays what shops submit.
    postconf -F '*/*/chroot = n'
    postconf -MX smtp/inet
    local name value
    while IFS='=' read -r name value; do
        name=${name#POSTCONF_}
        postconf -e "$name=$value" || die "POSTCONF_$name: postconf refused it"
    done < <(env | grep -E '^POSTCONF_[A-Za-z0-9_]+=' || true)
    txrelay postfix configure --listen "$listen" ${implicit_tls:+--implicit-tls "$implicit_tls"} \
        >/dev/null
    # The tracker (user txrelay) reads the log postlogd (root) appends to.
    touch "$maillog" && chown root:txrelay "$maillog" && chmod 0640 "$maillog"
    postfix check || die "postfix check failed (see above)"
}

prepare_runtime() {
    install -d -o txrelay -g postfix -m 2750 /run/txrelay
    install -d -o txrelay -g txrelay -m 0750 /var/lib/txrelay
    # The SMTP login file: the milter (txrelay) writes it, Dovecot's auth process (group
    # dovecot) reads it; init made the directory root's, the milter must own it.
    local passdb_dir
    passdb_dir=$(dirname "$(txrelay_setting dovecot passdb_file)")
    install -d -o txrelay -g dovecot -m 2750 "$passdb_dir"
    chown txrelay:dovecot "$passdb_dir" && chmod 2750 "$passdb_dir"
}

pids=()
names=()
start() {  # start NAME COMMAND...: in the background, remembered for wait/stop
    local name=$1
    shift
    "$@" &
    pids+=("$!")
    names+=("$name")
    log "started $name (pid $!)"
}

stop_all() {
    log "stopping"
    postfix stop >/dev/null 2>&1 || true
    local i
    for i in "${!pids[@]}"; do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
    for i in "${!pids[@]}"; do wait "${pids[$i]}" 2>/dev/null || true; done
}

wait_for_socket() {  # PATH SECONDS WHAT
    local i
    for i in $(seq 1 $(($2 * 10))); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    die "$3 did not create $1 within $2 s"
}

main() {
    make_certificate
    configure_txrelay
    configure_postfix
    prepare_runtime
    trap 'stop_all; exit 0' TERM INT
    start dovecot dovecot -F -c /etc/txrelay/dovecot/dovecot.conf
    start milter "${as_txrelay[@]}" txrelay milter
    wait_for_socket "${milter_socket#unix:}" 30 "the milter"
    wait_for_socket "$(txrelay_setting dovecot auth_socket)" 30 "Dovecot"
    start tracker "${as_txrelay[@]}" txrelay tracker
    start postfix postfix start-fg
    start maillog-rotation /usr/local/bin/txrelay-rotate-maillog
    log "ready: submission on $listen as $hostname"
    local code=0
    wait -n "${pids[@]}" || code=$?
    log "a service stopped (exit $code); stopping the others"
    stop_all
    exit $((code == 0 ? 1 : code))
}

txrelay_setting() {  # SECTION KEY: one value of the effective configuration
    /opt/txrelay/venv/bin/python -c 'import os, sys, pathlib
from txrelay.config import load_config
config = load_config(pathlib.Path(os.environ["TXRELAY_CONFIG"]))
print(getattr(getattr(config, sys.argv[1]), sys.argv[2]))' "$1" "$2"
}

main "$@"
