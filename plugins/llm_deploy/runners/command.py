"""A step's command as data: what to run, with which environment, paths, GPUs and limits.

Steps describe *what* runs; a runner (``local``, ``docker`` or ``kubernetes``) decides *where*. Keeping the
description plain data means one step works on either runner, tests can read exactly what would
run, and nothing is ever put through a shell: ``argv`` is a list, always.

Secrets travel only in ``secret_env``: runners pass them as environment variables, never in
argv (which ``ps``, every log line that shows the command and the container's Cmd expose), and
never log their values. (A container's environment is still readable by whoever may use the
docker socket, as it is for any ``docker run -e``.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol

from llm_deploy.errors import StepError

# The tutorial's `docker run` flags for TensorRT-LLM and Triton: NCCL needs a large /dev/shm and
# pinned memory; MPI ranks need a big stack.
DEFAULT_SHM_SIZE = "2g"
DEFAULT_ULIMITS: Mapping[str, tuple[int, int]] = {"memlock": (-1, -1), "stack": (67108864, 67108864)}

# Worker-side list of the GPUs this worker owns (e.g. "0,1"), for deployments that pin one Celery
# worker per GPU set: the pool slot a task holds then stands for exactly these devices.
WORKER_GPU_IDS_ENV = "LLM_DEPLOY_GPU_DEVICE_IDS"
# Set in a whole Python step's container (the twin with the docker runner): the image it runs
# in, which the step's build target names.
RUNNER_IMAGE_ENV = "LLM_DEPLOY_RUNNER_IMAGE"


@dataclass(frozen=True)
class VolumePath:
    """A path on the engines volume that a step reads (``writable=False``) or writes.

    Writers get the *parent* of what they publish: ``volume.publish_dir`` renames a scratch dir
    beside the final one, and a rename cannot cross a mount boundary.
    """

    path: str
    writable: bool = False

    def __post_init__(self) -> None:
        if not PurePosixPath(self.path).is_absolute():
            raise ValueError(f"volume path must be absolute, got {self.path!r}")


@dataclass(frozen=True)
class Mount:
    """A mount that is not on the engines volume (e.g. a host directory), target in the container."""

    source: str
    target: str
    read_only: bool = True
    type: str = "bind"  # "bind" (host path) or "volume" (named docker volume)


@dataclass(frozen=True)
class GpuRequest:
    """Either ``count`` GPUs (any of them) or exactly ``device_ids``; empty = no GPU."""

    count: int = 0
    device_ids: tuple[str, ...] = ()

    @property
    def wanted(self) -> bool:
        return bool(self.count or self.device_ids)

    @classmethod
    def for_world_size(cls, world_size: int, device_ids: str = "") -> GpuRequest:
        """Explicit ids (the spec's gpu_device_ids, else the worker's own set) win over a count."""
        ids = device_ids or os.environ.get(WORKER_GPU_IDS_ENV, "")
        if ids:
            return cls(device_ids=tuple(i.strip() for i in ids.split(",") if i.strip()))
        return cls(count=world_size)


NO_GPU = GpuRequest()


@dataclass(frozen=True)
class StepCommand:
    """Everything a runner needs to run one command for one step."""

    name: str  # the step (or task) name: log prefix, container name, labels
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict)
    volume_paths: tuple[VolumePath, ...] = ()
    mounts: tuple[Mount, ...] = ()
    gpus: GpuRequest = NO_GPU
    workdir: str | None = None
    network_host: bool = False
    shm_size: str = DEFAULT_SHM_SIZE
    ulimits: Mapping[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_ULIMITS))
    image: str = ""  # docker runner only; the local runner *is* its image
    timeout_s: float | None = None
    # docker runner's services only: Docker's restart policy ("unless-stopped"); "" = none.
    restart_policy: str = ""
    # Services: the ports the command listens on, by name ({"http": 8000}). The kubernetes
    # runner publishes them through the server's Service; host networking needs no list.
    ports: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(arg, str) for arg in self.argv):
            raise ValueError(f"{self.name}: argv must be a non-empty list of strings, got {self.argv!r}")
        leaked = [key for key, value in self.secret_env.items() if value and value in " ".join(self.argv)]
        if leaked:
            # Named, never shown: the point is that the value stays out of every log.
            raise ValueError(f"{self.name}: the value of secret {leaked[0]} appears in argv")
        overlap = set(self.env) & set(self.secret_env)
        if overlap:
            raise ValueError(f"{self.name}: {sorted(overlap)} given both as env and as secret_env")

    def describe(self) -> str:
        """One log line: the argv and the *names* of the secrets, never their values."""
        secrets = f" (secret env: {', '.join(sorted(self.secret_env))})" if self.secret_env else ""
        return f"{self.name}: {' '.join(self.argv)}{secrets}"


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    lines: list[str]  # the command's output, one entry per line (stdout and stderr merged)
    seconds: float


@dataclass(frozen=True)
class Service:
    """A runner's record of a background command (the server) that outlives the task that
    started it: a process group (local), a container (docker) or a pod behind a Service
    (kubernetes); XCom-safe."""

    runner: str  # "local" | "docker" | "kubernetes"
    name: str
    pid: int = 0  # local: the group's leader
    pgid: int = 0  # local
    create_time: float | None = None  # local: with pid, names the leader for good (pids get reused)
    container_id: str = ""  # docker
    pod_name: str = ""  # kubernetes: the pod, and the Service of the same name
    namespace: str = ""  # kubernetes
    address: str = ""  # kubernetes: the Service's DNS name, where clients reach the server
    log_path: str = ""
    log_offset: int = 0  # local: where this start's output begins in log_path (it is appended to)

    def to_xcom(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_xcom(cls, record: Mapping[str, Any]) -> Service:
        return cls(**{key: record[key] for key in cls.__dataclass_fields__ if key in record})

    @classmethod
    def of(cls, record: Service | Mapping[str, Any]) -> Service:
        return record if isinstance(record, Service) else cls.from_xcom(record)


# Runs argv lists one after another in one process, stopping at the first failure: no shell, the
# lists travel as JSON data. A step whose commands share state (a pip-installed wheel, a cwd)
# then runs them in one container instead of one fresh container each.
_SEQUENCE = (
    "import json, subprocess, sys\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    print('+ ' + ' '.join(argv), flush=True)\n"
    "    code = subprocess.call(argv)\n"
    "    if code:\n"
    "        sys.exit(code)\n"
)


def sequence_argv(argvs: list[list[str]], python: str = "python3") -> tuple[str, ...]:
    """One argv that runs ``argvs`` in order (exit code: the first failing command's)."""
    import json

    if len(argvs) == 1:
        return tuple(argvs[0])
    return (python, "-c", _SEQUENCE, json.dumps([list(argv) for argv in argvs]))


def parse_size(size: str) -> int:
    """'2g' -> bytes, as docker's --shm-size reads it."""
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = size.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class CommandFailed(StepError):
    """The command exited non-zero; a retry may help (the message ends with its last lines)."""

    def __init__(self, command: StepCommand, exit_code: int | None, lines: list[str], *, why: str = "") -> None:
        self.exit_code = exit_code
        self.lines = lines
        tail = "\n".join(lines[-TAIL_LINES:])
        status = why or f"exited with code {exit_code}"
        super().__init__(f"{command.name}: {command.argv[0]} {status}; last output:\n{tail}")


class CommandTimedOut(CommandFailed):
    """The command ran past its timeout_s and was killed."""


TAIL_LINES = 30


class Runner(Protocol):
    """What the local, docker and kubernetes runners all offer (``llm_deploy.runners.runner_for``)."""

    name: str
    python: str  # the interpreter that runs llm_deploy.cli where the runner runs commands

    def run(self, command: StepCommand) -> CommandResult: ...

    def start(self, command: StepCommand, log_path: str) -> Service: ...

    def alive(self, record: Service | Mapping[str, Any]) -> bool: ...

    def logs(self, record: Service | Mapping[str, Any], tail: int = ...) -> list[str]: ...

    def stop(self, record: Service | Mapping[str, Any], *, grace_s: float | None = None) -> bool: ...
