#!/usr/bin/env bash
# Makes sure the machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are running,
# starting them when they are not. Sourced by test.sh and demo.sh; never stops anything.

ensure_postgresql() {
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
        version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        echo "[services] creating PostgreSQL $version cluster 'main'"
        pg_createcluster "$version" main >/dev/null
    fi
    echo "[services] starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
    pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL did not start" >&2; return 1; }
    # A cluster we just created asks for passwords on TCP; txrelay's local set-up connects as
    # postgres over loopback, so trust loopback only (never any other address).
    if ! psql -h 127.0.0.1 -U postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
        local hba=/etc/postgresql/$version/main/pg_hba.conf
        echo "[services] trusting loopback connections in $hba"
        sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
}

ensure_redis() {
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
    echo "[services] starting Redis on 127.0.0.1:6379"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/txrelay.log
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "Redis did not start" >&2; return 1
}
