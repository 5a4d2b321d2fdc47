"""The backends by the name a spec's ``backend`` param gives them."""

from __future__ import annotations

from llm_deploy.backends.base import Backend
from llm_deploy.backends.torch.backend import TorchBackend
from llm_deploy.backends.trtllm.backend import TrtllmBackend
from llm_deploy.spec import DeploySpec

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (TorchBackend(), TrtllmBackend())}


def backend_for(spec: DeploySpec) -> Backend:
    return BACKENDS[spec.backend]
