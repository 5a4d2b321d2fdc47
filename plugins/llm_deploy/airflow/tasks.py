"""The thin layer between Airflow tasks and plain-Python steps.

``run_step`` builds the DeploySpec from the run's params (so bad input fails the first task that
sees it, before any work, and never retries), runs the registered step where the backend and
runner say (``llm_deploy.steps.execute``), and returns the step's record as a small JSON-able
XCom value. ``task_outcome`` maps a step's exceptions onto Airflow's, through the one outcome
table in ``llm_deploy.errors``: non-retryable errors (bad params included) fail the task without
retries; SkipStep skips it with the reason in the log; anything else is retried with exponential
backoff by the task's retry policy. Airflow's exceptions appear nowhere but under ``airflow/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from llm_deploy.errors import outcome_of
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


def run_step(name: str, *inputs: Any, spec: DeploySpec | None = None) -> Any:
    """Run tutorial step ``name`` for this run; return its XCom record.

    ``spec``: a config matrix entry's spec instead of the run's params. The Hub token is read from
    the spec's connection only for a step that downloads; the run id goes to steps that write
    run reports.
    """
    from airflow.sdk import get_current_context

    from llm_deploy.steps.execute import execute
    from llm_deploy.steps.registry import STEPS

    context = get_current_context()
    spec = spec or current_spec(context)
    step = STEPS[name]
    token = hf_token(spec) if step.needs_token else None
    return task_outcome(lambda: execute(name, spec, *inputs, token=token, run_id=context["run_id"],
                                        admin_key_for=triton_admin_key if step.needs_admin_key else None))


def task_outcome(call: Callable[[], Any]) -> Any:
    """Call plain-Python step logic; its result as XCom, its exceptions as Airflow's outcomes."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from llm_deploy.records import to_xcom

    try:
        return to_xcom(call())
    except Exception as exc:
        outcome = outcome_of(exc)
        if outcome == "skip":
            log.info("skipped: %s", exc)
            raise AirflowSkipException(str(exc)) from None
        if outcome == "non_retryable":
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
        raise


# A mapped server task's label in the grid: the host it ran on.
ON_HOST = "{{ ti.hostname }}"


def next_to(server: dict) -> dict:
    """The server record a task was handed, once it is sure to run on the server's host."""
    from airflow.sdk import get_current_context

    from llm_deploy.airflow.locality import require_same_host

    task_outcome(lambda: require_same_host(get_current_context()["ti"].task_id, server))
    return server


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


def hf_token(spec: DeploySpec) -> str | None:
    """The Hub token from the spec's Airflow connection, only for sources that use the Hub."""
    if spec.model_source != "huggingface":
        return None
    from llm_deploy.airflow.hf_hook import HuggingFaceTokenHook

    return HuggingFaceTokenHook(hf_conn_id=spec.hf_conn_id).get_token()


def triton_admin_key(host: str, conn_id: str):
    """``admin_guard.KeyFor`` in a task: the admin key of a server on a non-loopback ``host``,
    from Airflow connection ``conn_id``; None for loopback, which nothing else can reach. A
    missing connection: NonRetryableError saying what to create."""
    from llm_deploy.server.admin_guard import is_loopback

    if is_loopback(host):
        return None
    from llm_deploy.airflow.triton_admin_hook import TritonAdminKeyHook

    return TritonAdminKeyHook(triton_admin_conn_id=conn_id).get_key()


def announce_deployment(result: dict) -> dict:
    """Put a promotion's or rollback's outcome in the deployments Asset event's extra."""
    from airflow.sdk import get_current_context

    from llm_deploy.airflow.assets import DEPLOYMENTS

    get_current_context()["outlet_events"][DEPLOYMENTS].extra = {
        key: result[key] for key in ("deployment", "action", "live_version", "previous_version", "http_url")}
    return result


def deployment_spec(context: dict[str, Any] | None = None) -> DeploySpec:
    """The spec of a DAG that acts on a deployment by name (rollback, stop): only the params
    that name it are read, everything else keeps its default."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    params = (context or get_current_context())["params"]
    try:
        return DeploySpec.from_params({key: params[key] for key in DEPLOYMENT_PARAMS if key in params})
    except SpecError as exc:
        raise AirflowFailException(str(exc)) from None


DEPLOYMENT_PARAMS = ("engines_root", "deployment_name")


def locate_deployment(spec: DeploySpec | None = None) -> list[dict]:
    """The find_deployment task: the host that serves the run's deployment, as a list of one
    record that the task acting on it is mapped over (so that it runs there: airflow/locality.py).
    A run that does not promote names no host: its server may start anywhere."""
    from llm_deploy.steps.promote import deployment_host

    spec = spec or deployment_spec()
    if not spec.promote:
        return [{"deployment": spec.deployment, "hostname": ""}]
    return [task_outcome(lambda: deployment_host(spec))]
