"""``docker compose up`` for real: the stack a GPU host runs first, here on a CPU.

README's docker-compose.yaml with docker-compose.cpu.yaml (no GPU reservation), on images built
from Debian's packages where the official ones cannot be pulled (docker/build_compose_images.py:
PostgreSQL, Redis, and Airflow from the project's own Dockerfile). The stack comes up, the init
migrates the database, creates the admin user and the gpu pool; deploy_llm is triggered through
the api-server with the torch backend, runs on the Celery workers (the GPU tasks on
airflow-worker-gpu, under its host name) and succeeds; ``docker compose down --volumes`` then
leaves no container, network or volume of the project behind.
"""

from __future__ import annotations

import time

import httpx

import pytest

from tests.support.compose_stack import ComposeStack
from tests.support.small_runs import SMALL_RUN

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

DAG_ID = "deploy_llm"
GPU_HOSTNAME = "gpu-host-1"  # docker-compose.yaml's LLM_DEPLOY_GPU_HOSTNAME default
# Tasks of the gpu queue (and those that follow the server to its host's queue).
GPU_TASKS = ("find_cached_engine", "build_engine", "verify_engine", "start_server", "benchmark", "stop_server")


@pytest.fixture(scope="module")
def compose_stack(compose_images, dockerd):
    stack = ComposeStack(images=compose_images, docker_host=dockerd)
    try:
        stack.up()
        yield stack
    finally:
        left = stack.down()
        print(f"\ncompose stack: {stack.timings}")
        assert not left, f"docker compose down left {left}"


def test_compose_up_runs_deploy_llm_on_the_celery_workers(compose_stack):
    stack = compose_stack
    assert {pool["name"]: pool["slots"] for pool in stack.api("GET", "/api/v2/pools")["pools"]}["gpu"] == 1
    stack.wait_for_dag(DAG_ID, timeout_s=300)

    began = time.monotonic()
    run_id = stack.trigger(DAG_ID, {**SMALL_RUN, "backend": "torch", "runner": "local"})
    run = stack.wait_for_run(DAG_ID, run_id, timeout_s=1200)
    took = time.monotonic() - began
    tasks = {ti["task_id"]: ti for ti in stack.task_instances(DAG_ID, run_id) if ti["map_index"] <= 0}
    print(f"\ndeploy_llm {run_id} on the compose stack: {run['state']} in {took:.0f} s")
    print("| task | state | host | seconds |\n|---|---|---|---|")
    for task_id, ti in tasks.items():
        print(f"| {task_id} | {ti['state']} | {ti['hostname']} | {ti['duration'] or 0:.1f} |")
    failed = {task_id: stack.task_log(DAG_ID, run_id, task_id, ti["try_number"])[-3000:]
              for task_id, ti in tasks.items() if ti["state"] == "failed"}
    assert run["state"] == "success", failed

    for task_id in GPU_TASKS:
        assert tasks[task_id]["hostname"] == GPU_HOSTNAME, (task_id, tasks[task_id]["hostname"])
        assert tasks[task_id]["queue"].startswith("gpu"), (task_id, tasks[task_id]["queue"])
    # The server's tasks were routed to its host's own queue by the locality policy, which the
    # image's editable install of llm-deploy registered.
    assert tasks["benchmark"]["queue"] == f"gpu@{GPU_HOSTNAME}", tasks["benchmark"]["queue"]
    default_worker = stack.service_hostname("airflow-worker")
    for task_id in ("download_weights", "render_model_repo"):
        assert tasks[task_id]["hostname"] == default_worker, (task_id, tasks[task_id]["hostname"])
    summary = stack.xcom(DAG_ID, run_id, "benchmark")
    assert summary["requests"] > 0 and summary["errors"] == 0, summary
    assert summary["time_to_first_token_p50_ms"] > 0 and summary["generate_text"].strip(), summary

    # The benchmark task's link, and the page it leads to, served by the api-server's container
    # from the engines volume the GPU worker wrote.
    links = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/benchmark/links",
                      params={"map_index": tasks["benchmark"]["map_index"]})["extra_links"]
    report_page = links["Benchmark report"]
    assert report_page.startswith("/llm-deploy/reports/"), links
    page = httpx.get(stack.api_url + report_page, headers={"Authorization": f"Bearer {stack.token}"}, timeout=30)
    assert page.status_code == 200 and 'data-concurrency="' in page.text, page.text[:500]
