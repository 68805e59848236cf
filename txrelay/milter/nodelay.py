"""TCP_NODELAY for an inet milter socket, which libmilter does not set and pymilter hides.

libmilter writes each reply and header change as a small separate write; over TCP, Nagle's
algorithm holds the second write back until the first is ACKed, and Postfix delays its ACK:
about 40 ms per message (docs/performance.md, NOTES.md). The listening socket is libmilter's
and never reaches Python, but it is an fd of this process: once, on the first message, set
TCP_NODELAY on every TCP socket the process has. On Linux a socket accepted later inherits
the option from its listening socket, so one pass covers every later connection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger("txrelay.milter")
_done = threading.Event()
_lock = threading.Lock()


def ensure_nodelay() -> None:
    """Set TCP_NODELAY on the process's TCP sockets, once (cheap after the first call)."""
    if _done.is_set():
        return
    with _lock:
        if _done.is_set():
            return
        _done.set()
        count = sum(_set_nodelay(fd) for fd in _fds())
        if count:
            log.info("event=tcp_nodelay sockets=%d", count)


def _fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return []


def _set_nodelay(fd: int) -> bool:
    try:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
            return False
    except OSError:
        return False
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True
    except OSError:
        return False
    finally:
        sock.detach()  # the fd stays libmilter's (or its owner's)
