"""Tutorial step "install the TensorRT-LLM python package" (scripts/build_wheel.py).

The backend makes its runtime installable, or says there is nothing to build (the torch twin
runs on the PyTorch already installed), which skips the step.
"""

from __future__ import annotations

from llm_deploy.backends.registry import backend_for
from llm_deploy.records import WheelRecord
from llm_deploy.spec import DeploySpec


def build_wheel(spec: DeploySpec) -> WheelRecord:
    return backend_for(spec).build_wheel(spec)
