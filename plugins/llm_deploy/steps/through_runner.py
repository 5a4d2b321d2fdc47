"""Whole Python steps as runner commands: ``python -m llm_deploy.cli <step> ...``.

How the torch backend's steps run with the docker runner. Each step declares (in the registry)
what it touches on the engines volume: the whole volume read-only (so it can read any upstream
output), plus the one directory it publishes into, writable. The docker runner
turns that into mounts; the local runner creates the writable directory. Results come back as the
step's own record, and its failure as the exception it would have raised in-process.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from collections.abc import Mapping
from typing import Any

from llm_deploy.backends.registry import backend_for
from llm_deploy.cli import parse_outcome
from llm_deploy.errors import StepError, raise_outcome
from llm_deploy.runners.command import (
    NO_GPU, RUNNER_IMAGE_ENV, CommandFailed, GpuRequest, Runner, StepCommand, VolumePath,
)
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.registry import STEPS

log = logging.getLogger(__name__)


def gpu_request(spec: DeploySpec, step_holds_gpu: bool) -> GpuRequest:
    return backend_for(spec).gpus(spec) if step_holds_gpu else NO_GPU


def python_step_command(
    step: str,
    spec: DeploySpec,
    *inputs: Mapping[str, Any],
    python: str = "python3",
    run_id: str | None = None,
    secret_env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> StepCommand:
    """The command that runs ``step`` through llm_deploy.cli, with its volume paths and GPUs."""
    declared = STEPS[step]
    records = [dict(record) for record in inputs]
    argv = [python, "-m", "llm_deploy.cli", step, "--spec-json", spec.model_dump_json(),
            "--inputs-json", json.dumps(records)]
    if run_id is not None:
        argv += ["--run-id", run_id]
    paths = [VolumePath(str(spec.root), writable=False)]
    paths += [VolumePath(str(path), writable=True) for path in declared.writes(spec, records)]
    return StepCommand(
        name=step,
        argv=tuple(argv),
        # Unbuffered, so the log shows progress as it happens; offline unless the step downloads.
        env={"PYTHONUNBUFFERED": "1", **({} if declared.needs_token else {"HF_HUB_OFFLINE": "1"})},
        secret_env=dict(secret_env or {}),
        volume_paths=tuple(paths),
        gpus=gpu_request(spec, declared.gpu),
        network_host=declared.network_host,
        timeout_s=timeout_s,
    )


def run_python_step(
    runner: Runner,
    step: str,
    spec: DeploySpec,
    *inputs: Mapping[str, Any],
    run_id: str | None = None,
    secret_env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Run the step on ``runner``; return its XCom record or raise what the step raised."""
    command = python_step_command(step, spec, *inputs, python=runner.python, run_id=run_id,
                                  secret_env=secret_env, timeout_s=timeout_s)
    if getattr(runner, "image", ""):
        command = replace(command, env={**command.env, RUNNER_IMAGE_ENV: runner.image})
    try:
        result = runner.run(command)
        lines = result.lines
    except CommandFailed as exc:
        lines = exc.lines
        outcome = parse_outcome(lines)
        if outcome is None:  # died before reporting (killed, OOM, missing module): the runner's error says why
            raise
    outcome = parse_outcome(lines)
    if outcome is None:
        raise StepError(f"{step}: {runner.name} runner finished without an outcome line; last output: {lines[-5:]}")
    status = outcome["status"]
    if status == "ok":
        return outcome["result"]
    if status == "failed":
        raise StepError(f"{step} failed on the {runner.name} runner: {outcome['error']}")
    raise_outcome(status, outcome["error"])
