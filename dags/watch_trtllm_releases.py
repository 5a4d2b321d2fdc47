"""Rebuild and re-benchmark when tensorrtllm_backend / TensorRT-LLM publish a new release.

Daily: ask PyPI (tensorrt_llm) and the backend's releases feed for their newest release; when
the backend release is new and llm-deploy has a command table for it, trigger deploy_llm with
that release. A tick with nothing new does nothing; the state lives on the engines volume.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from llm_deploy.release_watch import DEFAULT_BACKEND_RELEASES, DEFAULT_PYPI_JSON
from llm_deploy.spec import DEFAULT_ENGINES_ROOT


@dag(
    dag_id="watch_trtllm_releases",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5), "retry_exponential_backoff": True},
    params={
        "pypi_json_url": Param(DEFAULT_PYPI_JSON, type="string",
                               description="PyPI JSON API URL; {package} is replaced (default: "
                               "LLM_DEPLOY_PYPI_JSON_URL, else pypi.org)."),
        "backend_releases_url": Param(DEFAULT_BACKEND_RELEASES, type="string",
                                      description="Latest-release feed of tensorrtllm_backend, GitHub API "
                                      "shape (default: LLM_DEPLOY_BACKEND_RELEASES_URL, else api.github.com)."),
        "engines_root": Param(DEFAULT_ENGINES_ROOT, type="string", description="Where the watch keeps its state."),
        "deploy_conf": Param({"backend": "trtllm"}, type="object",
                             description="Params for the triggered deploy_llm run (the release is added)."),
    },
    tags=["llm", "tensorrt-llm", "release-watch"],
    doc_md=__doc__,
)
def watch_trtllm_releases():
    @task.short_circuit
    def check_releases(params: dict) -> dict | bool:
        from pathlib import Path

        from llm_deploy import release_watch as rw
        from llm_deploy.spec import SUPPORTED_TRTLLM_RELEASES

        latest = rw.Latest(rw.latest_wheel(url=params["pypi_json_url"]),
                           rw.latest_backend(params["backend_releases_url"]))
        root = Path(params["engines_root"])
        decision = rw.decide(latest, rw.load_state(root), SUPPORTED_TRTLLM_RELEASES)
        print(f"release watch: {decision.reason}")
        rw.record_check(root, decision)
        if decision.release is None:
            return False
        return {**params["deploy_conf"], "trtllm_release": decision.release}

    @task
    def remember(conf: dict, params: dict) -> None:
        from pathlib import Path

        from llm_deploy import release_watch as rw

        rw.record_deployed(Path(params["engines_root"]), conf["trtllm_release"])

    conf = check_releases()
    trigger = TriggerDagRunOperator(
        task_id="trigger_deploy_llm",
        trigger_dag_id="deploy_llm",
        conf=conf,
        wait_for_completion=False,
    )
    conf >> trigger >> remember(conf)


watch_trtllm_releases()
