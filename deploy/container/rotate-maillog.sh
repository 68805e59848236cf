#!/bin/bash
# Rotates the container's Postfix log (maillog_file), which nothing else rotates inside a
# container: when it is larger than RELAY_LOG_ROTATE_MB, or older than
# RELAY_LOG_ROTATE_HOURS, it is renamed, postlogd is told to reopen, and the renamed file
# is compressed, as `postfix logrotate` does. One step differs: the new file is made before
# postlogd reopens, with the old file's owner and mode. postlogd would create it 0600 root,
# which the tracker (user txrelay) could not read. Rotated logs older than
# RELAY_LOG_KEEP_DAYS are deleted.
#
# The tracker follows the rotation: it drains the renamed file it holds open, then reads the
# new one (docs/tracking-and-billing.md).
#
#   txrelay-rotate-maillog            check every RELAY_LOG_CHECK_SECONDS, forever
#   txrelay-rotate-maillog --once     check once (rotate if due, prune), then exit
#   txrelay-rotate-maillog --now      rotate now whatever the size, prune, then exit
#
# Environment (defaults): RELAY_LOG_ROTATE_MB (100), RELAY_LOG_ROTATE_HOURS (24; 0 = size
# only), RELAY_LOG_KEEP_DAYS (7), RELAY_LOG_CHECK_SECONDS (60); MAIL_CONFIG selects the
# Postfix configuration directory, as for postfix(1) itself.
set -euo pipefail

log() { printf '%s txrelay-rotate-maillog: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

rotate_mb=${RELAY_LOG_ROTATE_MB:-100}
rotate_hours=${RELAY_LOG_ROTATE_HOURS:-24}
keep_days=${RELAY_LOG_KEEP_DAYS:-7}
check_seconds=${RELAY_LOG_CHECK_SECONDS:-60}
for setting in rotate_mb rotate_hours keep_days check_seconds; do
    [[ "${!setting}" =~ ^[0-9]+$ ]] || {
        log "error: ${setting} must be a whole number, not '${!setting}'"; exit 1; }
done
[ "$check_seconds" -gt 0 ] || { log "error: RELAY_LOG_CHECK_SECONDS must be at least 1"; exit 1; }

maillog=$(postconf -h maillog_file)
case "$maillog" in
    /dev/*|"") log "error: maillog_file is '$maillog': nothing to rotate"; exit 1 ;;
esac
# When the live file was last started: the oldest line's time is not at hand, so this is
# the last rotation by this process (or its start).
started_at=$(date +%s)

due() {
    local size
    [ -s "$maillog" ] || return 1
    size=$(stat -c %s "$maillog")
    [ "$size" -gt $((rotate_mb * 1024 * 1024)) ] && return 0
    [ "$rotate_hours" -gt 0 ] && [ $(($(date +%s) - started_at)) -ge $((rotate_hours * 3600)) ]
}

# Each step checks its own result: called from `check || …`, bash ignores set -e in here.
rotate() {
    local rotated
    [ -f "$maillog" ] || { log "no $maillog to rotate"; return 1; }
    rotated="$maillog.$(date +"$(postconf -h maillog_file_rotate_suffix)")" || return 1
    if [ -e "$rotated" ] || [ -e "$rotated.gz" ]; then return 0; fi  # this second already
    mv "$maillog" "$rotated" || return 1
    install -m "$(stat -c %a "$rotated")" -o "$(stat -c %u "$rotated")" \
        -g "$(stat -c %g "$rotated")" /dev/null "$maillog" || return 1
    postfix reload >/dev/null 2>&1 || log "postfix reload failed: postlogd keeps the old file"
    sleep 1  # postlogd's last writes to the renamed file
    "$(postconf -h maillog_file_compressor)" "$rotated" || return 1
    started_at=$(date +%s)
    log "rotated $maillog to $rotated"
}

prune() {
    find "$(dirname "$maillog")" -maxdepth 1 -type f -name "$(basename "$maillog").*" \
        -mmin +$((keep_days * 1440)) -print -delete | while read -r gone; do
        log "deleted $gone (older than $keep_days days)"
    done
}

check() {
    if due; then rotate; fi
    prune
}

case "${1:-}" in
    --once) check ;;
    --now) rotate; prune ;;
    "")
        # A failed round (full disk, Postfix restarting) is logged and tried again: this
        # loop is supervised by the entrypoint, and its exit would stop the container.
        while true; do
            check || log "rotation round failed; trying again in $check_seconds s"
            sleep "$check_seconds"
        done ;;
    *) log "usage: txrelay-rotate-maillog [--once|--now]"; exit 2 ;;
esac
