"""A deployment's record on the engines volume: what each version serves, which is live, and
what happened to it (promotions, refusals, rollbacks, restarts, stops).

``deployments/<name>/deployment.json`` is written by the steps and by the supervisor; every
change is a read-modify-write under an exclusive lock on ``deployment.lock``, and the file is
replaced atomically, so a reader never sees half a record and no writer loses another's change.
Operations that change what is served (promote, rollback, stop) also hold ``operation.lock`` for
their whole length: two of them on one deployment at once are refused, not interleaved.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_deploy.errors import NonRetryableError

RECORD = "deployment.json"
LOCK = "deployment.lock"
OPERATION_LOCK = "operation.lock"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Events kept in the record (the oldest are dropped): enough for a person to read its history.
HISTORY_KEPT = 200


class DeploymentBusy(NonRetryableError):
    """Another promotion, rollback or stop of this deployment is under way."""


@dataclass
class Version:
    """One version of the deployment: a qualified candidate copied into the live repository."""

    version: int
    models: dict[str, str]  # the candidate's model name -> its name in the live repository
    engine_dir: str  # "" in a flow without an engine
    engine_id: str
    source_repo: str  # the candidate's rendered repository it was copied from
    run_id: str  # the run that promoted it
    promoted_unix: float
    max_batch_size: int
    qualification: dict[str, Any] = field(default_factory=dict)  # the figures it won with


@dataclass
class Deployment:
    name: str
    backend: str
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    ensemble: str = "ensemble"  # the endpoint clients call; routed to the live version
    # The Airflow connection whose key guards the admin APIs of a server on a non-loopback host
    # ("" on loopback: unguarded). Only its name: each rollback or promotion reads the key anew.
    admin_conn_id: str = ""
    load_timeout_s: float = 600.0  # how long one model's load may take (the run's server_start_timeout_s)
    live: int = 0  # the version the ensemble routes to; 0: none yet
    live_since_unix: float = 0.0  # when it started to serve (a rollback restarts the clock)
    live_run_id: str = ""  # the run that put it live (a promotion, a rollback)
    previous: int = 0  # the version live before it: what a rollback returns to, and retention keeps
    state: str = "new"  # new | serving | stopped
    versions: list[Version] = field(default_factory=list)
    supervisor: dict[str, Any] = field(default_factory=dict)  # runners.Service of the supervisor
    # The host the supervisor runs on (hosts.this_host()): only there can its pid be checked or
    # signalled, and its loopback be reached. "" in records from before hosts were recorded.
    machine: str = ""
    server_pid: int = 0  # the tritonserver the supervisor runs now
    restarts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.host)}:{self.grpc_port}"

    def version(self, number: int) -> Version:
        for version in self.versions:
            if version.version == number:
                return version
        raise NonRetryableError(f"deployment {self.name} has no version {number} "
                                f"(kept: {', '.join(str(v.version) for v in self.versions) or 'none'})")

    def live_version(self) -> Version | None:
        return self.version(self.live) if self.live else None

    def next_number(self) -> int:
        return max((v.version for v in self.versions), default=0) + 1

    def event(self, action: str, **details: Any) -> None:
        self.history.append({"unix": round(time.time(), 3), "action": action, **details})
        del self.history[:-HISTORY_KEPT]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        versions = [Version(**v) for v in data.get("versions", [])]
        return cls(**{**data, "versions": versions})


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - what a client dials


def deployment_dir(root: Path, name: str) -> Path:
    if not NAME.match(name):
        raise NonRetryableError(f"deployment name {name!r}: use lowercase letters, digits, '.', '_' "
                                "and '-' (at most 63), starting with a letter or digit")
    return Path(root) / "deployments" / name


def read(directory: Path) -> Deployment | None:
    path = Path(directory) / RECORD
    try:
        return Deployment.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise NonRetryableError(f"{path} is not a deployment record ({exc}); move it aside to start over") from None


def write(directory: Path, deployment: Deployment) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scratch = directory / f".{RECORD}.{os.getpid()}.tmp"
    scratch.write_text(json.dumps(deployment.to_dict(), indent=2) + "\n")
    os.replace(scratch, directory / RECORD)


@contextlib.contextmanager
def _locked(path: Path, *, blocking: bool) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def updating(directory: Path) -> Iterator[Deployment | None]:
    """The record to change in place (None if there is none yet); written back on success."""
    with _locked(Path(directory) / LOCK, blocking=True):
        deployment = read(directory)
        yield deployment
        if deployment is not None:
            write(directory, deployment)


@contextlib.contextmanager
def operation(directory: Path, what: str) -> Iterator[None]:
    """Hold the deployment for one promotion, rollback or stop; refuse a second one at once."""
    with _locked(Path(directory) / OPERATION_LOCK, blocking=False) as held:
        if not held:
            raise DeploymentBusy(f"{what}: another promotion, rollback or stop of {Path(directory).name} "
                                 "is running; try again when it has finished")
        yield
