#!/usr/bin/env bash
# Builds the txrelay container image without a Docker engine: buildah (chroot isolation) on
# a Debian bookworm base image made locally with debootstrap, named like the Dockerfile's FROM
# so no registry is needed. The base rootfs tarball and image are kept between runs.
#
#   scripts/build-image.sh [IMAGE]        (default IMAGE: localhost/txrelay:latest)
#
# Environment: TXRELAY_BASE_CACHE (where the debootstrap tarball is kept, default
# /var/cache/txrelay-image), TXRELAY_REBUILD_BASE=1 to make the base again.
# With a Docker engine, `docker build -t txrelay .` does the same from Docker Hub's image.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
image=${1:-localhost/txrelay:latest}
base=$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' "$here/Dockerfile" | head -n 1)
cache=${TXRELAY_BASE_CACHE:-/var/cache/txrelay-image}
tarball=$cache/debian-bookworm-minbase.tar

log() { printf '[build-image] %s\n' "$*"; }

# What only the image build needs (never on a production node: scripts/install.sh).
[ "$(id -u)" -eq 0 ] || { echo "build-image.sh must run as root (buildah, debootstrap)" >&2; exit 1; }
# shellcheck source=scripts/apt.sh
. "$here/scripts/apt.sh"
apt_install_missing build-image buildah debootstrap
[ -n "$base" ] || { echo "no FROM line in $here/Dockerfile" >&2; exit 1; }
case "$base" in docker.io/*) ;; *) base=docker.io/library/${base#library/} ;; esac

debian_mirror() {
    # The URIs: of the machine's own Debian source (deb822 first, then sources.list).
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
        /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n 1)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null)
    echo "${uri:-http://deb.debian.org/debian}"
}

make_base_tarball() {
    local root
    root=$(mktemp -d /var/tmp/txrelay-debootstrap.XXXXXX)
    log "debootstrap bookworm (minbase) from $(debian_mirror) into $root"
    debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >"$root.log" 2>&1 || {
        tail -n 20 "$root.log" >&2; rm -rf "$root" "$root.log"; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    mkdir -p "$cache"
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root" "$root.log"
}

import_base() {
    local container
    [ -s "$tarball" ] || make_base_tarball
    log "importing $tarball as $base"
    container=$(buildah from scratch)
    buildah add --quiet "$container" "$tarball" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/bash "$container"
    buildah commit --quiet "$container" "$base" >/dev/null
    buildah rm "$container" >/dev/null
}

start=$SECONDS
if [ "${TXRELAY_REBUILD_BASE:-0}" = 1 ]; then
    rm -f "$tarball"
    buildah rmi -f "$base" >/dev/null 2>&1 || true
fi
buildah images --quiet "$base" >/dev/null 2>&1 || import_base
log "base $base ready after $((SECONDS - start))s; building $image"
# --layers: unchanged steps (packages, Python dependencies) come from the cache next time.
# --format docker: keeps HEALTHCHECK, which the OCI image format has no field for.
# The host's CA bundle, for pip behind a TLS-inspecting proxy (only when it has local CAs).
ca_args=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null \
        && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    ca_args=(--volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca-bundle.crt:ro
             --build-arg HOST_CA_BUNDLE=/run/host-ca-bundle.crt)
fi
buildah bud --isolation chroot --layers --format docker --pull=false "${ca_args[@]}" \
    -t "$image" -f "$here/Dockerfile" "$here"
# The build stage's last layer is the next build's cache. Tagged (a cache hit, ~1 s), it
# does not look like a leftover to whoever removes untagged images after a build.
buildah bud --isolation chroot --layers --format docker --pull=false "${ca_args[@]}" \
    --target build -t "$image-build" -f "$here/Dockerfile" "$here" >/dev/null
log "built $image in $((SECONDS - start))s"
