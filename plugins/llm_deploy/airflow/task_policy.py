"""Retry and placement settings shared by every DAG of this project (one place to tune them)."""

from __future__ import annotations

from datetime import timedelta

from llm_deploy.airflow.locality import next_to

RETRIES = {
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}
# Tasks that hold a GPU on a production worker share the "gpu" pool (one slot per GPU set) and
# go to the Celery workers of the "gpu" queue (docker-compose.yaml's airflow-worker-gpu).
GPU = {"pool": "gpu", "queue": "gpu", **RETRIES}
# A task that runs on a GPU host without holding a GPU: the cache lookup, whose answer depends on
# the hosts' build target (their GPU type, image, runtime), and the steps of a deployment's server.
ON_GPU_HOST = {"queue": "gpu"}


def placement(step: str, *, server_from: str = "start_server") -> dict:
    """Where a registered step's task runs, from what the step registry declares about it.

    A step that acts on a server (``next_to_server``) must run where that server does: its
    loopback, its process group. ``server_from`` names the task whose record says which host
    (airflow/locality.py); the DAG maps the task over that record, so that it is created once
    the host is known. start_server itself follows the deployment it is compared with."""
    from llm_deploy.steps.registry import STEPS

    declared = STEPS[step]
    routed = next_to(server_from) if declared.next_to_server and server_from != step else {}
    if declared.gpu:
        return {**GPU, **routed}
    if routed:
        return {**ON_GPU_HOST, **routed}
    return ON_GPU_HOST if declared.network_host else {}
