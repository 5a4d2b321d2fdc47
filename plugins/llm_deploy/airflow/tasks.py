"""The thin layer between Airflow tasks and plain-Python steps.

``run_step`` builds the DeploySpec from the run's params (so bad input fails the first task that
sees it, before any work, and never retries), calls the step, and turns the step's record into a
small JSON-able XCom value. Step exceptions map onto Airflow's: NonRetryableError and SpecError
fail the task without retries; SkipStep skips it with the reason in the log; anything else is
retried with exponential backoff by the task's retry policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from llm_deploy.errors import NonRetryableError, SkipStep
from llm_deploy.spec import DeploySpec, SpecError

log = logging.getLogger(__name__)


def current_spec(context: dict[str, Any] | None = None) -> DeploySpec:
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    params = (context or get_current_context())["params"]
    try:
        return DeploySpec.from_params(params)
    except SpecError as exc:
        raise AirflowFailException(str(exc)) from None


def run_step(step: Callable[..., Any], *args: Any, pass_run_id: bool = False,
             spec: DeploySpec | None = None) -> Any:
    """``spec``: a config matrix entry's spec instead of the run's params."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    spec = spec or current_spec(context)
    if pass_run_id:
        args = (*args, context["run_id"])
    return _task_outcome(lambda: step(spec, *args))


def run_pipeline_step(name: str, *inputs: Any, spec: DeploySpec | None = None) -> Any:
    """Run tutorial step ``name`` where the run's ``runner`` param says; return its XCom record.

    ``local``: the step function in this worker process. ``docker``: for the torch backend the
    same step as ``python -m llm_deploy.cli <name>`` in a container of the run's image
    (DockerOperator), with the engines volume mounted and the Hugging Face token passed as an
    environment variable; for trtllm the step runs here and sends only upstream's commands into
    containers of the release's NGC image, which carries nothing of ours. Either way the step's
    exceptions become the same Airflow outcomes.
    """
    from airflow.sdk import get_current_context

    from llm_deploy.cli import STEPS, load_step

    context = get_current_context()
    spec = spec or current_spec(context)  # a config matrix entry passes its own
    about = STEPS[name]
    run_id = context["run_id"] if about.takes_run_id else None
    token = hf_token(spec) if about.takes_token else None
    if spec.runner == "docker" and spec.backend == "torch":
        from llm_deploy.runners import run_python_step, runner_for

        secrets = {"HF_TOKEN": token} if token else {}
        return _task_outcome(lambda: run_python_step(runner_for(spec), name, spec, *inputs,
                                                     run_id=run_id, secret_env=secrets))
    args = [spec, *([token] if about.takes_token else []), *inputs, *([run_id] if about.takes_run_id else [])]
    return _task_outcome(lambda: load_step(name)(*args))


def find_cached_engine() -> dict | None:
    """The cache lookup task: records of a verified engine for the run's params, or None."""
    from llm_deploy.engine_cache import find_cached

    spec = current_spec()
    found = find_cached(spec, hf_token(spec))
    if found:
        log.info("cache hit: engine %s (spec hash %s) verified at %s: download_weights, build_engine and "
                 "verify_engine will be skipped; serving %s", found["engine"]["engine_id"], spec.engine_hash,
                 _when(found["verified"]["verified_unix"]), found["engine"]["engine_dir"])
    else:
        log.info("no verified engine for spec hash %s on the volume: building it", spec.engine_hash)
    return found


def skip_if_cached(cached: dict | None, step: str) -> None:
    """Skip a build step of a run whose engine find_cached_engine found verified."""
    from airflow.sdk.exceptions import AirflowSkipException

    if cached:
        engine = cached["engine"]
        raise AirflowSkipException(
            f"{step}: cache hit, engine {engine['engine_id']} (spec hash {current_spec().engine_hash}) was "
            f"verified at {_when(cached['verified']['verified_unix'])}; reusing {engine['engine_dir']}")


def _when(unix: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(unix, tz=timezone.utc).isoformat(timespec="seconds")


def _task_outcome(call: Callable[[], Any]) -> Any:
    """Call a step; its record as a small dict, its errors as Airflow's skip / fail-without-retry."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    try:
        result = call()
    except SkipStep as exc:
        log.info("skipped: %s", exc)
        raise AirflowSkipException(str(exc)) from None
    except NonRetryableError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
    return result.to_xcom() if hasattr(result, "to_xcom") else result


def hf_token(spec: DeploySpec) -> str | None:
    """The Hub token from the spec's Airflow connection, only for sources that use the Hub."""
    if spec.model_source != "huggingface":
        return None
    from llm_deploy.airflow.hf_hook import HuggingFaceTokenHook

    return HuggingFaceTokenHook(hf_conn_id=spec.hf_conn_id).get_token()
