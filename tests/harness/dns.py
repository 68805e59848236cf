"""A real authoritative DNS server (NSD) on loopback, serving zones a test writes and changes.

    def test_x(dns_server: DnsServer) -> None:
        dns_server.serve({"shop.example": [("TXT", "v=spf1 ip4:192.0.2.10 -all")]})
        ...  # point txrelay at it: [dns] resolver = dns_server.address
        dns_server.serve({})                      # every record gone again

NSD answers only for the zones it was started with (any other name gets REFUSED, which a
resolver reports as a failure); each `serve` rewrites the zone files with a higher serial,
reloads NSD and returns once NSD answers with that serial. The fixture stops NSD whatever
the test did. NSD comes from Debian's package, installed by scripts/test.sh.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.harness.processes import HarnessError, ManagedProcess, free_port, wait_until

NSD = "/usr/sbin/nsd"
DEFAULT_ZONES = ("example",)
TXT_STRING_LIMIT = 255
# (type, value): TXT values are given unquoted (the harness quotes and splits them), every
# other type as the zone file's RDATA, e.g. ("MX", "10 mx.shop.example.").
Record = tuple[str, str]


class DnsServer:
    """NSD on 127.0.0.1:<free port>, authoritative for `zones`, records replaced by serve()."""

    def __init__(self, directory: Path, zones: Sequence[str] = DEFAULT_ZONES) -> None:
        if not Path(NSD).exists():
            raise HarnessError(f"{NSD} is missing; scripts/test.sh installs Debian's nsd")
        self.directory = directory
        self.zones = [zone.strip(".").lower() for zone in zones]
        self.port = 0
        self.serial = 0
        self.process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        """The value for txrelay's [dns] resolver setting."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_zones({})
        for _attempt in range(5):
            self.port = _free_udp_and_tcp_port()
            (self.directory / "nsd.conf").write_text(self._config())
            self.process = ManagedProcess([NSD, "-d", "-c", str(self.directory / "nsd.conf")],
                                          self.directory / "nsd.out")
            self.process.start()
            try:
                self._wait_for_serial()
                return
            except HarnessError:
                if self.process.running:
                    raise
                self.process.stop()  # lost the port to someone else: try another
        raise HarnessError(f"NSD did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def serve(self, records: Mapping[str, Iterable[Record]]) -> None:
        """Replace every record (besides SOA and NS) by `records`: name → [(type, value)]."""
        if self.process is None or not self.process.running:
            raise HarnessError(f"NSD is not running:\n{self.log()}")
        self._write_zones(records)
        os.kill(self.process.pid, signal.SIGHUP)  # NSD rereads changed zone files
        self._wait_for_serial()

    def log(self) -> str:
        parts = [(self.directory / name) for name in ("nsd.out", "nsd.log")]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    # -- internals ------------------------------------------------------------------------

    def _config(self) -> str:
        d = self.directory
        zones = "".join(f'zone:\n    name: "{zone}"\n    zonefile: "{zone}.zone"\n'
                        for zone in self.zones)
        return (
            "server:\n"
            f"    ip-address: 127.0.0.1@{self.port}\n    port: {self.port}\n"
            '    username: ""\n    chroot: ""\n    database: ""\n'
            f'    zonesdir: "{d}"\n    pidfile: "{d}/nsd.pid"\n'
            f'    zonelistfile: "{d}/zone.list"\n    xfrdfile: "{d}/xfrd.state"\n'
            f'    xfrdir: "{d}"\n    logfile: "{d}/nsd.log"\n'
            "    server-count: 1\n    do-ip6: no\n    verbosity: 1\n    hide-version: yes\n"
            # No control port: Debian's NSD would bind 127.0.0.1:8952, which a second NSD
            # (another test run on the machine) then cannot have, and it exits.
            "remote-control:\n    control-enable: no\n"
            f"{zones}")

    def _write_zones(self, records: Mapping[str, Iterable[Record]]) -> None:
        self.serial += 1
        lines: dict[str, list[str]] = {zone: [] for zone in self.zones}
        for name, values in records.items():
            zone = self._zone_of(name)
            for rtype, value in values:
                lines[zone].append(f"{name.strip('.').lower()}. 0 IN {rtype.upper()} "
                                   f"{_rdata(rtype, value)}")
        for zone, zone_lines in lines.items():
            path = self.directory / f"{zone}.zone"
            head = (f"$ORIGIN {zone}.\n$TTL 0\n"
                    f"@ IN SOA ns.{zone}. hostmaster.{zone}. {self.serial} 3600 600 86400 0\n"
                    f"@ IN NS ns.{zone}.\n")
            path.write_text(head + "".join(line + "\n" for line in zone_lines))
            # NSD reloads a zone file whose mtime changed: make it change even within one tick.
            mtime = path.stat().st_mtime + self.serial
            os.utime(path, (mtime, mtime))

    def _zone_of(self, name: str) -> str:
        name = name.strip(".").lower()
        for zone in sorted(self.zones, key=len, reverse=True):
            if name == zone or name.endswith("." + zone):
                return zone
        raise HarnessError(f"{name} is in none of the served zones {self.zones}")

    def _wait_for_serial(self) -> None:
        def current() -> bool:
            return all(self._serial_of(zone) == self.serial for zone in self.zones)

        wait_until(current, 10, f"NSD serving serial {self.serial}", self.log)

    def _serial_of(self, zone: str) -> int | None:
        query = dns.message.make_query(zone + ".", dns.rdatatype.SOA)
        try:
            answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
        except (dns.exception.DNSException, OSError):
            return None
        for rrset in answer.answer:
            for rdata in rrset:
                return int(rdata.serial)  # type: ignore[attr-defined]
        return None


def _rdata(rtype: str, value: str) -> str:
    if rtype.upper() != "TXT":
        return value
    parts = [value[i:i + TXT_STRING_LIMIT] for i in range(0, len(value), TXT_STRING_LIMIT)]
    escaped = (part.replace("\\", "\\\\").replace('"', '\\"') for part in parts)
    return " ".join(f'"{part}"' for part in escaped) or '""'


def _free_udp_and_tcp_port() -> int:
    for _attempt in range(20):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise HarnessError("no free port for NSD on 127.0.0.1")


@contextmanager
def running_dns_server(directory: Path,
                       zones: Sequence[str] = DEFAULT_ZONES) -> Iterator[DnsServer]:
    """Start NSD; always stop it, however the block ends."""
    server = DnsServer(directory, zones)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    """A fresh NSD for one test, authoritative for `example.` (tests use *.example names)."""
    directory = tmp_path / "nsd"
    with running_dns_server(directory) as server:
        yield server
    shutil.rmtree(directory, ignore_errors=True)
