"""Rebuild and re-benchmark when tensorrtllm_backend / TensorRT-LLM publish a new release.

Daily: ask PyPI (tensorrt_llm) and the backend's releases feed for their newest release. A new
release that llm-deploy has a row for (in its table, or derived earlier onto the engines volume)
triggers deploy_llm with that release. A new release without a row is probed (no GPU): upstream's
scripts and templates at its tag are held against what our commands use for the newest row;
when nothing we use changed, a derived row is written to <engines_root>/releases/<release>/ and
deploy_llm is triggered with it; otherwise the report says exactly which flags or placeholders
changed, nothing is triggered, and the release is reported once. A tick with nothing new does
nothing; the state lives on the engines volume.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from llm_deploy.release_watch import (
    DEFAULT_BACKEND_RELEASES,
    DEFAULT_PYPI_JSON,
    DEFAULT_TRTLLM_COMMIT_API,
    DEFAULT_TRTLLM_RAW_FILES,
)
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
        "engines_root": Param(DEFAULT_ENGINES_ROOT, type="string",
                              description="Where the watch keeps its state, probe reports and derived releases."),
        "deploy_conf": Param({"backend": "trtllm", "promote": True}, type="object",
                             description="Params for the triggered deploy_llm run (the release is added). "
                             "With promote, the new release's engine replaces the deployment's live version "
                             "when it is not slower on the same load; promote false only qualifies it."),
        "probe_new_releases": Param(True, type="boolean",
                                    description="Probe a new release that has no row and derive one when "
                                    "our commands still fit it; off = only report it."),
        "trtllm_raw_files_url": Param(DEFAULT_TRTLLM_RAW_FILES, type="string",
                                      description="NVIDIA/TensorRT-LLM's files at a tag; {ref} and {path} are "
                                      "replaced (default: LLM_DEPLOY_TRTLLM_RAW_URL, else raw.githubusercontent.com)."),
        "trtllm_commit_url": Param(DEFAULT_TRTLLM_COMMIT_API, type="string",
                                   description="A tag's commit, GitHub API shape; {ref} is replaced (default: "
                                   "LLM_DEPLOY_TRTLLM_COMMIT_URL, else api.github.com)."),
        "container_image": Param(None, type=["null", "string"],
                                 description="Image of a derived release; empty = the newest row's image. "
                                 "Upstream's tag does not name the NGC image that ships it, so a probe "
                                 "report calls it unconfirmed either way."),
    },
    tags=["llm", "tensorrt-llm", "release-watch"],
    doc_md=__doc__,
)
def watch_trtllm_releases():
    @task.short_circuit
    def check_releases(params: dict) -> dict | bool:
        from pathlib import Path

        from llm_deploy import release_watch as rw
        from llm_deploy.backends.trtllm.releases import derived_names
        from llm_deploy.spec import SUPPORTED_TRTLLM_RELEASES

        latest = rw.Latest(rw.latest_wheel(url=params["pypi_json_url"]),
                           rw.latest_backend(params["backend_releases_url"]))
        root = Path(params["engines_root"])
        known = SUPPORTED_TRTLLM_RELEASES + tuple(derived_names(root))
        decision = rw.decide(latest, rw.load_state(root), known, probe=params["probe_new_releases"])
        print(f"release watch: {decision.reason}")
        rw.record_check(root, decision)
        if decision.probe:
            return {"release": latest.tensorrt_llm, "probe": True}
        if decision.release is None:
            return False
        return {"release": decision.release, "probe": False}

    @task.short_circuit
    def probe_release(found: dict, params: dict) -> dict | bool:
        """No GPU: HTTP and parsing only. A release with a row passes straight through."""
        from pathlib import Path

        from llm_deploy import release_watch as rw
        from llm_deploy.backends.trtllm import release_probe, releases

        root, release = Path(params["engines_root"]), found["release"]
        conf = {**params["deploy_conf"], "trtllm_release": release}
        if not found["probe"]:
            if releases.find(release, root).derived:
                conf.setdefault("engines_root", str(root))  # where deploy_llm finds the derived row
            return conf
        upstream = release_probe.Upstream(params["trtllm_raw_files_url"], params["trtllm_commit_url"])
        try:
            result = release_probe.probe(release, upstream, container_image=params["container_image"] or "")
        finally:
            upstream.close()
        where = release_probe.write_report(root, result.report)
        print(result.report.to_markdown())
        if not result.report.compatible:
            rw.record_incompatible(root, release, result.report.findings)
            print(f"release watch: {release} is not compatible ({where}/report.md); nothing triggered")
            return False
        print(f"release watch: derived {release} from {result.report.derived_from} into "
              f"{release_probe.write_derived(root, result)}")
        conf.setdefault("engines_root", str(root))
        return conf

    @task
    def remember(conf: dict, params: dict) -> None:
        from pathlib import Path

        from llm_deploy import release_watch as rw

        rw.record_deployed(Path(params["engines_root"]), conf["trtllm_release"])

    conf = probe_release(check_releases())
    trigger = TriggerDagRunOperator(
        task_id="trigger_deploy_llm",
        trigger_dag_id="deploy_llm",
        conf=conf,
        wait_for_completion=False,
    )
    conf >> trigger >> remember(conf)


watch_trtllm_releases()
