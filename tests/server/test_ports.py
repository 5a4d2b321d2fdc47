"""The server's ports: a taken one is named before anything starts; clients' address for a bind address."""

from __future__ import annotations

import socket

import pytest

from llm_deploy.server.errors import PortInUseError
from llm_deploy.server.ports import check_ports_free, client_host


def test_port_in_use_is_named(free_ports):
    port = free_ports["grpc_port"]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(PortInUseError, match=f"grpc port {port} on 127.0.0.1 is already in use"):
            check_ports_free("127.0.0.1", {"http": free_ports["http_port"], "grpc": port})


@pytest.mark.parametrize(("bound", "reached"), [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]"),
                                                ("127.0.0.1", "127.0.0.1")])
def test_a_server_bound_everywhere_is_reached_on_loopback(bound, reached):
    assert client_host(bound) == reached
