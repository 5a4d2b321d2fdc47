"""Several test "hosts" on one machine: network namespaces on a bridge of TEST-NET-1.

Each host is a network namespace with a loopback of its own (a server it starts on 127.0.0.1
is reachable from that host only), joined by a veth pair to a bridge in this namespace. The
bridge holds the control plane's address (``gateway``, 192.0.2.129) and the hosts get .130,
.131, ... of 192.0.2.128/25, a block of 192.0.2.0/24 (RFC 5737), which no real network uses.
Commands run on a host under its own host name (``unshare --uts``), so Airflow records that
host for the tasks they run. The filesystem and the process table stay shared, as on hosts that
mount one engines volume over NFS, so the test sees every host's processes and can tell which
host each runs on (its network namespace). Needs root; ``close`` removes everything it made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from tests.support.apt import apt_install

NETWORK = "192.0.2.128/25"
GATEWAY = "192.0.2.129"
PREFIX = 25


def require_ip() -> None:
    """Debian's iproute2 (``ip``), installed when missing."""
    if not shutil.which("ip"):
        apt_install("iproute2")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


@dataclass(frozen=True)
class TestHost:
    name: str  # its host name, as Airflow records it
    namespace: str
    address: str

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host: in its network namespace, under its host name."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]

    def runs(self, pid: int) -> bool:
        """Whether process ``pid`` runs on this host (in its network namespace)."""
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{self.namespace}").st_ino
        except OSError:
            return False


@dataclass
class HostNetwork:
    tag: str = field(default_factory=lambda: str(os.getpid() % 10000))
    hosts: dict[str, TestHost] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"llmdbr{self.tag}"

    def __enter__(self) -> HostNetwork:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        require_ip()
        self._remove_bridge()  # a leftover of a killed run with the same pid
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/{PREFIX}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> TestHost:
        index = len(self.hosts)
        host = TestHost(name=name, namespace=f"llmd-{self.tag}-{name}", address=f"192.0.2.{130 + index}")
        outside, inside = f"llmdv{self.tag}{index}", f"llmdp{self.tag}{index}"
        subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        self.hosts[name] = host
        _ip("netns", "add", host.namespace)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("link", "set", inside, "netns", host.namespace)
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/{PREFIX}", "dev", inside)
        _ip("-n", host.namespace, "link", "set", inside, "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def host_of(self, pid: int) -> str | None:
        return next((host.name for host in self.hosts.values() if host.runs(pid)), None)

    def close(self) -> None:
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)  # takes its veth along
        self.hosts.clear()
        self._remove_bridge()

    def _remove_bridge(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
