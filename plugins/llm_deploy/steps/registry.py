"""The tutorial's steps, each declared once: its function, what it writes on the engines volume,
whether it holds a GPU, and what it needs from the run besides its spec and upstream records.

The DAGs (through ``llm_deploy.airflow.tasks``), ``python -m llm_deploy.cli`` and the runners
all read this table. Every step is called the same way, ``call(spec, inputs, ...)``: the spec,
the Hugging Face token if the step downloads, the upstream records in order, the run id if the
step writes run reports. Functions are named as "module:function" and imported only when a step
runs, so reading the table (the DAG parse does) stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec

Writes = Callable[[DeploySpec, Sequence[dict]], list[Path]]


def _nothing(spec: DeploySpec, inputs: Sequence[dict]) -> list[Path]:
    return []


def _checkpoints(spec: DeploySpec, inputs: Sequence[dict]) -> list[Path]:
    if spec.model_source == "local":
        return []  # a user's local checkpoint is only ever read
    return [volume.checkpoint_dir(spec).parent]


def _engines(spec: DeploySpec, inputs: Sequence[dict]) -> list[Path]:
    return [volume.model_engines_dir(spec)]


def _verified_engines(spec: DeploySpec, inputs: Sequence[dict]) -> list[Path]:
    # verify_engine marks the engine verified (a file in its dir) and retention removes older
    # engines of the model beside it: the model's engines dir, nothing else (and nothing at all
    # in a flow without an engine).
    return [Path(inputs[0]["engine_dir"]).parent] if inputs and inputs[0] else []


def _model_repos(spec: DeploySpec, inputs: Sequence[dict]) -> list[Path]:
    return [volume.model_repo_dir(spec).parent]


def _runs(spec: DeploySpec, inputs: Sequence[dict]) -> list[Path]:
    return [spec.root / "runs" / spec.engine_hash]


def _deployment(spec: DeploySpec, inputs: Sequence[dict]) -> list[Path]:
    return [spec.root / "deployments" / spec.deployment]


@dataclass(frozen=True)
class Step:
    name: str
    target: str  # "module:function"
    writes: Writes = field(default=_nothing)  # the volume dirs it publishes into
    gpu: bool = False  # holds a GPU in production (the DAG's "gpu" pool tasks)
    network_host: bool = False  # talks to the server on the worker's loopback
    # Acts on a server that runs on one host (the run's, or a deployment's): runs on that host
    # (airflow/locality.py; the DAG names the task whose record says which).
    next_to_server: bool = False
    needs_token: bool = False  # the Hub token, second argument (download_weights)
    needs_run_id: bool = False  # the run id, last argument (steps that write run reports)
    # Where the admin key of a server on a non-loopback host comes from (keyword ``admin_key_for``,
    # an ``admin_guard.KeyFor``): for the steps that start a server or call its admin APIs. The key
    # is never a param nor in a record, and these steps are never portable: it stays in the worker.
    needs_admin_key: bool = False
    # Whether the dispatcher may send it whole to the runner (``python -m llm_deploy.cli`` in a
    # container): the server's start and stop hold the worker's process group, and the benchmark
    # runs beside them, so those stay in the worker.
    portable: bool = True

    @property
    def function(self) -> Callable[..., Any]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def call(self, spec: DeploySpec, inputs: Sequence[Any] = (), *, token: str | None = None,
             run_id: str | None = None, admin_key_for: Any = None) -> Any:
        args: list[Any] = [spec]
        if self.needs_token:
            args.append(token)
        args.extend(inputs)
        if self.needs_run_id:
            if not run_id:
                raise NonRetryableError(f"{self.name} needs the run id")
            args.append(run_id)
        if self.needs_admin_key:
            return self.function(*args, admin_key_for=admin_key_for)
        return self.function(*args)


STEPS: dict[str, Step] = {step.name: step for step in (
    Step("download_weights", "llm_deploy.steps.download_weights:download_weights", _checkpoints, needs_token=True),
    Step("build_wheel", "llm_deploy.steps.build_wheel:build_wheel", gpu=True),
    Step("build_engine", "llm_deploy.steps.build_engine:build_engine", _engines, gpu=True),
    Step("verify_engine", "llm_deploy.steps.verify_engine:verify_engine", _verified_engines, gpu=True),
    Step("render_model_repo", "llm_deploy.steps.render_model_repo:render_model_repo", _model_repos),
    # Beside the deployment it is compared with and promoted into, when one serves.
    Step("start_server", "llm_deploy.steps.serve:start_server", _runs, gpu=True, network_host=True,
         next_to_server=True, needs_run_id=True, needs_admin_key=True, portable=False),
    # In the worker, next to the server it measures, whichever runner built the engine.
    Step("benchmark", "llm_deploy.steps.benchmark:benchmark", _runs, network_host=True, next_to_server=True,
         needs_run_id=True, portable=False),
    Step("stop_server", "llm_deploy.steps.serve:stop_server", network_host=True, next_to_server=True,
         portable=False),
    # The deployment's long-running server lives on the worker, next to the qualification server.
    Step("compare_with_live", "llm_deploy.steps.promote:compare_with_live", network_host=True,
         next_to_server=True, needs_run_id=True, portable=False),
    Step("promote", "llm_deploy.steps.promote:promote", _deployment, network_host=True, next_to_server=True,
         needs_run_id=True, needs_admin_key=True, portable=False),
    Step("rollback", "llm_deploy.steps.promote:rollback", _deployment, network_host=True, next_to_server=True,
         needs_run_id=True, needs_admin_key=True, portable=False),
    Step("stop_deployment", "llm_deploy.steps.promote:stop_deployment", _deployment, network_host=True,
         next_to_server=True, needs_run_id=True, portable=False),
    # On any worker but the gone host's: it only edits the record on the shared volume.
    Step("forget_host", "llm_deploy.steps.promote:forget_host", _deployment, needs_run_id=True, portable=False),
)}
