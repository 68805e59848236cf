#!/usr/bin/env bash
# Installs txrelay's systemd units next to an existing Postfix: user txrelay (in group
# postfix, for the milter socket), the units for the milter, the tracker, the webhook worker
# and txrelay's Dovecot (enabled and started), the web dashboard's unit (installed, not
# enabled), the tmpfiles.d entry for their directories, and (when fail2ban is installed) its
# filter and jail for failed logins on txrelay's service. Idempotent.
#
#   scripts/install-systemd.sh              install, then enable and start when systemd runs
#   scripts/install-systemd.sh --no-start   install only
#   DESTDIR=/tmp/root scripts/install-systemd.sh --no-start   stage into another root
#
# Run it after scripts/install.sh, `txrelay init` (it writes /etc/txrelay/txrelay.toml and
# Dovecot's config) and `txrelay postfix configure`: the README's "Install next to an existing
# Postfix". Where systemd is not PID 1 (a container, a chroot) it installs the units, creates
# the directories and prints the commands that start the services by hand.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
destdir=${DESTDIR:-}
start=1
case "${1:-}" in
    "") ;;
    --no-start) start=0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "install-systemd.sh: unknown option $1 (the only one is --no-start)" >&2; exit 2 ;;
esac
units=(txrelay-dovecot.service txrelay-milter.service txrelay-tracker.service txrelay-webhooks.service)
# Installed but never enabled or started here: the admin turns them on when wanted.
optional_units=(txrelay-web.service)

log() { printf '[install-systemd] %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "install-systemd.sh must run as root" >&2; exit 1; }

if [ -z "$destdir" ]; then
    if [ "$start" = 1 ] && [ ! -f /etc/txrelay/txrelay.toml ]; then
        echo "/etc/txrelay/txrelay.toml is missing: run 'txrelay init' first, then this again" >&2
        exit 1
    fi
    getent group postfix >/dev/null || { echo "group postfix is missing: install Postfix" >&2; exit 1; }
    if ! getent passwd txrelay >/dev/null; then
        log "creating system user txrelay"
        useradd --system --home-dir /var/lib/txrelay --no-create-home \
            --shell /usr/sbin/nologin txrelay
    fi
    usermod -a -G postfix txrelay
    [ -x /usr/local/bin/txrelay ] || log "warning: /usr/local/bin/txrelay is missing (scripts/install.sh links it)"
fi

install -d "$destdir/etc/systemd/system" "$destdir/etc/tmpfiles.d"
for unit in "${units[@]}" "${optional_units[@]}"; do
    install -m 0644 "$here/deploy/systemd/$unit" "$destdir/etc/systemd/system/$unit"
done
install -m 0644 "$here/deploy/systemd/txrelay.tmpfiles.conf" "$destdir/etc/tmpfiles.d/txrelay.conf"
log "installed ${units[*]} ${optional_units[*]} and tmpfiles.d/txrelay.conf under ${destdir:-/}"
log "not enabled: ${optional_units[*]} (the read-only web dashboard, docs/dashboard.md): systemctl enable --now txrelay-web"
# fail2ban's filter and jail for failed logins on txrelay's service (docs/security.md), when
# fail2ban is installed. The filter is replaced on every run; a jail the admin has edited
# (port, logpath, backend) is kept.
if [ -d "$destdir/etc/fail2ban" ]; then
    install -d "$destdir/etc/fail2ban/filter.d" "$destdir/etc/fail2ban/jail.d"
    install -m 0644 "$here/deploy/fail2ban/filter.d/txrelay.conf" "$destdir/etc/fail2ban/filter.d/txrelay.conf"
    if [ ! -e "$destdir/etc/fail2ban/jail.d/txrelay.conf" ]; then
        install -m 0644 "$here/deploy/fail2ban/jail.d/txrelay.conf" "$destdir/etc/fail2ban/jail.d/txrelay.conf"
    fi
    log "installed fail2ban's filter.d/txrelay.conf and jail.d/txrelay.conf (enabled: 5 failed logins in 10 minutes, banned for an hour): check the jail's port and logpath, then run fail2ban-client reload"
else
    log "fail2ban is not installed: failed logins are limited only by Postfix's AUTH rate limit ([limits] client_auth_rate_limit, every AUTH counted) and Dovecot's auth_failure_delay; apt-get install fail2ban, then run this script again (docs/security.md)"
fi

[ -z "$destdir" ] || exit 0
if [ -d /etc/txrelay ]; then
    chgrp txrelay /etc/txrelay /etc/txrelay/txrelay.toml /etc/txrelay/kek /etc/txrelay/bounce.key \
        /etc/txrelay/bounce-dkim.pem 2>/dev/null || true
fi
if [ "$(ps -p 1 -o comm= 2>/dev/null)" != systemd ]; then
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create /etc/tmpfiles.d/txrelay.conf
        log "created the directories of /etc/tmpfiles.d/txrelay.conf"
    fi
    log "systemd is not running here (PID 1 is $(ps -p 1 -o comm= 2>/dev/null || echo unknown)):"
    log "the units are installed but NOT started. Start them as the units would:"
    for unit in "${units[@]}"; do
        file=/etc/systemd/system/$unit
        command=$(sed -n 's/^ExecStart=//p' "$file")
        environment=$(sed -n 's/^Environment=//p' "$file" | tr '\n' ' ')
        user=$(sed -n 's/^User=//p' "$file")
        log "  ${user:+runuser -u $user -- }${environment:+env $environment}$command &"
    done
    log "or, once systemd runs: systemctl enable --now ${units[*]}"
    exit 0
fi
systemd-tmpfiles --create /etc/tmpfiles.d/txrelay.conf
systemctl daemon-reload
if [ "$start" = 1 ]; then
    systemctl enable --now "${units[@]}"
    log "started; check with: systemctl status ${units[*]}"
else
    log "enable and start with: systemctl enable --now ${units[*]}"
fi
