"""Run a registered step where the spec's backend and runner say: in this process, or whole
through the runner (``python -m llm_deploy.cli`` in a container of the run's image).

Either way the caller gets the step's XCom record back, or the exception the step raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_deploy.backends.registry import backend_for
from llm_deploy.records import to_xcom
from llm_deploy.runners import runner_for
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.registry import STEPS
from llm_deploy.steps.through_runner import run_python_step


def execute(name: str, spec: DeploySpec, *inputs: Mapping[str, Any] | None, token: str | None = None,
            run_id: str | None = None, admin_key_for: Any = None) -> Any:
    """``admin_key_for``: an ``admin_guard.KeyFor`` for the steps that need an admin key (never
    portable: they stay in the worker, so the key is never sent to a runner's step command)."""
    step = STEPS[name]
    backend = backend_for(spec)
    if step.portable and backend.runs_python_steps_in_runner(spec):
        secrets = {"HF_TOKEN": token} if token and step.needs_token else {}
        image = spec.docker_image or backend.default_image(spec)
        return run_python_step(runner_for(spec, default_image=image), name, spec, *inputs,
                               run_id=run_id if step.needs_run_id else None, secret_env=secrets)
    return to_xcom(step.call(spec, inputs, token=token, run_id=run_id, admin_key_for=admin_key_for))
