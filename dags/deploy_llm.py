"""Deploy an LLM with TensorRT-LLM and Triton, the tutorial's steps as one retryable pipeline.

    find_cached_engine → download_weights → build_wheel → build_engine → verify_engine (run.py)
        → render_model_repo → start_server (setup) → benchmark → compare_with_live
        → stop_server (teardown) → promote

start_server, benchmark and stop_server qualify the candidate on a server of its own (http_port,
grpc_port); compare_with_live measures it against the deployment's live version on the same load,
and promote loads it into the long-running deployment server (deployment_http_port ...) as its
next version without downtime, unless it is slower beyond promotion_max_slowdown_pct. That
server outlives the run; DAGs rollback_llm_deployment and stop_llm_deployment act on it.
The tasks from start_server to promote are mapped over one record each, so that with several
GPU hosts they run on the host that serves the deployment, or started the server (README,
"Scaling out").

Trigger it from the UI form or with ``--conf``; every param is described there. ``backend=torch``
runs the PyTorch twin (CPU here, CUDA on a GPU worker); ``backend=trtllm`` is the production path.
Big artifacts stay on the engines volume; XCom carries only their paths, hashes and figures.
This module only declares the DAG: all work, and every heavy import, happens inside tasks.
"""

from __future__ import annotations

from airflow.sdk import dag, setup, task, teardown
from llm_deploy.airflow.assets import DEPLOYMENTS
from llm_deploy.airflow.params import deploy_params
from llm_deploy.airflow.task_policy import ON_GPU_HOST, RETRIES, placement
from llm_deploy.airflow.locality import with_host
from llm_deploy.airflow.report_links import benchmark_task
from llm_deploy.airflow.tasks import (
    ON_HOST,
    announce_deployment,
    current_spec,
    locate_deployment,
    next_to,
    run_step,
    skip_if_cached,
)


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
    # Where the engines are built (the GPU hosts): what it finds depends on their GPUs and image.
    @task(**ON_GPU_HOST)
    def find_cached_engine() -> dict:
        from llm_deploy.airflow.tasks import find_cached_engine as lookup

        return lookup() or {}  # {}, not None: a task returning None leaves no XCom to read back

    # Steps that build things run where the "runner" param says: on the worker (local) or in a
    # container of the release's image (docker).
    @task(**placement("download_weights"))
    def download_weights(cached: dict | None) -> dict:
        skip_if_cached(cached, "download_weights")
        return run_step("download_weights")

    @task(**placement("build_wheel"))
    def build_wheel() -> dict:
        return run_step("build_wheel")

    # none_failed: build_wheel is skipped on the torch backend, which must not skip the build.
    @task(trigger_rule="none_failed", **placement("build_engine"))
    def build_engine(weights: dict, cached: dict | None) -> dict:
        skip_if_cached(cached, "build_engine")
        return run_step("build_engine", weights)

    @task(trigger_rule="none_failed", **placement("verify_engine"))
    def verify_engine(engine: dict, weights: dict, cached: dict | None) -> dict:
        skip_if_cached(cached, "verify_engine")
        run_step("verify_engine", engine, weights)
        return engine

    # none_failed: after a cache hit its upstream build steps are skipped and it renders the
    # cached engine's repository.
    @task(trigger_rule="none_failed", **placement("render_model_repo"))
    def render_model_repo(engine: dict | None, weights: dict | None, cached: dict | None) -> dict:
        if cached:
            engine, weights = cached["engine"], cached["weights"]
        return run_step("render_model_repo", engine, weights)

    # Where the candidate's server starts: beside the deployment it is compared with and promoted
    # into, when one serves (one loopback holds both); anywhere on the gpu queue otherwise.
    @task
    def find_deployment() -> list[dict]:
        return locate_deployment(current_spec())

    # Mapped over find_deployment's one record, and the tasks that use its server over its own
    # record, so that Airflow creates each once its host is known and routes it there
    # (llm_deploy/airflow/locality.py).
    @setup
    @task(map_index_template=ON_HOST, **placement("start_server", server_from="find_deployment"))
    def start_server(repo: dict, deployment: dict) -> dict:
        return with_host(run_step("start_server", repo))

    # A task with a "Benchmark report" link to its report in the LLM deployments view.
    @benchmark_task(map_index_template=ON_HOST, **placement("benchmark"))
    def benchmark(server: dict) -> dict:
        return run_step("benchmark", next_to(server))

    # The gate: candidate and live version alternately, on the benchmark's own requests.
    @task(map_index_template=ON_HOST, **placement("compare_with_live"))
    def compare_with_live(server: dict) -> dict:
        return run_step("compare_with_live", next_to(server))

    @teardown
    @task(map_index_template=ON_HOST, **placement("stop_server"))
    def stop_server(server: dict) -> bool:
        return run_step("stop_server", next_to(server))

    # After the candidate's own server is gone (on a GPU, its memory is free again), on its host.
    @task(outlets=[DEPLOYMENTS], map_index_template=ON_HOST, **placement("promote"))
    def promote(repo: dict, comparison: dict) -> dict:
        return announce_deployment(run_step("promote", repo, comparison))

    cached = find_cached_engine()
    weights = download_weights(cached)
    engine = build_engine(weights, cached)
    build_wheel() >> engine
    verified = verify_engine(engine, weights, cached)
    repo = render_model_repo(verified, weights, cached)
    servers = start_server.partial(repo=repo).expand(deployment=find_deployment())
    comparisons = compare_with_live.expand(server=servers)
    benchmark.expand(server=servers) >> comparisons >> stop_server.expand(server=servers) \
        >> promote.partial(repo=repo).expand(comparison=comparisons)


deploy_llm()
