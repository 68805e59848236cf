# txrelay in one container: Postfix (submission with STARTTLS + SASL), txrelay's auth-only
# Dovecot, the txrelay milter and the log tracker, configured at start from the environment
# (see deploy/container/entrypoint.sh and docs/deployment.md). PostgreSQL and Redis are
# outside: compose.yaml runs both next to it.
#
#   docker build -t txrelay .            (or scripts/build-image.sh with buildah, no engine)

# -- build: a virtualenv with txrelay and its dependencies (pymilter needs a compiler) ----
FROM debian:bookworm-slim AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends gcc libc6-dev python3-dev python3-venv \
        libmilter-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/txrelay/venv
# A CA bundle for pip where PyPI is reached through a TLS-inspecting proxy (build-image.sh
# passes the host's); unset, pip uses its own.
ARG HOST_CA_BUNDLE=
# Dependencies first, from pyproject.toml alone: this layer is reused until they change.
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /src/requirements.txt \
 && if [ -n "$HOST_CA_BUNDLE" ]; then export PIP_CERT="$HOST_CA_BUNDLE"; fi \
 && /opt/txrelay/venv/bin/pip install -q -r /src/requirements.txt
COPY README.md /src/README.md
COPY txrelay /src/txrelay
RUN if [ -n "$HOST_CA_BUNDLE" ]; then export PIP_CERT="$HOST_CA_BUNDLE"; fi \
 && /opt/txrelay/venv/bin/pip install -q --no-deps /src

# -- run ------------------------------------------------------------------------------------
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
# "No configuration": the entrypoint writes main.cf from the environment at every start.
RUN echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends postfix dovecot-core \
        libmilter1.0.1 python3 openssl ca-certificates tini postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && cp /etc/postfix/master.cf /etc/postfix/master.cf.dist
# The milter and the tracker run as txrelay; it is in group postfix so the milter can hand
# its socket to Postfix's smtpd ([milter] socket_group).
RUN useradd --system --home-dir /var/lib/txrelay --shell /usr/sbin/nologin txrelay \
 && usermod -a -G postfix txrelay \
 && install -d -o txrelay -g txrelay -m 0750 /var/lib/txrelay \
 && install -d -o root -g txrelay -m 0750 /var/log/txrelay /etc/txrelay \
 && install -d -o root -g root -m 0755 /etc/txrelay/tls
COPY --from=build /opt/txrelay/venv /opt/txrelay/venv
COPY deploy/container/entrypoint.sh /usr/local/bin/txrelay-entrypoint
COPY deploy/container/healthcheck.sh /usr/local/bin/txrelay-healthcheck
COPY deploy/container/rotate-maillog.sh /usr/local/bin/txrelay-rotate-maillog
RUN ln -s /opt/txrelay/venv/bin/txrelay /usr/local/bin/txrelay \
 && chmod 0755 /usr/local/bin/txrelay-entrypoint /usr/local/bin/txrelay-healthcheck \
        /usr/local/bin/txrelay-rotate-maillog

# Queue (mail accepted but not yet delivered), txrelay's state, TLS key and certificate.
VOLUME ["/var/spool/postfix", "/var/lib/txrelay", "/etc/txrelay/tls"]
# 587 submission; 9151/9152 Prometheus metrics and /healthz of the milter and tracker.
EXPOSE 587 9151 9152
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/txrelay-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "/usr/local/bin/txrelay-entrypoint"]
