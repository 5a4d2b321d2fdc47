"""trtllm's build target: the tensorrt_llm and TensorRT of the release's image, and its GPU type.

Read through the spec's runner, where upstream's commands run (``target_probe``): the image a
step runs in and the GPUs it is given are the ones an engine is built for or loaded on.
"""

from __future__ import annotations

import json
import logging

from llm_deploy.backends.trtllm import commands, target_probe
from llm_deploy.backends.trtllm.execution import gpus, preflight, runner
from llm_deploy.build_target import BuildTarget, RuntimeMismatch, gpu_of
from llm_deploy.errors import NonRetryableError
from llm_deploy.runners.command import Runner, StepCommand
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 300  # a container start and nvidia-smi; only stops a hung driver


def build_target(spec: DeploySpec, step: str) -> BuildTarget:
    on = runner(spec)
    release = preflight(spec, on, step)  # validates the spec against its release row
    image = getattr(on, "image", "")
    found = _probe(on, spec)
    installed = found["tensorrt_llm"]
    if release.wheel.kind == "build":
        # Our own build of the release's source, installed into each command's environment.
        installed = installed or release.wheel.version
    elif not installed:
        # A local worker before build_wheel ran: the release's wheel is what it will install.
        installed = release.wheel.version
    if installed.split("+")[0] != release.wheel.version:
        where = f"image {image}" if image else "this worker"
        raise RuntimeMismatch(
            f"{step}: {where} carries tensorrt_llm {installed}, but trtllm_release is {release.name}: an engine "
            f"built or served there would not be {release.name}'s. Use the release's own image "
            f"({release.container_image}: leave docker_image empty) or set trtllm_release to {installed.split('+')[0]}")
    runtime = f"tensorrt_llm {installed}" + (f", TensorRT {found['tensorrt']}" if found["tensorrt"] else "")
    if not image and found["triton_image_version"]:
        image = f"nvcr.io/nvidia/tritonserver:{found['triton_image_version']}-trtllm-python-py3"
    gpu, capability = gpu_of([tuple(row) for row in found["gpus"]], wanted=f"of {step}")
    target = BuildTarget(runtime=runtime, image=image, gpu=gpu, compute_capability=capability)
    log.info("%s: build target %s", step, target.describe())
    return target


def _probe(on: Runner, spec: DeploySpec) -> dict:
    command = StepCommand(name="build_target", argv=(commands.PYTHON, "-c", target_probe.source()),
                          env={"PYTHONUNBUFFERED": "1"}, gpus=gpus(spec), timeout_s=PROBE_TIMEOUT_S)
    lines = on.run(command).lines
    for line in reversed(lines):
        if line.strip().startswith(target_probe.RESULT_PREFIX):
            return json.loads(line.strip()[len(target_probe.RESULT_PREFIX):])
    raise NonRetryableError(f"the build-target probe printed no answer; its last lines: {lines[-10:]}")
