"""The ``docker`` runner: a step's command in a fresh container, through DockerOperator.

Each one-shot command becomes one ``DockerOperator`` (apache-airflow-providers-docker) that the
running task executes in place: ``operator.execute(context)``. Why this and not the alternatives:

- *A DockerOperator per step in the DAG* would fix at parse time what only the run's params
  decide (runner local or docker, image per release, GPU count, mounts under engines_root); the
  DAG would need two branches of every step. Here the DAG stays one TaskFlow task per tutorial
  step and the param picks the runner at run time.
- *The docker SDK by hand* would re-implement what the provider already does well and is
  maintained for: log streaming into the task log, image pull, auto-remove, and ``on_kill``.
- *``@task.docker``* pickles a Python callable into the image, which requires Airflow (and
  the same Python) inside the NGC image; our steps are argv commands or ``llm_deploy.cli`` calls.

The price is one warning line per step ("DockerOperator.execute cannot be called outside of the
Task Runner!"): Airflow notices a nested operator. Nesting is supported (``allow_nested_operators``
defaults to True); the warning is informational.

Long-running commands (the server) need a detached container, which DockerOperator cannot give
(it waits for the container to exit), so ``start``/``stop`` use the same DockerHook's client with
the same settings.

Every container gets the tutorial's ``docker run`` flags: ``--shm-size=2g --ulimit memlock=-1
--ulimit stack=67108864``, GPUs as a DeviceRequest (``--gpus``) only when the step asks for them,
host networking only for commands that serve or reach the server. The engines volume is mounted
read-only, plus the one directory a step publishes into, writable. Secrets go in
``private_environment`` (environment, not argv; not templated, not shown in the UI).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from llm_deploy.errors import NonRetryableError
from llm_deploy.runners.command import (
    CommandFailed,
    CommandResult,
    CommandTimedOut,
    Service,
    StepCommand,
    VolumePath,
    parse_size,
)
from llm_deploy.runners.local_runner import prepare_volume_paths
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

# Name of the docker volume that holds engines_root (docker-compose: the stack's "engines" volume).
# Unset: engines_root is a host directory and is bind-mounted path for path.
ENGINES_VOLUME_ENV = "LLM_DEPLOY_ENGINES_VOLUME"
# "uid:gid" the containers run as; unset = the worker's own, so files on the shared volume stay
# the worker's; empty = the image's default user.
USER_ENV = "LLM_DEPLOY_DOCKER_USER"
# Replaces the tutorial's ulimits by name, e.g. "memlock=8388608:8388608", for daemons that may
# not lift a limit (a dockerd without CAP_SYS_RESOURCE fails every container asking memlock=-1).
ULIMITS_ENV = "LLM_DEPLOY_DOCKER_ULIMITS"
LABEL_STEP = "io.llm-deploy.step"
SERVICE_LOG_TAIL = 2000
STOP_TIMEOUT_S = 30  # a server unloading its models may need this long after SIGTERM
# A timed-out command gets this long after SIGTERM. A one-shot command is PID 1 of its container
# (DockerOperator offers no --init), which ignores SIGTERM unless it installs a handler.
TIMEOUT_GRACE_S = 5

# Every container: HOME for libraries that cache under ~ (the worker's uid has no home in the image).
BASE_ENV = {"HOME": "/tmp"}


def resolve_image(spec: DeploySpec, default_image: str) -> str:
    """The image a spec's steps run in: the ``docker_image`` param, else the backend's default."""
    image = spec.docker_image or default_image
    if not image:
        raise NonRetryableError(f"docker_image is empty and backend {spec.backend!r} has no default image here: "
                                "name the image to run the steps in")
    return image


class DockerRunner:
    name = "docker"
    python = "python3"  # on PATH in the NGC images and in ours

    def __init__(
        self,
        image: str,
        *,
        engines_root: str,
        engines_volume: str | None = None,
        docker_url: str | None = None,
        docker_conn_id: str | None = None,
        user: str | None = None,
    ) -> None:
        self.image = image
        self.engines_root = engines_root
        self.engines_volume = engines_volume
        self.docker_url = docker_url or os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock"
        self.docker_conn_id = docker_conn_id  # only to log in to a private registry before a pull
        self.user = _default_user() if user is None else (user or None)
        self.ulimit_overrides = parse_ulimits(os.environ.get(ULIMITS_ENV, ""))

    @classmethod
    def for_spec(cls, spec: DeploySpec, default_image: str = "") -> DockerRunner:
        return cls(resolve_image(spec, default_image), engines_root=spec.engines_root,
                   engines_volume=os.environ.get(ENGINES_VOLUME_ENV) or None)

    # --- what every container gets ---------------------------------------------------------------

    def mounts(self, command: StepCommand) -> list[Any]:
        from docker.types import Mount

        mounts = [Mount(target=m.target, source=m.source, type=m.type, read_only=m.read_only)
                  for m in command.mounts]
        return self._volume_mounts(command.volume_paths) + mounts

    def _volume_mounts(self, paths: tuple[VolumePath, ...]) -> list[Any]:
        from docker.types import Mount

        if not paths:
            return []
        root = PurePosixPath(self.engines_root)
        outside = [p.path for p in paths if not PurePosixPath(p.path).is_relative_to(root)]
        if outside:
            raise NonRetryableError(f"{outside[0]} is not on the engines volume {root}")
        if self.engines_volume:
            # A named volume mounts whole (docker 20.10 has no volume subpaths): writable if any
            # path is. engines_root is the same path in the worker and in the container.
            writable = any(p.writable for p in paths)
            return [Mount(target=str(root), source=self.engines_volume, type="volume", read_only=not writable)]
        # Host directories, path for path; docker mounts parents before children, so a writable
        # directory inside the read-only volume root stays writable.
        return [Mount(target=p.path, source=p.path, type="bind", read_only=not p.writable)
                for p in sorted(paths, key=lambda p: len(p.path))]

    def device_requests(self, command: StepCommand) -> list[Any] | None:
        from docker.types import DeviceRequest

        gpus = command.gpus
        if gpus.device_ids:
            return [DeviceRequest(device_ids=list(gpus.device_ids), capabilities=[["gpu"]])]
        if gpus.count:
            return [DeviceRequest(count=gpus.count, capabilities=[["gpu"]])]
        return None  # no GPU asked: no device request, so GPU-less hosts run the step too

    def ulimits(self, command: StepCommand) -> list[Any]:
        from docker.types import Ulimit

        limits = {**command.ulimits, **self.ulimit_overrides}
        return [Ulimit(name=name, soft=soft, hard=hard) for name, (soft, hard) in limits.items()]

    def settings(self, command: StepCommand) -> dict[str, Any]:
        """The container settings shared by one-shot runs and services (DockerOperator's names)."""
        return {
            "image": command.image or self.image,
            "command": list(command.argv),
            "environment": {**BASE_ENV, **command.env},
            "private_environment": dict(command.secret_env),
            "mounts": self.mounts(command),
            "device_requests": self.device_requests(command),
            "shm_size": parse_size(command.shm_size),
            "ulimits": self.ulimits(command),
            "network_mode": "host" if command.network_host else None,
            "working_dir": command.workdir,
            "user": self.user,
            "container_name": _container_name(command.name),
            "labels": {LABEL_STEP: command.name},
        }

    # --- one-shot commands -------------------------------------------------------------------------

    def operator(self, command: StepCommand):
        from airflow.providers.docker.operators.docker import DockerOperator

        return DockerOperator(
            task_id=re.sub(r"[^\w.-]", "_", f"{command.name}_container"),
            docker_url=self.docker_url,
            docker_conn_id=self.docker_conn_id,
            auto_remove="force",  # removed on success and failure alike; its output is in the task log
            mount_tmp_dir=False,  # a host temp dir is meaningless through a remote or mounted socket
            xcom_all=True,  # execute() returns every line: Python steps report their outcome last
            do_xcom_push=True,
            tty=False,
            **self.settings(command),
        )

    def run(self, command: StepCommand) -> CommandResult:
        from airflow.providers.docker.exceptions import DockerContainerFailedException

        prepare_volume_paths(command.volume_paths)
        operator = self.operator(command)
        log.info("running in %s: %s", operator.image, command.describe())
        timed_out = threading.Event()
        timer = None
        if command.timeout_s:
            timer = threading.Timer(command.timeout_s, self._time_out, args=(operator, timed_out))
            timer.daemon = True
            timer.start()
        started = time.monotonic()
        try:
            output = operator.execute(_current_context())
        except DockerContainerFailedException as exc:
            lines = [_text(line) for line in exc.logs or []]
            if timed_out.is_set():
                raise CommandTimedOut(command, None, lines,
                                      why=f"ran past its {command.timeout_s}s timeout and was stopped") from None
            raise CommandFailed(command, _exit_code(str(exc)), lines) from None
        finally:
            if timer:
                timer.cancel()
        lines = output if isinstance(output, list) else [output] if output else []
        if timed_out.is_set():  # stopped, yet exited 0: still not a finished step
            raise CommandTimedOut(command, 0, lines, why=f"ran past its {command.timeout_s}s timeout")
        seconds = time.monotonic() - started
        log.info("%s finished in %.1fs", command.name, seconds)
        return CommandResult(0, lines, seconds)

    @staticmethod
    def _time_out(operator, timed_out: threading.Event) -> None:
        """Stop the container; execute() then sees it exit and removes it (auto_remove)."""
        timed_out.set()
        if operator.container:
            log.warning("stopping container %s: timeout", operator.container["Id"][:12])
            operator.cli.stop(operator.container["Id"], timeout=TIMEOUT_GRACE_S)

    # --- background services (the server) ---------------------------------------------------------

    def hook(self):
        from airflow.providers.docker.hooks.docker import DockerHook

        return DockerHook(docker_conn_id=self.docker_conn_id, base_url=self.docker_url)

    def start(self, command: StepCommand, log_path: str | Path) -> Service:
        """Start a detached container; its output is copied to ``log_path`` when it is stopped."""
        prepare_volume_paths(command.volume_paths)
        client = self.hook().api_client
        settings = self.settings(command)
        if not client.images(name=settings["image"]):
            for _ in client.pull(settings["image"], stream=True, decode=True):
                pass
        host_config = client.create_host_config(
            mounts=settings["mounts"], device_requests=settings["device_requests"],
            shm_size=settings["shm_size"], ulimits=settings["ulimits"],
            network_mode=settings["network_mode"], auto_remove=False,
            restart_policy={"Name": command.restart_policy} if command.restart_policy else None,
            # An init as PID 1 forwards `docker stop`'s SIGTERM (a server as PID 1 would not get it
            # by default) and reaps the ranks mpirun leaves behind.
            init=True,
        )
        container = client.create_container(
            image=settings["image"], command=settings["command"], name=settings["container_name"],
            environment={**settings["environment"], **settings["private_environment"]},
            host_config=host_config, user=settings["user"], working_dir=settings["working_dir"],
            labels=settings["labels"], detach=True,
        )
        client.start(container["Id"])
        log.info("started container %s (%s) from %s: %s", settings["container_name"], container["Id"][:12],
                 settings["image"], command.describe())
        return Service(runner=self.name, name=command.name, container_id=container["Id"],
                       log_path=str(log_path))

    def alive(self, record: Service | Mapping[str, Any]) -> bool:
        from docker.errors import NotFound

        record = Service.of(record)
        try:
            state = self.hook().api_client.inspect_container(record.container_id)["State"]
        except NotFound:
            return False
        # A container its restart policy is about to start again counts as alive.
        return bool(state["Running"] or state.get("Restarting"))

    def restart_count(self, record: Service | Mapping[str, Any]) -> int:
        """How often Docker's restart policy restarted the container (0 if it is gone)."""
        from docker.errors import NotFound

        try:
            return int(self.hook().api_client.inspect_container(Service.of(record).container_id)["RestartCount"])
        except NotFound:
            return 0

    def logs(self, record: Service | Mapping[str, Any], tail: int = SERVICE_LOG_TAIL) -> list[str]:
        from docker.errors import NotFound

        record = Service.of(record)
        try:
            raw = self.hook().api_client.logs(record.container_id, stdout=True, stderr=True, tail=tail)
        except NotFound:
            return []
        return _text(raw).splitlines()

    def stop(self, record: Service | Mapping[str, Any], *, grace_s: float | None = None) -> bool:
        """Stop and remove the container (SIGTERM, SIGKILL after ``grace_s``), keeping its output
        in the record's log_path."""
        from docker.errors import NotFound

        record = Service.of(record)
        client = self.hook().api_client
        was_running = self.alive(record)
        try:
            client.stop(record.container_id, timeout=STOP_TIMEOUT_S if grace_s is None else int(grace_s))
        except NotFound:
            log.info("container %s is gone already", record.container_id[:12])
            return False
        if record.log_path:
            Path(record.log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(record.log_path, "a") as out:
                out.writelines(line + "\n" for line in self.logs(record))
        client.remove_container(record.container_id, force=True)
        log.info("%s (container %s) %s", record.name, record.container_id[:12],
                 "stopped" if was_running else "had already exited")
        return was_running


def parse_ulimits(text: str) -> dict[str, tuple[int, int]]:
    """"memlock=-1:-1,stack=67108864:67108864" -> {"memlock": (-1, -1), ...}; "" -> {}."""
    limits = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, values = item.partition("=")
        soft, _, hard = values.partition(":")
        limits[name.strip()] = (int(soft), int(hard or soft))
    return limits


def _default_user() -> str | None:
    if USER_ENV in os.environ:
        return os.environ[USER_ENV] or None
    return f"{os.getuid()}:{os.getgid()}"


def _container_name(step: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", f"llm-deploy-{step}-{uuid.uuid4().hex[:8]}")


def _current_context() -> Any:
    """The running task's context when there is one (DockerOperator.execute does not read it)."""
    try:
        from airflow.sdk import get_current_context

        return get_current_context()
    except Exception:  # noqa: BLE001 - outside a task (tests, the CLI): an empty context will do
        return {}


def _exit_code(message: str) -> int | None:
    """DockerOperator reports the exit code only inside its message: "... {'StatusCode': 3, ...}"."""
    found = re.search(r"'StatusCode': (-?\d+)", message)
    return int(found.group(1)) if found else None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
