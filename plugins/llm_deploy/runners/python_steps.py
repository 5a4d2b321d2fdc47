"""Python steps (the torch backend's) as runner commands: ``python -m llm_deploy.cli <step> ...``.

Each step declares what it touches on the engines volume: the whole volume read-only (so it can
read any upstream output), plus the one directory it publishes into, writable. The docker runner
turns that into mounts; the local runner creates the writable directory. Results come back as the
step's own record, and its failure as the exception it would have raised in-process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llm_deploy import volume
from llm_deploy.cli import STEPS, parse_outcome
from llm_deploy.errors import NonRetryableError, SkipStep, StepError
from llm_deploy.runners.command import (
    NO_GPU,
    CommandFailed,
    CommandResult,
    GpuRequest,
    StepCommand,
    VolumePath,
)
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


class Runner(Protocol):
    name: str
    python: str  # the interpreter that runs llm_deploy.cli where the runner runs commands

    def run(self, command: StepCommand) -> CommandResult: ...


@dataclass(frozen=True)
class StepNeeds:
    writes: Callable[[DeploySpec, list[dict]], list[Path]]  # dirs the step publishes into
    gpu: bool = False  # holds a GPU in production (the DAG's "gpu" pool tasks)
    network_host: bool = False  # talks to the server on the worker's loopback


def _checkpoint_parent(spec: DeploySpec, inputs: list[dict]) -> list[Path]:
    if spec.model_source == "local":
        return []  # a user's local checkpoint is only ever read
    return [volume.checkpoint_dir(spec).parent]


def _engine_parent(spec: DeploySpec, inputs: list[dict]) -> list[Path]:
    from llm_deploy.steps.build_engine import weights_digest

    return [volume.engine_dir(spec, weights_digest(inputs[0])).parent]


def _verified_engine_parent(spec: DeploySpec, inputs: list[dict]) -> list[Path]:
    # verify_engine marks the engine verified (a file in its dir) and retention removes older
    # engines of the model beside it: the model's engines dir, nothing else.
    return [Path(inputs[0]["engine_dir"]).parent]


def _model_repo_parent(spec: DeploySpec, inputs: list[dict]) -> list[Path]:
    return [volume.model_repo_dir(spec).parent]


def _runs_dir(spec: DeploySpec, inputs: list[dict]) -> list[Path]:
    return [spec.root / "runs" / spec.engine_hash]


NEEDS: dict[str, StepNeeds] = {
    "download_weights": StepNeeds(_checkpoint_parent),
    "build_wheel": StepNeeds(lambda spec, inputs: [], gpu=True),
    "build_engine": StepNeeds(_engine_parent, gpu=True),
    "verify_engine": StepNeeds(_verified_engine_parent, gpu=True),
    "render_model_repo": StepNeeds(_model_repo_parent),
    "benchmark": StepNeeds(_runs_dir, network_host=True),
}
assert set(NEEDS) == set(STEPS), "every CLI step declares what it needs"


def gpu_request(spec: DeploySpec, step_needs_gpu: bool) -> GpuRequest:
    """GPUs for a step: trtllm always (world_size, or the given ids); torch only when ids are given,
    since the twin runs on CPU unless pointed at GPUs."""
    if not step_needs_gpu:
        return NO_GPU
    if spec.backend == "torch" and not spec.gpu_device_ids:
        return NO_GPU
    return GpuRequest.for_world_size(spec.world_size, spec.gpu_device_ids)


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
    needs = NEEDS[step]
    records = [dict(record) for record in inputs]
    argv = [python, "-m", "llm_deploy.cli", step, "--spec-json", spec.model_dump_json(),
            "--inputs-json", json.dumps(records)]
    if run_id is not None:
        argv += ["--run-id", run_id]
    paths = [VolumePath(str(spec.root), writable=False)]
    paths += [VolumePath(str(path), writable=True) for path in needs.writes(spec, records)]
    return StepCommand(
        name=step,
        argv=tuple(argv),
        # Unbuffered, so the log shows progress as it happens; offline unless the step downloads.
        env={"PYTHONUNBUFFERED": "1", **({} if step == "download_weights" else {"HF_HUB_OFFLINE": "1"})},
        secret_env=dict(secret_env or {}),
        volume_paths=tuple(paths),
        gpus=gpu_request(spec, needs.gpu),
        network_host=needs.network_host,
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
    if status == "skip":
        raise SkipStep(outcome["error"])
    if status == "non_retryable":
        raise NonRetryableError(outcome["error"])
    raise StepError(f"{step} failed on the {runner.name} runner: {outcome['error']}")
