"""Tutorial step "install the TensorRT-LLM python package" (scripts/build_wheel.py)."""

from __future__ import annotations

from llm_deploy.backends import trtllm
from llm_deploy.errors import SkipStep
from llm_deploy.spec import DeploySpec


def build_wheel(spec: DeploySpec) -> dict:
    if spec.backend == "torch":
        raise SkipStep(
            "backend 'torch' runs on the PyTorch already installed on this worker; there is no "
            "TensorRT-LLM wheel to build"
        )
    trtllm.require_worker("build_wheel")
    raise AssertionError("unreachable: require_worker raises until the trtllm runner exists")
