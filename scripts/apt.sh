#!/usr/bin/env bash
# apt_install_missing TAG PACKAGE...: installs the Debian packages that are not installed yet
# (sourced by install.sh and install-test-deps.sh). TAG prefixes the log line.

apt_install_missing() {
    local tag=$1 p
    shift
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    printf '[%s] installing Debian packages: %s\n' "$tag" "${missing[*]}"
    # Postfix must not write a main.cf of its own: txrelay's commands configure it.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
