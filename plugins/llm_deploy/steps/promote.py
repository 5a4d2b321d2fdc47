"""Tutorial step "serve it", made a deployment: gate the qualified candidate on the live version,
promote it, and (from their own DAGs) roll back or stop the deployment.

compare_with_live runs while the candidate's qualification server is still up (inside the
setup/teardown of start_server and stop_server); promote runs after that server is stopped, so
on a GPU the candidate's memory is free again before the live server loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_deploy.backends.registry import backend_for
from llm_deploy.deployment import lifecycle, record, server
from llm_deploy.deployment.comparison import Comparison, compare
from llm_deploy.deployment.lifecycle import DeploymentRecord, Settings
from llm_deploy.errors import NonRetryableError, SkipStep
from llm_deploy.server.admin_guard import KeyFor, key_for
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def deployment_dir(spec: DeploySpec) -> Path:
    return record.deployment_dir(spec.root, spec.deployment)


def compare_with_live(spec: DeploySpec, candidate: dict, run_id: str) -> Comparison:
    """Measure the candidate and the live version alike; the verdict promote reads."""
    _require_promotion(spec)
    directory = deployment_dir(spec)
    deployment = record.read(directory)
    if deployment is None or not deployment.live or not server.running(deployment):
        reason = (f"deployment {spec.deployment} serves no version now: the candidate becomes its live "
                  "version without a comparison")
        log.info("promotion gate: %s", reason)
        return Comparison(verdict="first", reason=reason, deployment=spec.deployment)
    if deployment.live_version().source_repo == candidate["model_repo"]:
        reason = (f"version {deployment.live} of {spec.deployment} already serves this model repository "
                  f"({candidate['model_repo']}): nothing new to promote")
        log.info("promotion gate: %s", reason)
        return Comparison(verdict="unchanged", reason=reason, deployment=spec.deployment, live_version=deployment.live)
    live = {"grpc_url": deployment.grpc_url, "http_url": deployment.http_url,
            "log_path": str(directory / server.LOG), "model_repo": candidate["model_repo"]}
    return compare(spec, candidate, live, deployment=spec.deployment, live_version=deployment.live)


def promote(spec: DeploySpec, repo: dict, comparison: dict, run_id: str, *,
            admin_key_for: KeyFor | None = None) -> DeploymentRecord:
    """``admin_key_for``: the key of a deployment server on a non-loopback ``server_host``."""
    _require_promotion(spec)
    directory = deployment_dir(spec)
    if comparison["verdict"] == "unchanged":
        raise SkipStep(comparison["reason"])
    if comparison["verdict"] == "refuse":
        lifecycle.note_refusal(directory, run_id=run_id, reason=comparison["reason"])
        deployment = record.read(directory)
        raise SkipStep(f"not promoted: {comparison['reason']}. Version {comparison['live_version']} keeps "
                       f"serving at {deployment.http_url if deployment else '?'}")
    current = record.read(directory)
    live_now = current.live if current is not None and server.running(current) else 0
    if live_now != comparison["live_version"]:
        raise NonRetryableError(
            f"deployment {spec.deployment} serves version {live_now} now, not version "
            f"{comparison['live_version']} that the candidate was compared with (a rollback or another "
            "promotion ran meanwhile): rerun to compare it with what is live")
    settings = Settings(backend=spec.backend, host=spec.server_host, http_port=spec.deployment_http_port,
                        grpc_port=spec.deployment_grpc_port, metrics_port=spec.deployment_metrics_port,
                        load_timeout_s=spec.server_start_timeout_s,
                        launch=backend_for(spec).deployment_launch(spec, server.repository_dir(directory)),
                        admin_conn_id=spec.triton_admin_conn_id)
    admin_key = key_for(spec.server_host, spec.triton_admin_conn_id, admin_key_for)
    result = lifecycle.promote(directory, settings, Path(repo["model_repo"]), run_id=run_id, admin_key=admin_key,
                               qualification={k: comparison.get(k) for k in (
                                   "verdict", "reason", "concurrency", "candidate_tok_s", "live_tok_s",
                                   "slowdown_pct")})
    log.info("deployment %s serves version %d at %s (gRPC %s); try: curl -X POST %s/v2/models/ensemble/generate "
             "-d '{\"text_input\": \"What is machine learning?\", \"max_tokens\": 20, \"bad_words\": \"\", "
             "\"stop_words\": \"\"}'", result.deployment, result.live_version, result.http_url, result.grpc_url,
             result.http_url)
    return result


def rollback(spec: DeploySpec, to_version: int | None, run_id: str, *,
             admin_key_for: KeyFor | None = None) -> DeploymentRecord:
    """Serve an earlier kept version of the spec's deployment (None: the previous one). The
    rollback DAG names only the deployment: whether its server is guarded, and by which
    connection's key, is in its record."""
    directory = deployment_dir(spec)
    deployment = record.read(directory)
    admin_key = key_for(deployment.host, deployment.admin_conn_id, admin_key_for) \
        if deployment is not None and deployment.admin_conn_id else None
    return lifecycle.rollback(directory, None, run_id=run_id, to_version=to_version, admin_key=admin_key)


def deployment_host(spec: DeploySpec) -> dict:
    """Which host serves the spec's deployment (``hostname``; "" when none does), for the tasks
    that act on it to run there. Read from its record on the shared volume, by any worker."""
    deployment = record.read(deployment_dir(spec))
    serving = deployment is not None and deployment.state == "serving"
    return {"deployment": spec.deployment, "hostname": deployment.machine if serving else ""}


def stop_deployment(spec: DeploySpec, run_id: str) -> DeploymentRecord:
    """Stop the spec's deployment on purpose: 0 processes left, its engines' leases released."""
    return lifecycle.stop(deployment_dir(spec), run_id=run_id)


def forget_host(spec: DeploySpec, gone: Mapping[str, Any], run_id: str) -> DeploymentRecord:
    """Let go of the spec's deployment whose host is gone for good (``gone["host"]``)."""
    return lifecycle.forget_host(deployment_dir(spec), host=gone["host"], run_id=run_id)


def _require_promotion(spec: DeploySpec) -> None:
    if not spec.promote:
        raise SkipStep("promote=false: the run qualified the engine and leaves the deployment as it is")
    refusal = backend_for(spec).deployment_refusal(spec)
    if refusal:
        raise SkipStep(f"not promoted: {refusal}")
