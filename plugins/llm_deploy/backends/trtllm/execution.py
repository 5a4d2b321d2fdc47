"""Running upstream's commands for a spec: where its files are, which runner, which GPUs.

Only upstream's commands go through the runner (``local``: a worker inside the NGC image;
``docker``: a container of the release's image per command). The Python steps around them
(download, render, benchmark) run in the worker, so the NGC image needs nothing of ours.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llm_deploy import volume
from llm_deploy.backends.trtllm import commands, require_worker, validation
from llm_deploy.backends.trtllm.layout import TrtllmPaths, default_backend_dir
from llm_deploy.backends.trtllm.releases import Release
from llm_deploy.errors import NonRetryableError
from llm_deploy.runners import runner_for
from llm_deploy.runners.command import NO_GPU, GpuRequest, Runner, StepCommand, VolumePath, sequence_argv
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def runner(spec: DeploySpec) -> Runner:
    """The spec's runner; with docker, the release's NGC image unless the spec names another."""
    return runner_for(spec, default_image=validation.release_of(spec).container_image)


def backend_dir(spec: DeploySpec) -> Path:
    return Path(default_backend_dir(spec))


def wheel_dir(spec: DeploySpec) -> Path:
    """build_wheel.py --dist_dir: on the volume, so every later container can install it."""
    return spec.root / "wheels" / f"tensorrt_llm-{spec.trtllm_release}"


def paths_for(spec: DeploySpec, **dirs: str) -> TrtllmPaths:
    values = {"backend_dir": str(backend_dir(spec)), "hf_checkpoint_dir": "", "engine_dir": "",
              "model_repo_dir": "", "wheel_dir": str(wheel_dir(spec))}
    return TrtllmPaths(**{**values, **dirs})


def gpus(spec: DeploySpec) -> GpuRequest:
    return GpuRequest.for_world_size(spec.world_size, spec.gpu_device_ids)


def preflight(spec: DeploySpec, runner: Runner, step: str) -> Release:
    """Bad input and a worker that cannot run the step are refused before anything runs."""
    release = validation.validate_spec(spec)
    if runner.name == "local":
        require_worker(step)
    return release


def wheel_prefix(spec: DeploySpec) -> list[list[str]]:
    """Commands that make the built wheel importable in a fresh container (0.5.0 only)."""
    release = validation.release_of(spec)
    if release.wheel.kind == "pip":
        return []  # the release's NGC image (or the worker, after build_wheel) carries it
    wheels = wheel_dir(spec)
    if not volume.is_published(wheels):
        raise NonRetryableError(
            f"no tensorrt_llm {release.name} wheel at {wheels}: build_wheel has not run for "
            f"trtllm_release={release.name!r} on this engines volume; run the whole DAG"
        )
    return commands.install_built_wheel(spec, paths_for(spec))


def run_commands(runner: Runner, spec: DeploySpec, name: str, argvs: list[list[str]], *, writes: list[Path],
                 timeout_s: float, gpu: bool) -> list[str]:
    """Run ``argvs`` in order as one command (one container) and return its output lines."""
    command = StepCommand(
        name=name,
        argv=sequence_argv(argvs, python=commands.PYTHON),
        env={"PYTHONUNBUFFERED": "1"},
        volume_paths=(VolumePath(str(spec.root), writable=False),
                      *(VolumePath(str(path), writable=True) for path in writes)),
        gpus=gpus(spec) if gpu else NO_GPU,
        timeout_s=timeout_s,
    )
    log.info("running %s", command.describe())
    result = runner.run(command)  # CommandFailed (retryable) carries the command's last lines
    log.info("%s finished in %.1fs", name, result.seconds)
    return result.lines
