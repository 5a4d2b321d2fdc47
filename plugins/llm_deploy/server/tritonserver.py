"""Run the real ``tritonserver`` without Docker or a GPU: the twin's server, from nvidia-pytriton.

``pytriton_install`` makes the wheel's binary runnable; here it is started on a model repository
as a background service of the local runner, in a session of its own so that it outlives the
Airflow task that started it, and stopped through the same runner (``Service`` records the
leader's start time, so a record from an old run never signals a process that reused the pid).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from llm_deploy import processes
from llm_deploy.runners.command import Service, StepCommand
from llm_deploy.runners.local_runner import LocalRunner
from llm_deploy.server import pytriton_install, readiness
from llm_deploy.server.admin_guard import AdminKey, guarded_argv, require_key_beyond_loopback
from llm_deploy.server.errors import ServerStartError
from llm_deploy.server.mpirun import MpiLaunch
from llm_deploy.server.ports import check_ports_free, client_host
from llm_deploy.server.pytriton_install import BINARY_NAME, STUB, TritonPaths

log = logging.getLogger(__name__)

EXIT_TIMEOUT_S = 10
STOP_GRACE_S = 30.0
# What a server leaves running: the server, its python-backend stubs, and for multi-GPU trtllm
# servers mpirun and its ranks' daemon.
SERVER_PROCESS_NAMES = frozenset({BINARY_NAME, STUB, "mpirun", "orted"})


@dataclass(frozen=True)
class StartedServer:
    """A ready server: where clients reach it, and the runner's record that stops it."""

    service: Service
    http_url: str
    grpc_url: str
    metrics_url: str

    @property
    def pid(self) -> int:
        return self.service.pid

    @property
    def pgid(self) -> int:
        return self.service.pgid

    @property
    def log_path(self) -> str:
        return self.service.log_path


def server_command(paths: TritonPaths, repo: Path, *, host: str, http_port: int, grpc_port: int,
                   metrics_port: int, exit_timeout_s: int = EXIT_TIMEOUT_S) -> list[str]:
    return [
        str(paths.binary),
        f"--model-repository={repo}",
        f"--backend-directory={paths.backends}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        # No GPU here: skip NVML/DCGM probing (it only warns, but it clutters the log).
        "--allow-gpu-metrics=false",
        # A model that fails to load must fail the start, not leave a half-ready server.
        "--exit-on-error=true",
        "--strict-readiness=true",
        # On SIGTERM Triton waits this long for open client connections (a benchmark's keep-alive
        # ones count) before unloading; keep it well inside the stop's grace period.
        f"--exit-timeout-secs={exit_timeout_s}",
        "--log-verbose=0",
    ]


def prepare() -> tuple[TritonPaths, dict[str, str]]:
    """The runnable tritonserver (its python-backend stub built for this venv's Python) and the
    environment it and its stubs need."""
    paths = pytriton_install.find_triton()
    stub = pytriton_install.stub_python()
    pytriton_install.check_stub_python(stub)
    pytriton_install.ensure_python_stub(paths, stub.version)
    return paths, pytriton_install.server_env(paths, stub)


def start(repo: Path, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, log_path: Path, timeout_s: float = 600,
          admin_key: AdminKey | None = None, ranks: MpiLaunch | None = None) -> StartedServer:
    """Start tritonserver on ``repo`` and return once the server and every model in it are ready.

    ``admin_key``: required for a ``host`` other hosts can reach, whose admin APIs it then guards
    (``admin_guard``); the key reaches the server as a secret environment variable, never argv.
    ``ranks``: the other ranks of a model split over several processes, started beside the
    server by one mpirun (``mpirun.py``); the server is ready once its model is, which waits for
    every rank to join. On any failure the server's process group (with mpirun, its session) is
    killed and ServerStartError (PortInUseError for a taken port) is raised with the tail of the
    server log.
    """
    repo = Path(repo).resolve()
    models = readiness.repository_models(repo)
    if not models:
        raise ServerStartError(f"{repo} holds no model (no */config.pbtxt)")
    require_key_beyond_loopback(host, admin_key)
    check_ports_free(host, {"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
    paths, env = prepare()
    argv = server_command(paths, repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    argv = guarded_argv(argv, admin_key.header) if admin_key else argv
    if ranks is not None:
        argv, env = ranks.argv(argv), {**env, **ranks.env}
    command = StepCommand(
        name=BINARY_NAME,
        argv=tuple(argv),
        env=env,
        secret_env=admin_key.secret_env if admin_key else {},
        workdir=str(repo),
    )
    runner = LocalRunner(stop_grace_s=STOP_GRACE_S)
    service = runner.start(command, log_path)
    address = client_host(host)
    server = StartedServer(service=service, http_url=f"http://{address}:{http_port}",
                           grpc_url=f"{address}:{grpc_port}", metrics_url=f"http://{address}:{metrics_port}/metrics")
    try:
        readiness.wait_ready(server.http_url, models, alive=lambda: runner.alive(service),
                             output=lambda: runner.logs(service), timeout_s=timeout_s, log_path=str(log_path))
    except BaseException:
        runner.stop(service, grace_s=0)  # a failed start gets no grace: nothing of it may survive
        raise
    return server


def stop(server: StartedServer, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop the server (SIGTERM, so each stub runs its finalize(); SIGKILL after ``grace_s``).

    Idempotent: True when it was still running, False when there was nothing (left) to stop.
    """
    return LocalRunner().stop(server.service, grace_s=grace_s)


def stub_pids(pgid: int) -> list[int]:
    """The python-backend stubs alive in a server's process group (one per model instance)."""
    return processes.group_members(pgid, only={STUB})
