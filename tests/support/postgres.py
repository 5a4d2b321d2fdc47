"""A throwaway PostgreSQL cluster from the Debian package: Airflow's metadata database in tests.

``find_or_install_bindir()`` finds the server binaries of Debian's ``postgresql`` package
(``/usr/lib/postgresql/<major>/bin``, which Debian keeps off PATH) and installs the package with
apt-get when they are missing. ``ThrowawayPostgres`` initdb's a cluster in a temporary directory,
serves it on 127.0.0.1 only, on a free port, with a password, and removes it when stopped.

initdb and postgres refuse to run as root: as root they run as the ``postgres`` OS user that the
Debian package creates; as any other user, as that user.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.apt import apt_install, can_install

DEBIAN_BINDIRS = Path("/usr/lib/postgresql")
APT_PACKAGE = "postgresql"
# Debian's package creates and starts a "main" cluster on port 5432 on install; a test machine
# only wants the binaries. postgresql-common reads this before creating any cluster.
CREATECLUSTER_CONF = Path("/etc/postgresql-common/createcluster.conf")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed and this process cannot install it (not root, or no apt-get)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_bindir() -> Path | None:
    """The newest major version's bin dir of Debian's postgresql package, if installed."""
    found = [p.parent for p in DEBIAN_BINDIRS.glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def find_or_install_bindir() -> Path:
    bindir = find_bindir()
    if bindir:
        return bindir
    if not can_install():
        raise PostgresUnavailable(
            f"PostgreSQL is not installed ({DEBIAN_BINDIRS}/*/bin/initdb missing) and installing "
            "the Debian package needs root and apt-get")
    if not CREATECLUSTER_CONF.exists():
        CREATECLUSTER_CONF.parent.mkdir(parents=True, exist_ok=True)
        CREATECLUSTER_CONF.write_text("create_main_cluster = false\n")
    apt_install(APT_PACKAGE)
    bindir = find_bindir()
    if not bindir:
        raise RuntimeError(f"apt-get installed {APT_PACKAGE} but no {DEBIAN_BINDIRS}/*/bin/initdb appeared")
    return bindir


class ThrowawayPostgres:
    """One cluster, one database ``airflow`` owned by the superuser ``airflow``, on 127.0.0.1.

    ``also_on``: one more address to serve, with the network its clients come from (a test's own
    host network, e.g. ``("192.0.2.129", "192.0.2.128/25")``), for clients in other namespaces.
    """

    user = "airflow"
    database = "airflow"

    def __init__(self, bindir: Path, log_path: Path, track=None, also_on: tuple[str, str] | None = None):
        self.bindir = bindir
        self.also_on = also_on
        self.log_path = log_path
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self._track = track or (lambda pid: None)
        self._os_user = "postgres" if os.geteuid() == 0 else None
        self.process: subprocess.Popen | None = None
        # A directory that the postgres user can reach: pytest's tmp dirs live under a 0700
        # directory of root.
        self.dir = Path(tempfile.mkdtemp(prefix="llm-deploy-pg-"))
        self.data = self.dir / "data"

    @property
    def sqlalchemy_url(self) -> str:
        return self.url_at("127.0.0.1")

    def url_at(self, address: str) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@{address}:{self.port}/{self.database}"

    def start(self, timeout_s: float = 60) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._os_user:
            account = pwd.getpwnam(self._os_user)
            for path in (self.dir, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                   f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"])
        pwfile.unlink()
        listen = "127.0.0.1"
        if self.also_on:
            address, network = self.also_on
            listen += f",{address}"
            with open(self.data / "pg_hba.conf", "a") as hba:  # initdb's file admits loopback only
                hba.write(f"host all all {network} scram-sha-256\n")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", f"listen_addresses={listen}",
                 "-c", "unix_socket_directories=",  # TCP only, nothing in /var/run
                 # A throwaway database: durability buys nothing, and fsyncs slow every
                 # scheduler loop and `airflow db migrate` on a shared disk.
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 # Airflow's components each keep a connection pool (5 + 10 overflow by default).
                 "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, user=self._os_user)
        self._track(self.process.pid)
        self._wait_ready(timeout_s)
        self._create_database()

    def stop(self, timeout_s: float = 30) -> None:
        if self.process and self.process.poll() is None:
            # SIGINT = "fast" shutdown: roll back open transactions and exit without waiting for
            # clients (SIGTERM would wait for them to disconnect).
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def connect(self):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                password=self.password, dbname="postgres", connect_timeout=3)

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, user=self._os_user, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with code {self.process.returncode}; "
                                   f"{self.log_path}:\n{self.log_tail()}")
            try:
                self.connect().close()
                return
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections within {timeout_s:.0f}s "
                                       f"({exc}); {self.log_path}:\n{self.log_tail()}") from None
                time.sleep(0.2)

    def _create_database(self) -> None:
        if not re.fullmatch(r"[a-z_]+", self.database):
            raise ValueError(f"database name {self.database!r}")
        conn = self.connect()
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {self.database} OWNER {self.user}")
        finally:
            conn.close()
