"""Serve and benchmark every engine a build_llm_engines run announced, then compare them.

    engines_to_benchmark (from the triggering Asset events) → serve_and_benchmark × N, one at a
        time (render_model_repo, start_server, benchmark, stop_server) → compare_configs

Scheduled on the engines Asset: a finished build run starts this DAG. Triggered by hand (the
UI's Trigger button), it benchmarks again the engines of the newest event on that Asset. Each
engine is served with its own params (from the event's extra), on the ports those params name;
servers share those ports, so only one engine is served at a time and its server is always
stopped, even when its benchmark fails. The comparison table and plot go to
runs/matrix-<run id>/ on the engines volume.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task
from llm_deploy.airflow.report_links import benchmark_task, comparison_task
from llm_deploy.airflow.task_policy import RETRIES
from llm_deploy.matrix import ENGINES_ASSET_NAME, ENGINES_ASSET_URI

ENGINES = Asset(name=ENGINES_ASSET_NAME, uri=ENGINES_ASSET_URI)


@dag(
    dag_id="benchmark_llm_engines",
    schedule=[ENGINES],
    # Active from the start: it only runs when build_llm_engines announces engines, and a paused
    # consumer would quietly leave every announced matrix unbenchmarked.
    is_paused_upon_creation=False,
    default_args=RETRIES,
    max_active_runs=1,  # servers bind the ports given in the engines' params
    tags=["llm", "tensorrt-llm", "triton", "matrix"],
    doc_md=__doc__,
)
def benchmark_llm_engines():
    @task(retries=0, inlets=[ENGINES])
    def engines_to_benchmark(triggering_asset_events=None, inlet_events=None) -> list[dict]:
        from airflow.sdk.exceptions import AirflowFailException
        from llm_deploy.matrix import engines_from_events

        events = list(triggering_asset_events.get(ENGINES, [])) if triggering_asset_events else []
        if not events:  # triggered by hand: the engines build_llm_engines announced last
            events = list(inlet_events[ENGINES].ascending(False).limit(1))
            if events:
                print(f"triggered by hand: benchmarking the engines of the event of {events[0].timestamp}")
        if not events:
            raise AirflowFailException(
                "no engines to benchmark: build_llm_engines has not published any yet (trigger that "
                "DAG; this one runs by itself when it finishes)")
        try:
            return engines_from_events([event.extra for event in events])
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None

    # One engine at a time, and the server is stopped in a finally, inside the task: a
    # setup/teardown pair per mapped instance would interleave servers on the same ports.
    # Each with a "Benchmark report" link, and compare_configs with a "Config comparison" link,
    # to their pages in the LLM deployments view.
    @benchmark_task(pool="gpu", queue="gpu", max_active_tis_per_dagrun=1, map_index_template="{{ config_label }}")
    def serve_and_benchmark(built: dict) -> dict:
        from airflow.sdk import get_current_context
        from llm_deploy.airflow.tasks import task_outcome
        from llm_deploy.matrix import serve_and_benchmark as step
        from llm_deploy.spec import DeploySpec

        context = get_current_context()
        context["config_label"] = f"{built['index']}: {built['overrides']}"
        spec = DeploySpec.from_params(built["params"])
        return task_outcome(lambda: step(spec, built, context["run_id"]))

    @comparison_task
    def compare_configs(results: list[dict], engines: list[dict], run_id: str | None = None) -> dict:
        from llm_deploy.matrix import comparison_report

        return comparison_report(list(results), engines[0]["params"]["engines_root"], run_id)

    engines = engines_to_benchmark()
    compare_configs(serve_and_benchmark.expand(built=engines), engines)


benchmark_llm_engines()
