"""A real Airflow 3 deployment on this machine, for tests and benchmarks of the deploy_llm DAG.

PostgreSQL (Debian package) as the metadata database, then ``airflow db migrate``, then the
api-server, scheduler (LocalExecutor), dag-processor and triggerer as separate processes, each in
its own session with its log under the stack's directory; the REST API is reached with a JWT of
the SimpleAuthManager's admin user. ``stop()`` stops everything and returns whatever was still
running afterwards (found by process tree, see ``process_tree``), so a test can require nothing.

Used by tests/deployment (pytest fixture) and benchmarks/pipeline_overhead.py (which puts the
checkout on sys.path); test infrastructure, so it lives under tests/, not in the package that
workers and images install.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import short_retries
from tests.support.airflow_api import AirflowRestApi, StackError, fetch_token  # noqa: F401 - StackError re-exported
from tests.support.postgres import ThrowawayPostgres, find_or_install_bindir
from tests.support.process_tree import ProcessTree, ProcInfo

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
ADMIN = "admin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def latency_config(task_heartbeat_timeout_s: int) -> dict[str, str]:
    """Airflow settings that decide how fast a run moves, each with the reason for its value."""
    return {
        # The scheduler loops without pause while it has work and sleeps this long when a loop
        # found none (default 1 s): a task that ends during the sleep waits for it before its
        # downstream is queued. 0.2 s cuts that wait on every edge of the DAG for ~5 cheap
        # queries a second while idle.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        # A LocalExecutor forks this many workers up front (one per task that may run at once).
        # deploy_llm runs at most two tasks at once; 4 leaves headroom for a retry beside them
        # without forking 32 idle processes (the default) on a 2-core machine.
        "AIRFLOW__CORE__PARALLELISM": "4",
        # A task whose supervisor stops heartbeating (worker killed, host lost) is failed, and
        # so retried, after this long (default 300 s). Supervisors heartbeat every 2 s here
        # (default 5 s: one small Execution API call per running task): the timeout then
        # allows five missed beats on a loaded machine while keeping the worker-kill test short.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(task_heartbeat_timeout_s),
        # ... and the scheduler looks for such tasks this often (default 10 s).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        # The dag-processor parses every file at start; the stack waits for deploy_llm to be
        # serialized before triggering. Re-parsing a file every 30 s (default) and listing the
        # folder every 30 s (default 300) is enough here, and one parsing process (default 2)
        # leaves the second core to the tasks.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # One API server worker (uvicorn process) serves the REST API and the Execution API.
        "AIRFLOW__API__WORKERS": "1",
    }


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class AirflowStack(AirflowRestApi):
    """Start with ``start()`` (or ``with AirflowStack(...) as stack``); ``stop()`` ends everything.

    ``root``: a fresh directory for AIRFLOW_HOME, logs and the passwords file.
    ``engines_root``: the engines volume that the DAG's tasks see (LLM_DEPLOY_ENGINES_ROOT).
    ``extra_env``: more environment for every component, e.g. feeds that stand in for outside ones.
    ``retry_delay_s``: when set, every task's retries come this many seconds apart (a cluster
    policy, tests/support/short_retries.py), for tests that wait for a retry.
    """

    root: Path
    engines_root: Path
    dags_folder: Path = REPO_ROOT / "dags"
    plugins_folder: Path = REPO_ROOT / "plugins"
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. local stand-ins for outside feeds
    task_heartbeat_timeout_s: int = 12
    retry_delay_s: int | None = None
    start_timeout_s: float = 240
    api_host: str = "127.0.0.1"  # the address the api-server (REST and Execution API) binds
    gpu_slots: int = 1  # the gpu pool: one slot per GPU set
    api_port: int = field(default_factory=free_port)
    components: dict[str, Component] = field(default_factory=dict)
    token: str = ""
    tree: ProcessTree | None = None
    postgres: ThrowawayPostgres | None = None
    timings: dict[str, float] = field(default_factory=dict)

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> AirflowStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def home(self) -> Path:
        return self.root / "airflow-home"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def admin_password(self) -> str:
        """The password of the UI's admin user (SimpleAuthManager's passwords file)."""
        return self._password

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    def start(self) -> None:
        begin = time.monotonic()
        self.tree = ProcessTree()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.logs.mkdir(parents=True, exist_ok=True)
            if self.retry_delay_s is not None:
                short_retries.install(self.home, self.retry_delay_s)
            self._start_services()
            self.timings["services_s"] = time.monotonic() - begin
            self._password = secrets.token_urlsafe(16)
            (self.home / "passwords.json").write_text(json.dumps({ADMIN: self._password}))
            self.env = self._environment()
            mark = time.monotonic()
            self._airflow("db", "migrate")
            self.timings["db_migrate_s"] = time.monotonic() - mark
            mark = time.monotonic()
            for name in COMPONENTS:
                self._start_component(name)
            self._wait_for_api()
            self.token = fetch_token(self.api_url, ADMIN, self._password)
            self.api("POST", "/api/v2/pools", json={
                "name": "gpu", "slots": self.gpu_slots,
                "description": "one slot per GPU set: the DAG's GPU tasks take turns"})
            self._start_workers()
            self.timings["components_s"] = time.monotonic() - mark
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - begin

    def stop(self, timeout_s: float = 30) -> list[ProcInfo]:
        """Stop every component, then postgres; returns what was still running after that.

        Whatever is returned has been SIGKILLed as well, so nothing outlives a failing test.
        """
        # The scheduler first, so that nothing new is started while the rest goes down.
        for name in ("scheduler", *self._workers(), "triggerer", "dag-processor", "api-server"):
            if name in self.components:
                self._stop_component(self.components[name], timeout_s)
        self._stop_services(timeout_s)
        if not self.tree:
            return []
        leftovers = self.tree.kill_all()
        self.tree.close()
        self.tree = None
        return leftovers

    def ours(self) -> list[ProcInfo]:
        """Live processes started by this stack (components, their tasks, orphaned servers)."""
        return self.tree.ours() if self.tree else []

    def logs_tail(self, lines: int = 40) -> str:
        parts = [f"--- {c.name} ({c.log_path}) ---\n{c.log_tail(lines)}" for c in self.components.values()]
        if self.postgres:
            parts.append(f"--- postgres ({self.postgres.log_path}) ---\n{self.postgres.log_tail(lines)}")
        return "\n".join(parts)

    # --- what an executor adds (CeleryStack: a broker and workers) -------------------------------
    def _start_services(self) -> None:
        self.postgres = ThrowawayPostgres(find_or_install_bindir(), self.logs / "postgres.log", track=self.tree.track)
        self.postgres.start()

    def _stop_services(self, timeout_s: float) -> None:
        if self.postgres:
            self.postgres.stop(timeout_s)

    def _start_workers(self) -> None:
        """The LocalExecutor runs tasks inside the scheduler: no workers of their own."""

    def _workers(self) -> list[str]:
        return []

    # --- internals -----------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        # Nothing of the caller's Airflow (AIRFLOW_HOME, a test's SQLite DB) may leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        venv_bin = str(Path(sys.executable).parent)
        env.update({
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.sqlalchemy_url,
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            # Every process signs and checks the same JWTs: the API's and the task workers'.
            "AIRFLOW__API_AUTH__JWT_SECRET": base64.b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API__HOST": self.api_host,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            # The SimpleAuthManager (Airflow 3's default) with one admin whose password we chose.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            # Log servers on free ports: another Airflow on this machine may hold the defaults.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "LLM_DEPLOY_ENGINES_ROOT": str(self.engines_root),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "1",
            **latency_config(self.task_heartbeat_timeout_s),
            **self.extra_env,
        })
        return env

    def _airflow(self, *args: str, timeout_s: float = 300) -> None:
        log_path = self.logs / f"airflow-{'-'.join(args)}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=self.env,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
            self.tree.track(process.pid)
            try:
                code = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = "timeout"
        if code != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            raise StackError(f"airflow {' '.join(args)} failed ({code}); {log_path}:\n{tail}")

    def _start_component(self, name: str) -> None:
        argv = [sys.executable, "-m", "airflow", name]
        if name == "api-server":
            argv += ["--host", self.api_host, "--port", str(self.api_port), "--workers", "1"]
        self._start_process(Component(name, argv, self.logs / f"{name}.log"))

    def _start_process(self, component: Component, env: dict[str, str] | None = None) -> None:
        with open(component.log_path, "ab") as log:
            component.process = subprocess.Popen(component.argv, env=env or self.env, stdout=log,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 start_new_session=True)
        self.tree.track(component.process.pid)
        self.components[component.name] = component

    def _stop_component(self, component: Component, timeout_s: float) -> None:
        process = component.process
        if process is None or process.poll() is not None:
            return
        # The whole session's group: uvicorn workers, parsing processes, executor workers.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            process.wait()

    def _check_alive(self) -> None:
        for component in self.components.values():
            if component.process.poll() is not None:
                raise StackError(f"airflow {component.name} exited with code {component.process.returncode}"
                                 f" while starting:\n{self.logs_tail()}")

    def _wait_for_api(self) -> None:

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            self._check_alive()
            if self.is_healthy():
                return
            if time.monotonic() > deadline:
                raise StackError(f"the API server did not report healthy within {self.start_timeout_s:.0f}s"
                                 f":\n{self.logs_tail()}")
            time.sleep(0.5)
