"""Start and stop a deployment's long-running tritonserver: under its supervisor, or as a
container with a restart policy (``launch``).

The server runs in explicit model-control mode, so that versions are loaded and unloaded through
the repository API while it serves; it binds the deployment's own ports, which are not the
qualification server's. The repository API is an admin endpoint: on a non-loopback host the
server restricts it, with the other admin APIs, to requests carrying the admin key
(``server.admin_guard``), which reaches the supervisor or the container as a secret environment
variable; ``server.json`` names it only as that variable.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

from llm_deploy import hosts
from llm_deploy.deployment import container_entry
from llm_deploy.deployment import launch as server_launch
from llm_deploy.deployment.launch import ServerLaunch
from llm_deploy.deployment.live_repository import REPOSITORY
from llm_deploy.deployment.record import Deployment
from llm_deploy.errors import NonRetryableError
from llm_deploy.runners import service_runner
from llm_deploy.runners.command import Runner, Service, StepCommand, VolumePath
from llm_deploy.runners.docker_runner import DockerRunner
from llm_deploy.runners.local_runner import LocalRunner
from llm_deploy.server import readiness
from llm_deploy.server.admin_guard import AdminKey, guarded_argv, require_key_beyond_loopback, unguarded_argv
from llm_deploy.server.ports import check_ports_free

log = logging.getLogger(__name__)

LOG = "server.log"
STOP_GRACE_S = 45.0  # above the supervisor's own grace for tritonserver
# Docker restarts a container that exits (tritonserver died), with its own growing delay, but not
# one stopped on purpose (docker stop), nor after the daemon restarts if it was stopped.
RESTART_POLICY = "unless-stopped"


def repository_dir(directory: Path) -> Path:
    return Path(directory) / REPOSITORY


def start(directory: Path, deployment: Deployment, launch: ServerLaunch, ensemble: str, *,
          timeout_s: float, admin_key: AdminKey | None = None) -> Service:
    """Start the deployment's server as ``launch`` says, on the live version; return once it is ready.

    ``local``: our supervisor, detached, restarting tritonserver itself. ``docker``: one container
    with a restart policy, whose entry serves the live version at each start. ``admin_key``:
    required on a non-loopback host, whose admin APIs it guards. On failure whatever was started
    is stopped before the error is raised.
    """
    require_key_beyond_loopback(deployment.host, admin_key, deployment.admin_conn_id or "triton_admin")
    check_ports_free(deployment.host, {"http": deployment.http_port, "grpc": deployment.grpc_port,
                                       "metrics": deployment.metrics_port})
    argv = unguarded_argv(launch.argv)  # a stored launch was guarded for the key of its own start
    launch = replace(launch, argv=tuple(guarded_argv(argv, admin_key.header) if admin_key else argv))
    server_launch.write(directory, launch, ensemble=ensemble, http_url=deployment.http_url)
    runner, command = _command(directory, deployment, launch, admin_key.secret_env if admin_key else {})
    service = runner.start(command, Path(directory) / LOG)
    live = deployment.live_version()
    models = [*live.models.values(), ensemble] if live else []
    try:
        readiness.wait_ready(deployment.http_url, models, alive=lambda: _first_start_alive(runner, service),
                             output=lambda: runner.logs(service), timeout_s=timeout_s,
                             log_path=str(Path(directory) / LOG))
    except BaseException:
        runner.stop(service, grace_s=0)
        raise
    log.info("deployment %s serving version %d at %s (%s); log: %s", deployment.name, deployment.live,
             deployment.http_url, _describe(service), Path(directory) / LOG if service.runner == "local"
             else f"docker logs {service.container_id[:12]}")
    return service


def _command(directory: Path, deployment: Deployment, launch: ServerLaunch,
             secret_env: dict[str, str]) -> tuple[Runner, StepCommand]:
    # The key lives in the supervisor's or the container's environment, so that each restart of
    # tritonserver (by the supervisor, or Docker re-running the entry) finds it without Airflow.
    if launch.runner == "docker":
        runner = DockerRunner(launch.image, engines_root=launch.engines_root,
                              engines_volume=launch.engines_volume or None)
        return runner, StepCommand(
            name=f"deployment-{deployment.name}",
            argv=("python3", "-c", container_entry.source(), str(directory)),
            env={"PYTHONUNBUFFERED": "1"},
            secret_env=secret_env,
            # The entry reads the record and the live repository; nothing in the container writes.
            volume_paths=(VolumePath(launch.engines_root, writable=False),),
            gpus=launch.gpus,
            network_host=True,
            restart_policy=RESTART_POLICY,
        )
    return LocalRunner(stop_grace_s=STOP_GRACE_S), StepCommand(
        name="llm-deploy-supervisor",
        argv=(sys.executable, "-m", "llm_deploy.deployment.supervisor", str(directory)),
        secret_env=secret_env, workdir=str(directory))


def _first_start_alive(runner: Runner, service: Service) -> bool:
    """Alive and not restarted yet: a server that fails before it is ready fails the start at once,
    instead of Docker's restarts keeping it "alive" until the timeout."""
    if service.runner == "docker":
        return runner.alive(service) and runner.restart_count(service) == 0
    return runner.alive(service)


def _describe(service: Service) -> str:
    if service.runner == "docker":
        return f"container {service.container_id[:12]}, restart policy {RESTART_POLICY}"
    return f"supervisor pid {service.pid}"


def require_its_host(deployment: Deployment) -> None:
    """Refuse to judge or touch a deployment's server from another host than the one it runs
    on: there its pid names nothing (or someone else), and starting another would serve twice."""
    here = hosts.this_host()
    if deployment.machine and deployment.machine != here:
        raise NonRetryableError(
            f"deployment {deployment.name} is served from host {deployment.machine} (its supervisor, pid "
            f"{deployment.supervisor.get('pid')}), and this task runs on {here}, which can neither reach that "
            f"server nor stop it: run it on {deployment.machine} (its Celery worker's own queue, gpu@"
            f"{deployment.machine}), or stop the deployment there first (DAG stop_llm_deployment)")


def running(deployment: Deployment) -> bool:
    """Whether the deployment's server runs (its supervisor or container; it may be restarting)."""
    if not deployment.supervisor:
        return False
    require_its_host(deployment)
    service = Service.from_xcom(deployment.supervisor)
    return service_runner(service).alive(service)


def stop(deployment: Deployment) -> bool:
    """Stop the server: the supervisor's group (SIGTERM, SIGKILL after the grace period), or the
    container (``docker stop``, which its restart policy obeys, then removed)."""
    if not deployment.supervisor:
        return False
    require_its_host(deployment)
    service = Service.from_xcom(deployment.supervisor)
    if service.runner == "docker":
        return service_runner(service).stop(service, grace_s=STOP_GRACE_S)
    return LocalRunner(stop_grace_s=STOP_GRACE_S).stop(service)


def read_log_tail(directory: Path, lines: int = 40) -> str:
    path = Path(directory) / LOG
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""

