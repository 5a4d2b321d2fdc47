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
# The benchmark and stop_server must run where start_server started the server (its loopback,
# its process group): the gpu queue of start_server's host (airflow/locality.py). The DAG maps
# them over start_server's output, so that they are created once that host is known.
NEXT_TO_SERVER = {"queue": "gpu", **next_to("start_server")}
# A task that runs on a GPU host without holding a GPU: the cache lookup, whose answer depends on
# the hosts' build target (their GPU type, image, runtime), and the steps of a deployment's server.
ON_GPU_HOST = {"queue": "gpu"}


def placement(step: str) -> dict:
    """Where a registered step's task runs, from what the step registry declares about it."""
    from llm_deploy.steps.registry import STEPS

    declared = STEPS[step]
    if declared.gpu:
        return GPU
    if declared.next_to_server:
        return NEXT_TO_SERVER
    return ON_GPU_HOST if declared.network_host else {}
