"""Build one engine per entry of a config matrix, then announce them all as one Asset event.

    plan (validate every entry) → build_engine_for_config × N (dynamic task mapping)
        → publish_engines (outlet: the engines Asset, every engine record in the event's extra)

The params are deploy_llm's, which every entry starts from, plus ``matrix``: a list of param
overrides, e.g. ``[{"max_batch_size": 4}, {"max_batch_size": 8, "dtype": "bfloat16"}]``. A bad
or duplicate entry fails ``plan`` before anything is built. The benchmark_llm_engines DAG is
scheduled on the Asset: it serves and benchmarks each engine and writes one comparison report.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task
from llm_deploy.airflow.params import deploy_params
from llm_deploy.airflow.task_policy import GPU, RETRIES
from llm_deploy.matrix import DEFAULT_MATRIX, ENGINES_ASSET_NAME, ENGINES_ASSET_URI, MAX_ENTRIES

ENGINES = Asset(name=ENGINES_ASSET_NAME, uri=ENGINES_ASSET_URI)

MATRIX_PARAM = Param(
    DEFAULT_MATRIX,
    type="array",
    minItems=1,
    maxItems=MAX_ENTRIES,
    items={"type": "object"},
    title="matrix",
    description="Configurations to build: a list of param overrides applied to the params above, "
    'one engine each, e.g. [{"max_batch_size": 4}, {"max_batch_size": 8, "dtype": "bfloat16"}]. '
    "Every entry must change the engine (no two entries with the same engine hash).",
    section="Matrix",
)


@dag(
    dag_id="build_llm_engines",
    schedule=None,
    params={**deploy_params(), "matrix": MATRIX_PARAM},
    default_args=RETRIES,
    max_active_runs=1,  # builds of the same engine hash must not race for its directory
    tags=["llm", "tensorrt-llm", "matrix"],
    doc_md=__doc__,
)
def build_llm_engines():
    @task(retries=0)  # bad input: a retry cannot fix it
    def plan(params: dict | None = None) -> list[dict]:
        from airflow.sdk.exceptions import AirflowFailException
        from llm_deploy.matrix import MatrixError
        from llm_deploy.matrix import plan as plan_matrix

        try:
            return plan_matrix(dict(params), params["matrix"])
        except MatrixError as exc:
            raise AirflowFailException(str(exc)) from None

    # One fat task per config: download → wheel → engine → verify. Retrying it repeats only the
    # steps whose results are not on the volume yet (each step reuses its published output), so
    # finer tasks would only add scheduling overhead per config.
    @task(map_index_template="{{ config_label }}", **GPU)
    def build_engine_for_config(config: dict) -> dict:
        from airflow.sdk import get_current_context
        from llm_deploy.airflow.tasks import hf_token, task_outcome
        from llm_deploy.matrix import build_config
        from llm_deploy.spec import DeploySpec

        get_current_context()["config_label"] = f"{config['index']}: {config['overrides']}"
        spec = DeploySpec.from_params(config["params"])
        return {**config, **task_outcome(lambda: build_config(spec, hf_token(spec)))}

    @task(outlets=[ENGINES])
    def publish_engines(built: list[dict], run_id: str | None = None, outlet_events=None) -> dict:
        from llm_deploy.matrix import event_extra

        extra = event_extra(list(built), run_id)
        outlet_events[ENGINES].extra = extra  # one event per run, all engines in it
        return {"engines": [e["engine"]["engine_id"] for e in extra["engines"]]}

    publish_engines(build_engine_for_config.expand(config=plan()))


build_llm_engines()
