"""A real HTTP receiver for webhook tests: a shop's endpoint on loopback, built on http.server.

It records every POST (headers and body) and answers as told: 200, another status, or not
at all (hangs until released); over TLS when given a server context. `stop()` closes the
port (the receiver is down), `start()` opens the same port again. `verify` checks a request
the way the docs tell shops to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.harness.processes import free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers["Txrelay-Event-Id"]


def verify(secret: str, request: Received) -> bool:
    """The signature check of docs/bounces-and-webhooks.md, written again here."""
    fields = dict(item.split("=", 1) for item in request.headers["Txrelay-Signature"].split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + request.body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


class WebhookReceiver:
    """POSTs to http://127.0.0.1:<port>/<anything>; answers `status`, or hangs when
    `hang` is set, or trickles an endless answer when `trickle` is (until `release()`)."""

    def __init__(self, status: int = 200, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.status = status
        self.hang = False
        self.trickle = False  # answer one byte every 0.2 s, never finishing
        self.received: list[Received] = []
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/txrelay-events"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(Received(dict(self.headers.items()), body))
                if receiver.hang:
                    receiver._released.wait(60)
                    return
                if receiver.trickle:
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 300:
                        if receiver._released.wait(0.2):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def release(self) -> None:
        self._released.set()

    def event_ids(self) -> list[str]:
        with self._lock:
            return [request.event_id for request in self.received]
