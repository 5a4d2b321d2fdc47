"""What an engine was built for: the runtime that built it, the image it ran in, and the GPU.

A TensorRT engine is a plan for one TensorRT(-LLM) version on one GPU type: served by another
release it dies in ``Serialization assertion stdVersionRead == kSERIALIZATION_VERSION``, on
another GPU in "plan file generated on an incompatible device". Both are among the errors
upstream's users report most, and both surface deep in tritonserver's log. So the build target
is part of an engine's identity (two hosts of different GPU types keep an engine each) and is
recorded in its config, and start_server compares it with the target of the host that would
serve it before tritonserver ever loads the plan.

Each backend reads its own target (``Backend.build_target``): trtllm through the spec's runner
(the release's wheel and ``nvidia-smi`` inside the image), the torch twin in its own process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llm_deploy.errors import NonRetryableError

CPU = "cpu"


class RuntimeMismatch(NonRetryableError):
    """Where the step runs carries another runtime release than the spec names."""


@dataclass(frozen=True)
class BuildTarget:
    runtime: str  # what builds and loads the engine: "tensorrt_llm 1.2.1", "torch 2.13.0"
    image: str  # the container image the steps ran in; "" for the worker's own environment
    gpu: str  # the GPU's name as NVML reports it, or "cpu"
    compute_capability: str = ""  # "9.0"; "" on cpu

    def identity(self) -> str:
        """The part of an engine's content address that names its target."""
        return f"{self.runtime}|{self.image}|{self.gpu}|{self.compute_capability}"

    def describe(self) -> str:
        where = f" in {self.image}" if self.image else " on the worker itself"
        gpu = self.gpu if self.gpu == CPU else f"{self.gpu} (compute capability {self.compute_capability})"
        return f"{self.runtime}{where}, for {gpu}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> BuildTarget:
        return cls(str(record["runtime"]), str(record["image"]), str(record["gpu"]),
                   str(record.get("compute_capability", "")))

    def differences(self, other: BuildTarget) -> list[str]:
        """What would stop an engine built for ``self`` from loading on ``other``."""
        found = []
        if self.runtime != other.runtime:
            found.append("runtime")
        if self.image != other.image:
            found.append("image")
        if (self.gpu, self.compute_capability) != (other.gpu, other.compute_capability):
            found.append("GPU")
        return found


def gpu_of(rows: list[tuple[str, str]], *, wanted: str = "") -> tuple[str, str]:
    """The one GPU type of the devices a step uses, from (name, compute capability) rows. An engine is built for one type, so mixed types among them are refused."""
    if not rows:
        raise NonRetryableError(
            "nvidia-smi lists no GPU where the step runs: a TensorRT engine must be built and served on a GPU "
            "(check the worker's or the container's GPU access, e.g. docker's --gpus)")
    kinds = sorted(set(rows))
    if len(kinds) > 1:
        listed = "; ".join(f"{name} (compute capability {cap})" for name, cap in kinds)
        raise NonRetryableError(
            f"the GPUs{' ' + wanted if wanted else ''} are of different types ({listed}): an engine is built for "
            "one GPU type, so set gpu_device_ids to GPUs of one type")
    return kinds[0]


def require_same_target(engine_dir: str, built: BuildTarget | None, here: BuildTarget) -> None:
    """Refuse to serve an engine on a target it was not built for, naming both and the remedy."""
    if built is None:
        raise NonRetryableError(
            f"refusing to serve {engine_dir}: it records no build target (built by an llm-deploy older than "
            f"build targets), so nothing says it loads under {here.describe()}; delete it and rerun deploy_llm "
            "with the same params to build it here")
    differences = built.differences(here)
    if differences:
        raise NonRetryableError(
            f"refusing to serve {engine_dir}: it was built by {built.describe()}, and this server would load it "
            f"with {here.describe()} (another {' and '.join(differences)}). A TensorRT engine loads only under the "
            "TensorRT-LLM release and on the GPU type that built it. Rebuild it for this host: run deploy_llm with "
            "the same params on a worker of this GPU type and image (build_engine builds an engine for that target "
            "beside this one), or serve from a worker matching the engine")
