"""The server's ports: free before it starts, and the address clients use to reach it."""

from __future__ import annotations

import errno
import socket

from llm_deploy.server.errors import PortInUseError, ServerStartError


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Bind each port once, as the server will; PortInUseError names the one that is taken."""
    for name, port in ports.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR as servers use it: TIME_WAIT leftovers do not count as "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise PortInUseError(
                        f"{name} port {port} on {host} is already in use ({exc.strerror}); stop whatever "
                        f"listens there (e.g. a server from an earlier run) or choose another {name}_port"
                    ) from None
                raise ServerStartError(f"cannot bind {name} port {port} on {host}: {exc}") from None


def client_host(host: str) -> str:
    """The host part of a URL for a server bound to ``host`` (one bound everywhere: loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
