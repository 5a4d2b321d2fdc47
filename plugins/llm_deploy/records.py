"""What each tutorial step hands to the next: small frozen records, stored as XCom dicts.

Big artifacts stay on the engines volume; a record names them (paths, ids, hashes) and carries
the few figures a person reads in the grid. Every record turns into its XCom value the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_deploy import volume
from llm_deploy.spec import DeploySpec


class Record:
    """A step's result; its XCom value is its fields as a dict."""

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass


def to_xcom(value: Any) -> Any:
    """A step's return value as XCom: records as dicts, anything else (already JSON-able) as it is."""
    return value.to_xcom() if isinstance(value, Record) else value


@dataclass(frozen=True)
class WheelRecord(Record):
    """build_wheel (trtllm): the backend clone and where the tensorrt_llm wheel lives."""

    backend_dir: str
    wheel_dir: str  # "" when the release's wheel comes from pip
    release: str
    reused: bool


@dataclass(frozen=True)
class EngineRecord(Record):
    engine_dir: str
    engine_id: str
    backend: str
    dtype: str
    bytes: int
    reused: bool


def engine_record(spec: DeploySpec, directory: Path, *, reused: bool) -> EngineRecord:
    """The build_engine record of an engine published on the volume (its size from its manifest)."""
    manifest = volume.read_manifest(directory) or {"files": {}}
    return EngineRecord(
        engine_dir=str(directory),
        engine_id=directory.name,
        backend=spec.backend,
        dtype=spec.dtype,
        bytes=sum(meta["bytes"] for meta in manifest["files"].values()),
        reused=reused,
    )


@dataclass(frozen=True)
class VerifyRecord(Record):
    engine_dir: str
    prompt: str
    output_text: str
    tokens: int
    engine_seconds: float
    reference_seconds: float


@dataclass(frozen=True)
class ModelRepoRecord(Record):
    model_repo: str
    models: list[str]
    decoupled: bool
    reused: bool


@dataclass(frozen=True)
class ServerRecord(Record):
    """A running tritonserver: where clients reach it, and what it takes to stop it."""

    pid: int
    pgid: int
    http_url: str
    grpc_url: str
    metrics_url: str
    log_path: str
    model_repo: str
    # The runner's record of the started server (``runners.Service``: its process group or its
    # container), which is what stops it.
    service: dict
    # The engine's lease file: retention leaves a served engine alone until stop_server.
    lease: str = ""
