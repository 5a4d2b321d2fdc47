"""How a deployment's tritonserver is run: the backend's answer, kept on the volume with the record.

Each backend says what its server is (``Backend.deployment_launch``): the twin's tritonserver as
a process of the worker, under our supervisor; a TensorRT-LLM release's tritonserver either the
same way (a worker inside the release's NGC image) or as a container of that image that Docker
restarts (``--restart unless-stopped``). What it says is written to ``server.json`` at each start,
so a rollback or a restart from a DAG that has no build spec (rollback_llm_deployment) runs the
server exactly as the promotion did.

The command names the live repository and the ports, in explicit model-control mode; the
``--load-model`` options for the live version are added where the server starts, from the
record at that moment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm_deploy.deployment.container_entry import SERVER_SPEC
from llm_deploy.runners.command import GpuRequest

RUNNERS = ("local", "docker")


@dataclass(frozen=True)
class ServerLaunch:
    runner: str  # "local": a supervised process of the worker; "docker": a restarting container
    argv: tuple[str, ...]  # tritonserver (after its launcher, if any), without --load-model
    env: dict[str, str] = field(default_factory=dict)  # on top of the worker's (local) or image's
    # Commands run before each start, in order (0.5.0: install the built wheel in a fresh container).
    setup: tuple[tuple[str, ...], ...] = ()
    workdir: str = ""
    # docker only
    image: str = ""
    gpu_count: int = 0
    gpu_device_ids: tuple[str, ...] = ()
    engines_root: str = ""
    engines_volume: str = ""

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"ServerLaunch.runner must be one of {RUNNERS}, not {self.runner!r}")
        if not self.argv:
            raise ValueError("ServerLaunch.argv is empty")
        if self.runner == "docker" and not (self.image and self.engines_root):
            raise ValueError("a docker ServerLaunch needs its image and engines_root")

    @property
    def gpus(self) -> GpuRequest:
        return GpuRequest(count=self.gpu_count, device_ids=self.gpu_device_ids)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ServerLaunch:
        values = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        values["argv"] = tuple(values["argv"])
        values["setup"] = tuple(tuple(command) for command in values.get("setup", ()))
        values["gpu_device_ids"] = tuple(values.get("gpu_device_ids", ()))
        return cls(**values)


def write(directory: Path, launch: ServerLaunch, *, ensemble: str, http_url: str) -> None:
    """Write ``server.json``: the launch, the endpoint clients call and where readiness is asked."""
    path = Path(directory) / SERVER_SPEC
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps({"launch": launch.to_json(), "ensemble": ensemble, "http_url": http_url}, indent=2))
    scratch.replace(path)


def read(directory: Path) -> ServerLaunch | None:
    """The launch of the deployment's last start; None if it never started."""
    try:
        data = json.loads((Path(directory) / SERVER_SPEC).read_text())
    except FileNotFoundError:
        return None
    return ServerLaunch.from_json(data["launch"])
