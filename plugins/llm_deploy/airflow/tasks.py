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


def run_step(step: Callable[..., Any], *args: Any, pass_run_id: bool = False) -> Any:
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    context = get_current_context()
    spec = current_spec(context)
    if pass_run_id:
        args = (*args, context["run_id"])
    try:
        result = step(spec, *args)
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
