"""Deploy an LLM with TensorRT-LLM and Triton, the tutorial's steps as one retryable pipeline.

    download_weights → build_wheel → build_engine → verify_engine (run.py)
        → render_model_repo → start_server (setup) → benchmark → stop_server (teardown)

Trigger it from the UI form or with ``--conf``; every param is described there. ``backend=torch``
runs the PyTorch twin (CPU here, CUDA on a GPU worker); ``backend=trtllm`` is the production path.
Big artifacts stay on the engines volume; XCom carries only their paths, hashes and figures.
This module only declares the DAG: all work, and every heavy import, happens inside tasks.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, setup, task, teardown

from llm_deploy.airflow.params import deploy_params
from llm_deploy.airflow.tasks import hf_token, run_step

RETRIES = {
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}
# Tasks that hold a GPU on a production worker share the "gpu" pool (one slot per GPU set).
GPU = {"pool": "gpu", **RETRIES}


@dag(
    dag_id="deploy_llm",
    schedule=None,
    params=deploy_params(),
    default_args=RETRIES,
    max_active_runs=1,  # runs share the server ports given in params
    tags=["llm", "tensorrt-llm", "triton"],
    doc_md=__doc__,
)
def deploy_llm():
    @task
    def download_weights() -> dict:
        from llm_deploy.steps.download_weights import download_weights as step

        return run_step(lambda spec: step(spec, hf_token(spec)))

    @task(**GPU)
    def build_wheel() -> dict:
        from llm_deploy.steps.build_wheel import build_wheel as step

        return run_step(step)

    # none_failed: build_wheel is skipped on the torch backend, which must not skip the build.
    @task(trigger_rule="none_failed", **GPU)
    def build_engine(weights: dict) -> dict:
        from llm_deploy.steps.build_engine import build_engine as step

        return run_step(step, weights)

    @task(**GPU)
    def verify_engine(engine: dict, weights: dict) -> dict:
        from llm_deploy.steps.verify_engine import verify_engine as step

        run_step(step, engine, weights)
        return engine

    @task
    def render_model_repo(engine: dict, weights: dict) -> dict:
        from llm_deploy.steps.render_model_repo import render_model_repo as step

        return run_step(step, engine, weights)

    @setup
    @task(**GPU)
    def start_server(repo: dict) -> dict:
        from llm_deploy.steps.serve import start_server as step

        return run_step(step, repo, pass_run_id=True)

    @task
    def benchmark(server: dict) -> dict:
        from llm_deploy.steps.benchmark import benchmark as step

        return run_step(step, server, pass_run_id=True)

    @teardown
    @task
    def stop_server(server: dict) -> bool:
        from llm_deploy.steps.serve import stop_server as step

        return step(server)

    weights = download_weights()
    engine = build_engine(weights)
    build_wheel() >> engine
    verified = verify_engine(engine, weights)
    repo = render_model_repo(verified, weights)
    server = start_server(repo)
    benchmark(server) >> stop_server(server)


deploy_llm()
