"""A throwaway Redis from the Debian package: the Celery broker of a multi-host test.

``ThrowawayRedis`` serves a fresh in-memory instance (no RDB or AOF file) with a password, on
127.0.0.1 and the addresses given, on a free port; apt-get installs ``redis-server`` when it is
missing and we are root.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.apt import apt_install, can_install

APT_PACKAGE = "redis-server"


class RedisUnavailable(RuntimeError):
    """redis-server is not installed and this process cannot install it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_or_install() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if not can_install():
        raise RedisUnavailable("redis-server is not installed and installing the Debian package needs root")
    apt_install(APT_PACKAGE)
    # Debian's package starts a system-wide instance on 6379 on install; a test wants none.
    subprocess.run(["service", "redis-server", "stop"], capture_output=True)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(f"apt-get installed {APT_PACKAGE} but no redis-server is on PATH")
    return found


class ThrowawayRedis:
    def __init__(self, log_path: Path, *, also_on: tuple[str, ...] = (), track=None):
        self.log_path = log_path
        self.addresses = ("127.0.0.1", *also_on)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self._track = track or (lambda pid: None)
        self.dir = Path(tempfile.mkdtemp(prefix="llm-deploy-redis-"))
        self.process: subprocess.Popen | None = None

    def url_at(self, address: str, db: int = 0) -> str:
        return f"redis://:{self.password}@{address}:{self.port}/{db}"

    def start(self, timeout_s: float = 30) -> None:
        binary = find_or_install()
        config = self.dir / "redis.conf"
        # In a file, not argv: the password stays out of the process list.
        config.write_text("\n".join([
            f"port {self.port}", f"bind {' '.join(self.addresses)}", f"requirepass {self.password}",
            'save ""', "appendonly no", f"dir {self.dir}", "daemonize no", ""]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self._track(self.process.pid)
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {timeout_s:.0f}s: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 10) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                                    socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False
