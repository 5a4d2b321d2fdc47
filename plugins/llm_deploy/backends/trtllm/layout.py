"""Where the trtllm backend's inputs and outputs live, as the commands see them.

Paths are kept as the strings they are given (a trailing "/" included, as the tutorial writes
``--output_dir /engines/1-gpu/``), because they end up verbatim in argv and in config.pbtxt.
Inside a container they are the container's paths; the runner maps volumes, not these strings.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from llm_deploy.spec import DeploySpec, inside_volume

TRTLLM_SUBMODULE = "tensorrt_llm"


@dataclass(frozen=True)
class TrtllmPaths:
    backend_dir: str  # clone of tensorrtllm_backend (its TensorRT-LLM submodule in tensorrt_llm/)
    hf_checkpoint_dir: str  # the Hugging Face checkpoint download_weights produced
    engine_dir: str  # where the engine is (to be) built
    model_repo_dir: str  # the filled inflight_batcher_llm repository Triton serves
    # convert_checkpoint.py's output, trtllm-build's input (convert_checkpoint_trtllm_build flow).
    converted_checkpoint_dir: str = ""
    # build_wheel.py --dist_dir (WheelSource "build"); empty = <tensorrt_llm>/build, upstream's default.
    wheel_dir: str = ""

    @property
    def trtllm_dir(self) -> str:
        return posixpath.join(self.backend_dir, TRTLLM_SUBMODULE)

    @property
    def wheel_output_dir(self) -> str:
        return self.wheel_dir or posixpath.join(self.trtllm_dir, "build")

    def in_trtllm(self, relative: str) -> str:
        return posixpath.join(self.trtllm_dir, relative)

    def in_backend(self, relative: str) -> str:
        return posixpath.join(self.backend_dir, relative)


def default_backend_dir(spec: DeploySpec) -> str:
    """spec.backend_repo_dir on the volume, or src/tensorrtllm_backend-<release> under engines_root."""
    if spec.backend_repo_dir:
        return str(inside_volume(spec.root, spec.backend_repo_dir, param="backend_repo_dir"))
    return str(spec.root / "src" / f"tensorrtllm_backend-{spec.trtllm_release}")
