"""The harness's free_port never hands out a port twice in one process: services are
configured with their ports before any of them listens (the bench's Postfix writes all its
listeners first), and the kernel offers a port it offered a moment ago again now and then
(about 10 times in 500 calls here), which once put two listeners on one port."""

from __future__ import annotations

import socket

from tests.harness.processes import free_port


def test_five_hundred_ports_taken_before_anything_listens_are_all_different() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_port_it_gives_is_free_to_listen_on() -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
