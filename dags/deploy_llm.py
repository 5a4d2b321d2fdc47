"""Deploy an LLM with TensorRT-LLM and Triton, the tutorial's steps as one retryable pipeline.

    find_cached_engine → download_weights → build_wheel → build_engine → verify_engine (run.py)
        → render_model_repo → start_server (setup) → benchmark → stop_server (teardown)

Trigger it from the UI form or with ``--conf``; every param is described there. ``backend=torch``
runs the PyTorch twin (CPU here, CUDA on a GPU worker); ``backend=trtllm`` is the production path.
Big artifacts stay on the engines volume; XCom carries only their paths, hashes and figures.
This module only declares the DAG: all work, and every heavy import, happens inside tasks.
"""

from __future__ import annotations

from airflow.sdk import dag, setup, task, teardown

from llm_deploy.airflow.params import deploy_params
from llm_deploy.airflow.task_policy import GPU, NEXT_TO_SERVER, RETRIES
from llm_deploy.airflow.tasks import run_pipeline_step, run_step, skip_if_cached



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
    # A verified engine for these params already on the volume: download, build and verify are
    # skipped (the reason and the engine hash in their logs) and the run serves that engine.
    @task
    def find_cached_engine() -> dict:
        from llm_deploy.airflow.tasks import find_cached_engine as lookup

        return lookup() or {}  # {}, not None: a task returning None leaves no XCom to read back

    # Steps that build things run where the "runner" param says: on the worker (local) or in a
    # container of the release's image (docker).
    @task
    def download_weights(cached: dict | None) -> dict:
        skip_if_cached(cached, "download_weights")
        return run_pipeline_step("download_weights")

    @task(**GPU)
    def build_wheel() -> dict:
        return run_pipeline_step("build_wheel")

    # none_failed: build_wheel is skipped on the torch backend, which must not skip the build.
    @task(trigger_rule="none_failed", **GPU)
    def build_engine(weights: dict, cached: dict | None) -> dict:
        skip_if_cached(cached, "build_engine")
        return run_pipeline_step("build_engine", weights)

    @task(trigger_rule="none_failed", **GPU)
    def verify_engine(engine: dict, weights: dict, cached: dict | None) -> dict:
        skip_if_cached(cached, "verify_engine")
        run_pipeline_step("verify_engine", engine, weights)
        return engine

    # none_failed: after a cache hit its upstream build steps are skipped and it renders the
    # cached engine's repository.
    @task(trigger_rule="none_failed")
    def render_model_repo(engine: dict | None, weights: dict | None, cached: dict | None) -> dict:
        if cached:
            engine, weights = cached["engine"], cached["weights"]
        return run_pipeline_step("render_model_repo", engine, weights)

    @setup
    @task(**GPU)
    def start_server(repo: dict) -> dict:
        from llm_deploy.steps.serve import start_server as step

        return run_step(step, repo, pass_run_id=True)

    @task(**NEXT_TO_SERVER)
    def benchmark(server: dict) -> dict:
        from llm_deploy.steps.benchmark import benchmark as step

        return run_step(step, server, pass_run_id=True)

    @teardown
    @task(**NEXT_TO_SERVER)
    def stop_server(server: dict) -> bool:
        from llm_deploy.steps.serve import stop_server as step

        return step(server)

    cached = find_cached_engine()
    weights = download_weights(cached)
    engine = build_engine(weights, cached)
    build_wheel() >> engine
    verified = verify_engine(engine, weights, cached)
    repo = render_model_repo(verified, weights, cached)
    server = start_server(repo)
    benchmark(server) >> stop_server(server)


deploy_llm()
