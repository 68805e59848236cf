#!/bin/bash
# The container's HEALTHCHECK: Postfix's master runs, and the milter's /healthz says this
# node can accept mail (200, also while degraded; 503 with the reason when mail would be
# refused). Exit 0 = healthy.
set -euo pipefail

postfix status >/dev/null 2>&1 || { echo "Postfix is not running"; exit 1; }
listen=${TXRELAY_METRICS_MILTER_LISTEN-0.0.0.0:9151}
[ -n "$listen" ] || exit 0  # metrics turned off: Postfix is all we can see
host=${listen%:*}
case "$host" in 0.0.0.0|"") host=127.0.0.1 ;; "[::]") host="[::1]" ;; esac
exec /opt/txrelay/venv/bin/python - "http://$host:${listen##*:}/healthz" <<'PY'
import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=8) as reply:
        sys.exit(0)
except urllib.error.HTTPError as exc:
    print(exc.read().decode(errors="replace").strip())
except OSError as exc:
    print(f"milter health endpoint {sys.argv[1]} did not answer: {exc}")
sys.exit(1)
PY
