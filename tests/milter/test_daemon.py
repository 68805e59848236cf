"""`txrelay milter` as a process: socket handling, the milter protocol on the wire, SIGTERM."""

from __future__ import annotations

import grp
import os
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import Milter
import pytest

from tests.harness.processes import TXRELAY as HARNESS_TXRELAY
from tests.milter.conftest import BODY, default_headers
from tests.store.builders import Tenant

TXRELAY = Path(HARNESS_TXRELAY)
SMFIP_NOCONNECT, SMFIP_NOHELO, SMFIP_NOHDRS, SMFIP_NOEOH = 0x01, 0x02, 0x20, 0x40
SMFIP_NODATA = 0x200
SMFIP_NR_HDR, SMFIP_NOUNKNOWN = 0x80, 0x100
SMFIP_NR_BODY = 0x80000


class MilterClient:
    """Just enough of the MTA side of the milter protocol (version 6) to send one message."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.protocol = 0

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + command + data)

    def read(self) -> tuple[bytes, bytes]:
        length = struct.unpack(">I", self._exactly(4))[0]
        packet = self._exactly(length)
        return packet[:1], packet[1:]

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            data += chunk
        return data

    def negotiate(self) -> tuple[int, int]:
        self.send(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
        command, data = self.read()
        assert command == b"O"
        _version, actions, self.protocol = struct.unpack(">III", data[:12])
        return actions, self.protocol

    def step(self, command: bytes, data: bytes, macros: dict[str, str] | None = None,
             no_reply_bit: int = 0) -> list[tuple[bytes, bytes]]:
        if macros:
            pairs = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in macros.items())
            self.send(b"D", command + pairs)
        self.send(command, data)
        if self.protocol & no_reply_bit:
            return []
        replies = [self.read()]
        while replies[-1][0] in (b"h", b"i", b"m", b"p"):  # modifications, then the verdict
            replies.append(self.read())
        return replies

    def close(self) -> None:
        self.send(b"Q")
        self.sock.close()


# Tests list `tenant` before `daemon`, so the daemon's first policy load already has it.
@pytest.fixture()
def daemon(config_file: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    path = tmp_path / "deep" / "run" / "milter.sock"
    process = subprocess.Popen([str(TXRELAY), "--config", str(config_file), "milter",
                                "--socket", f"unix:{path}"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while not path.exists():
        assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the milter socket never appeared"
        time.sleep(0.05)
    yield process, str(path)
    if process.poll() is None:
        process.kill()
        process.wait()


def test_daemon_negotiates_only_what_it_needs(daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    client = MilterClient(daemon[1])
    actions, protocol = client.negotiate()
    assert actions == Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGFROM  # CHGFROM: return path
    for skipped in (SMFIP_NOCONNECT, SMFIP_NOHELO, SMFIP_NODATA, SMFIP_NOEOH, SMFIP_NOUNKNOWN,
                    SMFIP_NR_HDR, SMFIP_NR_BODY):
        assert protocol & skipped, hex(skipped)
    assert not protocol & SMFIP_NOHDRS
    client.close()


def test_daemon_signs_and_accepts_over_the_wire(
        tenant: Tenant, daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    client = MilterClient(daemon[1])
    client.negotiate()
    macros = {"{auth_authen}": tenant.username, "i": "4QWIRE"}
    assert client.step(b"M", f"<orders@{tenant.domain}>\0".encode(), macros) == [(b"c", b"")]
    assert client.step(b"R", b"<alice@customer.example>\0") == [(b"c", b"")]
    for name, value in default_headers(tenant.domain):
        client.step(b"L", name.encode() + b"\0" + value + b"\0", no_reply_bit=SMFIP_NR_HDR)
    client.step(b"B", BODY, no_reply_bit=SMFIP_NR_BODY)
    replies = client.step(b"E", b"", {"i": "4QWIRE"})
    assert replies[-1] == (b"a", b"")
    inserted = [data for command, data in replies if command == b"i"]
    assert len(inserted) == 1 and inserted[0][:4] == struct.pack(">I", 1)
    assert inserted[0][4:].startswith(b"DKIM-Signature\0v=1; a=rsa-sha256")
    added = [data.split(b"\0")[0] for command, data in replies if command == b"h"]
    assert added == [b"Message-ID", b"List-Help"]
    client.close()


def test_daemon_refusal_carries_the_reply_text(
        tenant: Tenant, daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    client = MilterClient(daemon[1])
    client.negotiate()
    replies = client.step(b"M", b"<x@example.org>\0", {"{auth_authen}": tenant.username})
    assert replies == [(b"y", b'550 5.7.1 sender domain example.org is not enabled for '
                              b'connection "Web shop"\0')]
    client.close()


def test_sigterm_stops_the_daemon_cleanly(daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    process, _path = daemon
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    stderr = process.stderr.read().decode()  # type: ignore[union-attr]
    assert "event=milter_stop" in stderr and "Traceback" not in stderr


def test_stale_socket_is_replaced(config_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    process = subprocess.Popen([str(TXRELAY), "--config", str(config_file), "milter",
                                "--socket", f"unix:{path}"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client = MilterClient(str(path))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        client.negotiate()
        client.close()
    finally:
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_connection_created_while_running_is_served_within_seconds(
        daemon: tuple[subprocess.Popen[bytes], str], tenant_factory: object) -> None:
    tenant = tenant_factory()  # type: ignore[operator]
    client = MilterClient(daemon[1])
    client.negotiate()
    deadline = time.monotonic() + 5  # [milter] policy_refresh_seconds is 0.5 in the tests
    while True:
        replies = client.step(b"M", f"<orders@{tenant.domain}>\0".encode(),
                              {"{auth_authen}": tenant.username})
        if replies == [(b"c", b"")] or time.monotonic() > deadline:
            break
        client.send(b"A")  # abort this transaction, try the next
        time.sleep(0.2)
    assert replies == [(b"c", b"")]
    client.close()


def test_socket_is_usable_by_postfix_and_nobody_else(
        daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    _, path = daemon
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert grp.getgrgid(info.st_gid).gr_name == "postfix"
    directory = os.stat(os.path.dirname(path))
    assert directory.st_mode & stat.S_ISGID
    assert grp.getgrgid(directory.st_gid).gr_name == "postfix"
