"""Retry and placement settings shared by every DAG of this project (one place to tune them)."""

from __future__ import annotations

from datetime import timedelta

RETRIES = {
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}
# Tasks that hold a GPU on a production worker share the "gpu" pool (one slot per GPU set) and
# go to the Celery workers of the "gpu" queue (docker-compose.yaml's airflow-worker-gpu).
GPU = {"pool": "gpu", "queue": "gpu", **RETRIES}
# The benchmark and stop_server must run where start_server started the server (its loopback,
# its process group): the same queue.
NEXT_TO_SERVER = {"queue": "gpu"}
# A task that reads the GPU hosts' build target (their GPU type, image, runtime) without holding
# a GPU: the cache lookup, whose answer depends on them.
ON_GPU_HOST = {"queue": "gpu"}


def placement(step: str) -> dict:
    """Where a registered step's task runs, from what the step registry declares about it."""
    from llm_deploy.steps.registry import STEPS

    declared = STEPS[step]
    if declared.gpu:
        return GPU
    return NEXT_TO_SERVER if declared.network_host else {}
