"""OpenDKIM (Debian's package) signing with its own RSA-2048 key: the C reference milter."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.procs import ManagedProcess, port_open, unix_socket_open, wait_until

SELECTOR = "odkim"


def make_key(directory: Path) -> tuple[Path, str]:
    """An RSA-2048 private key file (0600) and its p= value."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / "opendkim.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    shutil.chown(path, "opendkim", "opendkim")
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, base64.b64encode(public).decode()


class OpenDkim:
    """One opendkim process on a unix socket or an inet port, signing `domain`."""

    def __init__(self, directory: Path, name: str, *, domain: str, key_file: Path,
                 socket: str) -> None:
        self.directory = directory
        self.socket = socket
        conf = directory / f"{name}.conf"
        conf.write_text("\n".join([
            "Syslog no",
            "Mode s",
            f"Domain {domain}",
            f"Selector {SELECTOR}",
            f"KeyFile {key_file}",
            f"Socket {socket}",
            "UserID opendkim:postfix",
            "UMask 007",
            "Canonicalization relaxed/simple",
            "SignatureAlgorithm rsa-sha256",
            "InternalHosts 127.0.0.1",
            # The key lies under /tmp (world-writable with the sticky bit): accept that.
            "RequireSafeKeys false",
            f"PidFile {directory / (name + '.pid')}",
            "",
        ]))
        self.daemon = ManagedProcess(["opendkim", "-f", "-x", str(conf)], directory / f"{name}.log")

    def start(self) -> None:
        self.daemon.start()
        wait_until(self.ready, 15, f"opendkim on {self.socket}", self.daemon.log)

    def ready(self) -> bool:
        kind, _, where = self.socket.partition(":")
        if kind == "inet":
            return port_open(int(where.split("@")[0]))
        return unix_socket_open(Path(where))

    @property
    def postfix_socket(self) -> str:
        kind, _, where = self.socket.partition(":")
        if kind == "inet":
            port, _, host = where.partition("@")
            return f"inet:{host}:{port}"
        return f"unix:{where}"

    def stop(self) -> None:
        self.daemon.stop()
