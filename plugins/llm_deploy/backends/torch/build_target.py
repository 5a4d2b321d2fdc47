"""The twin's build target: torch's version, the image it runs in, and its device.

The twin's engine is the checkpoint cast to the serving dtype, which any torch on any device
loads; it records its target all the same, so that the twin runs the very checks production
runs (an engine per target, start_server refusing another's).
"""

from __future__ import annotations

import importlib.metadata
import os

from llm_deploy.build_target import CPU, BuildTarget, gpu_of
from llm_deploy.runners.command import RUNNER_IMAGE_ENV
from llm_deploy.spec import DeploySpec

# The docker and kubernetes runners' image for the twin's steps: one that carries torch and llm_deploy.
TORCH_IMAGE_ENV = "LLM_DEPLOY_TORCH_IMAGE"


def build_target(spec: DeploySpec, step: str) -> BuildTarget:
    image = ""
    if spec.runner in ("docker", "kubernetes"):  # in its container the step is told the image; outside it, the spec's
        image = os.environ.get(RUNNER_IMAGE_ENV) or spec.docker_image or os.environ.get(TORCH_IMAGE_ENV, "")
    runtime = f"torch {importlib.metadata.version('torch')}"
    if not spec.gpu_device_ids:  # the twin runs on CPU unless pointed at GPUs
        return BuildTarget(runtime=runtime, image=image, gpu=CPU)
    import torch

    rows = []
    for device in spec.gpu_device_ids.split(","):
        major, minor = torch.cuda.get_device_capability(int(device))
        rows.append((torch.cuda.get_device_name(int(device)), f"{major}.{minor}"))
    gpu, capability = gpu_of(rows, wanted=f"of {step} ({spec.gpu_device_ids})")
    return BuildTarget(runtime=runtime, image=image, gpu=gpu, compute_capability=capability)
