"""A second "host" for tests that need a server reachable beyond loopback: a network namespace
joined to this one by a veth pair, on a /30 of TEST-NET-1 (192.0.2.0/24, RFC 5737), which no
real network uses. Needs root (``ip netns``); removed again by ``close``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from tests.support.host_network import require_ip


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class PeerHost:
    namespace: str
    host_link: str
    host_address: str  # this namespace's end: what a server here binds
    peer_address: str  # the namespace's end: where the "other host" calls from

    def run(self, argv: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess:
        """Run ``argv`` on the other host (inside the namespace)."""
        return subprocess.run(["ip", "netns", "exec", self.namespace, *argv], capture_output=True, text=True,
                              timeout=timeout_s)

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)  # takes its peer along
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)


def create_peer_host() -> PeerHost:
    # One /30 per test process, so concurrent suites on this machine do not collide; all in
    # 192.0.2.0/25 (host_network.py uses the upper half).
    slot = os.getpid() % 32
    tag = f"{os.getpid() % 100000}"
    peer = PeerHost(namespace=f"llmd-peer-{tag}", host_link=f"llmdh{tag}",
                    host_address=f"192.0.2.{4 * slot + 1}", peer_address=f"192.0.2.{4 * slot + 2}")
    require_ip()
    peer.close()  # a leftover of a killed run with the same pid
    try:
        _ip("netns", "add", peer.namespace)
        _ip("link", "add", peer.host_link, "type", "veth", "peer", "name", f"llmdn{tag}")
        _ip("link", "set", f"llmdn{tag}", "netns", peer.namespace)
        _ip("addr", "add", f"{peer.host_address}/30", "dev", peer.host_link)
        _ip("link", "set", peer.host_link, "up")
        _ip("-n", peer.namespace, "addr", "add", f"{peer.peer_address}/30", "dev", f"llmdn{tag}")
        _ip("-n", peer.namespace, "link", "set", f"llmdn{tag}", "up")
        _ip("-n", peer.namespace, "link", "set", "lo", "up")
    except BaseException:
        peer.close()
        raise
    return peer
