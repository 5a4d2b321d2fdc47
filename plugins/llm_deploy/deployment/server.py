"""Start and stop a deployment's long-running tritonserver, under its supervisor.

The server runs in explicit model-control mode, so that versions are loaded and unloaded through
the repository API while it serves; it binds the deployment's own ports, which are not the
qualification server's. The repository API is an admin endpoint: the server listens on loopback
only, unless a later setting guards it (a non-loopback host is refused here).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
from pathlib import Path

from llm_deploy.deployment import supervisor
from llm_deploy.deployment.live_repository import REPOSITORY
from llm_deploy.deployment.record import Deployment
from llm_deploy.errors import NonRetryableError
from llm_deploy.runners.command import Service, StepCommand
from llm_deploy.runners.local_runner import LocalRunner
from llm_deploy.server import readiness, tritonserver
from llm_deploy.server.ports import check_ports_free

log = logging.getLogger(__name__)

LOG = "server.log"
STOP_GRACE_S = 45.0  # above the supervisor's own grace for tritonserver


def repository_dir(directory: Path) -> Path:
    return Path(directory) / REPOSITORY


def require_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise NonRetryableError(
            f"server_host={host}: a deployment's server takes model loads and unloads on its HTTP port, "
            "so it listens on loopback only (127.0.0.1); put a proxy in front of it for other hosts")


def start(directory: Path, deployment: Deployment, ensemble: str, *, timeout_s: float) -> Service:
    """Start the supervisor and its tritonserver on the live version; return once it is ready.

    On failure the supervisor's whole process group is stopped before the error is raised.
    """
    require_loopback(deployment.host)
    check_ports_free(deployment.host, {"http": deployment.http_port, "grpc": deployment.grpc_port,
                                       "metrics": deployment.metrics_port})
    paths, server_env = tritonserver.prepare()
    repo = repository_dir(directory)
    argv = tritonserver.server_command(paths, repo, host=deployment.host, http_port=deployment.http_port,
                                       grpc_port=deployment.grpc_port, metrics_port=deployment.metrics_port)
    # Explicit mode: the supervisor names the live version's models; the rest wait on disk.
    argv.append("--model-control-mode=explicit")
    # Only what the server needs on top of the worker's environment goes on the volume: the
    # worker's own variables (its secrets among them) reach the supervisor as its environment.
    env = {key: value for key, value in server_env.items() if os.environ.get(key) != value}
    (Path(directory) / supervisor.SERVER_SPEC).write_text(json.dumps({
        "argv": argv, "env": env, "workdir": str(repo),
        "ensemble": ensemble, "http_url": deployment.http_url}, indent=2))
    command = StepCommand(name="llm-deploy-supervisor",
                          argv=(sys.executable, "-m", "llm_deploy.deployment.supervisor", str(directory)),
                          workdir=str(directory))
    runner = LocalRunner(stop_grace_s=STOP_GRACE_S)
    service = runner.start(command, Path(directory) / LOG)
    live = deployment.live_version()
    models = [*live.models.values(), ensemble] if live else []
    try:
        readiness.wait_ready(deployment.http_url, models, alive=lambda: runner.alive(service),
                             output=lambda: runner.logs(service), timeout_s=timeout_s,
                             log_path=str(Path(directory) / LOG))
    except BaseException:
        runner.stop(service, grace_s=0)
        raise
    log.info("deployment %s serving version %d at %s (supervisor pid %d); log: %s", deployment.name,
             deployment.live, deployment.http_url, service.pid, Path(directory) / LOG)
    return service


def running(deployment: Deployment) -> bool:
    """Whether the deployment's supervisor still runs (its server may be restarting)."""
    if not deployment.supervisor:
        return False
    return LocalRunner().alive(Service.from_xcom(deployment.supervisor))


def stop(deployment: Deployment) -> bool:
    """Stop the supervisor and its server (SIGTERM to the group, SIGKILL after the grace period)."""
    if not deployment.supervisor:
        return False
    return LocalRunner(stop_grace_s=STOP_GRACE_S).stop(Service.from_xcom(deployment.supervisor))


def read_log_tail(directory: Path, lines: int = 40) -> str:
    path = Path(directory) / LOG
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""

