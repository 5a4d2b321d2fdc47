"""Tutorial step "install the TensorRT-LLM python package" (scripts/build_wheel.py).

For the trtllm backend: clone tensorrtllm_backend at the release's pinned commit onto the engines
volume (once per release), then build the wheel there (0.5.0) or pip-install the release's wheel,
through the runner the spec names (backends/trtllm/pipeline.py).
"""

from __future__ import annotations

from llm_deploy.errors import SkipStep
from llm_deploy.spec import DeploySpec


def build_wheel(spec: DeploySpec):
    if spec.backend == "torch":
        raise SkipStep(
            "backend 'torch' runs on the PyTorch already installed on this worker; there is no "
            "TensorRT-LLM wheel to build"
        )
    from llm_deploy.backends.trtllm import pipeline
    from llm_deploy.runners import runner_for

    return pipeline.build_wheel(spec, runner_for(spec))
