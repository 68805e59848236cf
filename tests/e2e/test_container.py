"""The container image, built and run for real: mail submitted to the container's Postfix
over STARTTLS + AUTH reaches the capture sink DKIM-signed and recorded in the ledger.

The image is built once per session (scripts/build-image.sh: buildah on a debootstrap base,
no Docker engine) and run through podman's Docker-compatible API with the Python `docker`
SDK, the way an operator's tooling would drive Docker. Host networking only: the container
reaches the machine's PostgreSQL and Redis over 127.0.0.1, and its Postfix listens on free
loopback ports so it collides with nothing. As compose runs it, the container gets only a
PostgreSQL admin's URL: its start makes the database and its two roles (named for this
test), and nothing in it runs as the superuser.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
from docker.models.containers import Container

from tests.conftest import ADMIN_DSN
from tests.harness.metrics import http_get
from tests.harness.processes import HarnessError, ManagedProcess, free_port, port_open, wait_until
from tests.harness.provision import account_usage, verify_dkim
from tests.harness.services import CaptureSink
from tests.harness.smtp import build_message, submit
from txrelay.config import Config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("TXRELAY_TEST_IMAGE", "localhost/txrelay:test")
# What podman needs on these machines whatever the client asks (docs/deployment.md):
# runc (crun refuses the cgroup layout), limits root cannot raise, an init for prompt stops.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=8192:8192", "nproc=8192:8192"]
init = true
[engine]
runtime = "runc"
"""


@pytest.fixture(scope="session")
def container_image() -> str:
    """The image, built from this checkout (layers cached between runs). What earlier builds
    left behind (the image IMAGE named before, build-stage leftovers) is removed afterwards,
    down to the layers this build reused; the debootstrap base is tagged and stays."""
    started = time.monotonic()
    # build-image.sh tags the build stage IMAGE-build: its cache, kept while it is current.
    previous = {found for name in (IMAGE, f"{IMAGE}-build") if (found := _image_id(name))}
    leftovers = _dangling_images() | previous
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), IMAGE],
                          capture_output=True, text=True, timeout=1500, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed ({done.returncode})\n"
                    f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}", pytrace=False)
    print(f"image {IMAGE} built in {time.monotonic() - started:.0f}s")
    removed = [image for leftover in sorted(leftovers)
               for image in prune_untagged_chain(leftover)]
    print(f"removed {len(removed)} image(s) left by earlier builds")
    return IMAGE


def _image_id(name: str) -> str | None:
    done = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", name],
                          capture_output=True, text=True, check=False)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _dangling_images() -> set[str]:
    """Untagged images nothing builds on, as they were before this build started."""
    done = subprocess.run(["podman", "images", "--all", "--quiet", "--no-trunc", "--filter",
                           "dangling=true"], capture_output=True, text=True, check=False)
    return {line.removeprefix("sha256:") for line in done.stdout.split()}


def prune_untagged_chain(image_id: str) -> list[str]:
    """Remove an untagged image, then its parents while they are untagged and nothing else
    builds on them. Stops at a tagged image (the debootstrap base, the new build) or one with
    children (layers the new build reused) or in use (`podman rmi` refuses both). Only images
    that were leftovers before the build are given: unlike `podman image prune`, an image of
    a build running meanwhile is never touched."""
    removed: list[str] = []
    current: str | None = image_id
    while current:
        done = subprocess.run(["podman", "image", "inspect", "--format",
                               "{{len .RepoTags}} {{.Parent}}", current],
                              capture_output=True, text=True, check=False)
        tags, _, parent = done.stdout.strip().partition(" ")
        if done.returncode != 0 or tags != "0":
            break
        if subprocess.run(["podman", "rmi", current], capture_output=True,
                          check=False).returncode != 0:
            break  # a child image uses it
        removed.append(current)
        current = parent or None
    return removed


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """podman's Docker API on a socket of the test's own."""
    directory = Path(tempfile.mkdtemp(prefix="txrelay-podman-"))
    conf = directory / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    sock = directory / "podman.sock"
    service = ManagedProcess(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                             directory / "service.log",
                             env={**os.environ, "CONTAINERS_CONF": str(conf)})
    service.start()
    try:
        wait_until(sock.exists, 30, "podman API socket", service.log)
        client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=120)
        wait_until(lambda: bool(client.ping()), 30, "podman API", service.log)
        yield client
        client.close()
    finally:
        service.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def container_database_name() -> Iterator[str]:
    """The role and database the container's start makes (RELAY_DATABASE_NAME), and its
    NAME_milter role: dropped afterwards."""
    name = f"txrelay_ctr_{os.getpid()}_{secrets.token_hex(3)}"
    yield name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for role in (f"{name}_milter", name):
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture(scope="module")
def container_database(container_database_name: str) -> str:
    """The database the container made, as the tests' superuser reads it (for assertions)."""
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + container_database_name


class RelayContainer:
    """The running container and the loopback ports it was given."""

    def __init__(self, container: Container, database_url: str, submission_port: int,
                 metrics_port: int, tracker_metrics_port: int) -> None:
        self.container = container
        self.database_url = database_url
        self.submission_port = submission_port
        self.metrics_port = metrics_port
        self.tracker_metrics_port = tracker_metrics_port

    def txrelay(self, *args: str) -> Any:
        """`txrelay --json ARGS` inside the container: the operator's CLI there."""
        code, output = self.container.exec_run(["txrelay", "--json", *args], demux=True)
        stdout, stderr = output
        if code != 0:
            raise HarnessError(f"txrelay {' '.join(args)} exited {code}: {stderr!r}")
        return json.loads(stdout)

    def run(self, *argv: str) -> tuple[int, str]:
        code, output = self.container.exec_run(list(argv))
        return code, output.decode(errors="replace")

    def logs(self) -> str:
        return self.container.logs(tail=80).decode(errors="replace")


@pytest.fixture(scope="module")
def relay_container(container_image: str, docker_client: docker.DockerClient,
                    container_database_name: str, container_database: str, config: Config,
                    capture_sink: CaptureSink) -> Iterator[RelayContainer]:
    ports = [free_port() for _ in range(3)]
    environment = {
        "RELAY_DATABASE_ADMIN_URL": ADMIN_DSN,
        "RELAY_DATABASE_NAME": container_database_name,
        "TXRELAY_REDIS_URL": config.redis.url,
        "TXRELAY_REDIS_KEY_PREFIX": f"ctr{secrets.token_hex(3)}",
        "TXRELAY_MILTER_NODE_NAME": f"container-{secrets.token_hex(3)}",
        "TXRELAY_METRICS_MILTER_LISTEN": f"127.0.0.1:{ports[1]}",
        "TXRELAY_METRICS_TRACKER_LISTEN": f"127.0.0.1:{ports[2]}",
        # No DNS server publishes the test domain's DKIM record: let it send unpublished.
        "TXRELAY_DKIM_REQUIRE_PUBLISHED": "false",
        "RELAY_HOSTNAME": "relay.container.test",
        "RELAY_SUBMISSION_LISTEN": f"127.0.0.1:{ports[0]}",
        "RELAY_RELAYHOST": f"[127.0.0.1]:{capture_sink.port}",
        "POSTCONF_inet_interfaces": "127.0.0.1",
        "POSTCONF_inet_protocols": "ipv4",
    }
    container = docker_client.containers.run(
        container_image, detach=True, name=f"txrelay-test-{secrets.token_hex(4)}",
        environment=environment, network_mode="host", runtime="runc", init=True,
        ulimits=[docker.types.Ulimit(name="nofile", soft=8192, hard=8192),
                 docker.types.Ulimit(name="nproc", soft=8192, hard=8192)])
    relay = RelayContainer(container, container_database, *ports)
    try:
        wait_until(lambda: _ready(relay), 120, "the container's submission port",
                   relay.logs)
        yield relay
    finally:
        container.stop(timeout=20)
        container.remove(v=True, force=True)


def _ready(relay: RelayContainer) -> bool:
    relay.container.reload()
    if relay.container.status == "exited":
        raise HarnessError(f"the container exited\n{relay.logs()}")
    return port_open(relay.submission_port)


def _ledger_states(database_url: str, account_id: int) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [row[0] for row in conn.execute(
            "SELECT state FROM ledger WHERE account_id = %s", (account_id,))]


def test_mail_submitted_to_the_container_reaches_the_sink_signed_and_accounted(
        relay_container: RelayContainer, capture_sink: CaptureSink) -> None:
    account = relay_container.txrelay("account", "create", "ctr-shop", "--admin-email",
                                      "admin@ctr-shop.example.com")
    relay_container.txrelay("domain", "add", "ctr-shop", "mail.ctr-shop.example.com",
                            "--list-help", "https://help.ctr-shop.example.com/")
    connection = relay_container.txrelay("connection", "create", "ctr-shop", "web",
                                         "--domain", "mail.ctr-shop.example.com")
    assert (connection["host"], connection["port"]) == ("relay.container.test",
                                                        relay_container.submission_port)
    rcpt = f"buyer-{secrets.token_hex(4)}@customer.example.net"
    sender = "orders@mail.ctr-shop.example.com"
    result = submit(connection["username"], connection["password"], sender, [rcpt],
                    build_message(sender, [rcpt]), port=relay_container.submission_port)
    assert result.accepted, f"{result.first_refusal()}\n{relay_container.logs()}"

    capture = capture_sink.wait_for_recipient(rcpt, timeout=30)
    assert verify_dkim(capture.raw, relay_container.database_url)
    assert b"List-Help: <https://help.ctr-shop.example.com/>" in capture.raw
    usage = account_usage(relay_container.database_url, int(account["id"]))
    assert (usage.messages, usage.ledger_rows, usage.used) == (1, 1, 1)
    # The container's tracker reads its Postfix's log: the recipient ends up delivered.
    wait_until(lambda: _ledger_states(relay_container.database_url,
                                      int(account["id"])) == ["delivered"],
               30, "ledger state 'delivered'", relay_container.logs)


def test_container_reports_healthy_and_serves_metrics(relay_container: RelayContainer) -> None:
    code, output = relay_container.run("txrelay-healthcheck")
    assert code == 0, output
    status, body = http_get(f"http://127.0.0.1:{relay_container.metrics_port}/healthz")
    assert (status, body.splitlines()[0]) == (200, "ok")
    _, metrics = http_get(f"http://127.0.0.1:{relay_container.metrics_port}/metrics")
    assert 'txrelay_dependency_up{dependency="postgresql"} 1.0' in metrics
    _, tracker = http_get(f"http://127.0.0.1:{relay_container.tracker_metrics_port}/metrics")
    assert "txrelay_tracker_unread_bytes" in tracker


def test_container_runs_the_milter_and_tracker_as_txrelay(
        relay_container: RelayContainer) -> None:
    code, output = relay_container.run(
        "python3", "-c",
        "import os, pwd\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    if b'milter' in cmd or b'tracker' in cmd:\n"
        "        print(cmd[-2].decode(), pwd.getpwuid(os.stat(f'/proc/{pid}').st_uid).pw_name)")
    assert code == 0, output
    assert sorted(output.split("\n")) == ["", "milter txrelay", "tracker txrelay"], output


def test_nothing_in_the_container_runs_as_the_database_superuser(
        relay_container: RelayContainer, container_database_name: str) -> None:
    """The start made the roles with the admin URL; the daemons connect as NAME_milter, the
    CLI as NAME, neither a superuser, and no process but init's step ever saw the admin URL."""
    relay_container.txrelay("account", "list")  # a CLI connection, as the operator's
    with psycopg.connect(relay_container.database_url, autocommit=True) as conn:
        roles = dict(conn.execute(
            "SELECT rolname, rolsuper FROM pg_roles WHERE rolname IN (%s, %s)",
            (container_database_name, f"{container_database_name}_milter")).fetchall())
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                             "WHERE datname = current_database()").fetchone()
        users = {row[0] for row in conn.execute(
            "SELECT usename FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")}
    assert roles == {container_database_name: False, f"{container_database_name}_milter": False}
    assert owner == (container_database_name,)
    assert users == {f"{container_database_name}_milter"}, users  # milter and tracker
    # Read from the host (the container's shell may not read the daemons' environ): every
    # process of this container carries RELAY_DATABASE_NAME; the daemons must lack the
    # admin URL, which only tini and the entrypoint were started with.
    seen = {}
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RELAY_DATABASE_NAME={container_database_name}".encode() in environ:
            admin = any(v.startswith(b"RELAY_DATABASE_ADMIN_URL=") for v in environ)
            seen[b" ".join(command).decode(errors="replace").strip()] = admin
    daemons = {cmd.rsplit(" ", 1)[1]: admin for cmd, admin in seen.items()
               if cmd.endswith((" milter", " tracker"))}  # Dovecot clears its environment
    assert daemons == {"milter": False, "tracker": False}, seen
    code, output = relay_container.run("cat", "/etc/txrelay/txrelay.toml")
    assert code == 0, output
    assert f"postgresql://{container_database_name}:" in output
    assert f"postgresql://{container_database_name}_milter:" in output
    assert "event=database_superuser" not in relay_container.container.logs().decode()


def test_postfix_log_is_rotated_and_the_tracker_follows(
        relay_container: RelayContainer, capture_sink: CaptureSink) -> None:
    """Run after the first mail (module order): rotate now, then mail again; the tracker must
    read the new file (made root:txrelay 0640, not postlogd's 0600) and old logs are pruned."""
    code, output = relay_container.run("txrelay-rotate-maillog", "--now")
    assert code == 0, output
    code, listing = relay_container.run("sh", "-c", "cd /var/log/txrelay && stat -c '%n %U:%G "
                                        "%a' postfix.log postfix.log.*")
    assert code == 0, listing
    files = dict(line.split(" ", 1) for line in listing.strip().splitlines())
    assert files.pop("postfix.log") == "root:txrelay 640"
    assert [name for name in files if re.fullmatch(r"postfix\.log\.\d{8}-\d{6}\.gz", name)] \
        == list(files), files

    account = relay_container.txrelay("account", "show", "ctr-shop")
    connection = relay_container.txrelay("connection", "rotate-password", "web", "--account",
                                         "ctr-shop")
    rcpt = f"after-rotation-{secrets.token_hex(4)}@customer.example.net"
    sender = "orders@mail.ctr-shop.example.com"
    result = submit(connection["username"], connection["password"], sender, [rcpt],
                    build_message(sender, [rcpt]), port=relay_container.submission_port)
    assert result.accepted, f"{result.first_refusal()}\n{relay_container.logs()}"
    capture_sink.wait_for_recipient(rcpt, timeout=30)
    wait_until(lambda: _ledger_states(relay_container.database_url,
                                      int(account["id"])) == ["delivered"] * 2,
               30, "both recipients 'delivered' across the rotation", relay_container.logs)

    code, output = relay_container.run(
        "sh", "-c", "touch -d '10 days ago' /var/log/txrelay/postfix.log.20200101-000000.gz "
        "&& txrelay-rotate-maillog --once")
    assert code == 0, output
    assert "deleted /var/log/txrelay/postfix.log.20200101-000000.gz" in output
    _, listing = relay_container.run("ls", "/var/log/txrelay")
    assert "postfix.log.20200101-000000.gz" not in listing
    assert len(re.findall(r"postfix\.log\.\d{8}-\d{6}\.gz", listing)) == 1, listing


def test_image_declares_volumes_and_healthcheck(container_image: str) -> None:
    done = subprocess.run(["podman", "image", "inspect", container_image], capture_output=True,
                          text=True, check=True)
    image = json.loads(done.stdout)[0]
    assert set(image["Config"]["Volumes"]) == {"/var/spool/postfix", "/var/lib/txrelay",
                                               "/etc/txrelay/tls"}
    assert image["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/txrelay-healthcheck"]
