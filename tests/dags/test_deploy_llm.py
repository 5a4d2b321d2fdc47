"""DAG integrity: it imports cleanly and cheaply, and its wiring is the tutorial's."""

import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
TUTORIAL_ORDER = ["download_weights", "build_wheel", "build_engine", "verify_engine",
                  "render_model_repo", "start_server", "benchmark", "stop_server"]
PROMOTION = ["compare_with_live", "promote"]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag("deploy_llm")


def test_importing_the_dag_does_no_heavy_work():
    # The dag-processor re-parses this file every few seconds: no torch, transformers or Triton.
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]);"
        "heavy = [m for m in ('torch', 'transformers', 'tritonclient', 'huggingface_hub') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(DAGS / "deploy_llm.py")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1:] in ([], [""])


def test_tasks_follow_the_tutorial(dag):
    assert set(dag.task_ids) == {"find_cached_engine", "find_deployment", *TUTORIAL_ORDER, *PROMOTION}
    t = dag.task_dict
    assert t["download_weights"].downstream_task_ids >= {"build_engine"}
    assert t["build_wheel"].downstream_task_ids == {"build_engine"}
    assert "verify_engine" in t["build_engine"].downstream_task_ids
    assert "render_model_repo" in t["verify_engine"].downstream_task_ids
    assert t["render_model_repo"].downstream_task_ids == {"start_server", "promote"}
    assert "benchmark" in t["start_server"].downstream_task_ids
    assert t["benchmark"].downstream_task_ids == {"compare_with_live"}


def test_the_gate_runs_beside_the_candidate_and_promotion_after_its_server_is_gone(dag):
    t = dag.task_dict
    # Inside the setup/teardown scope: the candidate's server is still up while it is compared.
    assert t["compare_with_live"].upstream_task_ids == {"start_server", "benchmark"}
    assert t["compare_with_live"].downstream_task_ids == {"stop_server", "promote"}
    assert t["promote"].upstream_task_ids == {"render_model_repo", "compare_with_live", "stop_server"}
    assert t["promote"].trigger_rule == "all_success"  # a failed benchmark or gate promotes nothing
    assert [outlet.name for outlet in t["promote"].outlets] == ["llm_deployments"]


def test_server_is_a_setup_and_always_torn_down(dag):
    start, stop = dag.task_dict["start_server"], dag.task_dict["stop_server"]
    assert start.is_setup and stop.is_teardown
    assert "start_server" in stop.upstream_task_ids
    assert stop.trigger_rule == "all_done_setup_success"


def test_gpu_tasks_use_the_gpu_pool_with_backoff(dag):
    for task_id in ("build_wheel", "build_engine", "verify_engine", "start_server"):
        task = dag.task_dict[task_id]
        assert task.pool == "gpu", task_id
    for task in dag.tasks:
        if task.task_id == "stop_server":
            continue
        assert task.retries >= 2 and task.retry_exponential_backoff, task.task_id


def test_a_skipped_wheel_build_does_not_skip_the_engine(dag):
    assert dag.task_dict["build_engine"].trigger_rule == "none_failed"


def test_schedule_and_form(dag):
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None: UI/API triggered
    assert dag.max_active_runs == 1
    params = dag.params
    assert params.get_param("dtype").schema["enum"] == ["float32", "float16", "bfloat16"]
    assert params.get_param("world_size").schema["minimum"] == 1
    assert all(params.get_param(name).description for name in params)


def test_a_cache_hit_skips_the_build_steps_and_still_serves(dag):
    t = dag.task_dict
    assert t["find_cached_engine"].downstream_task_ids >= {"download_weights", "build_engine", "verify_engine",
                                                          "render_model_repo"}
    # The build steps are skipped on a hit: what comes after them must not skip with them.
    for task_id in ("build_engine", "verify_engine", "render_model_repo"):
        assert t[task_id].trigger_rule == "none_failed", task_id


def test_a_flow_without_an_engine_skips_only_the_build(dag):
    # trtllm's llmapi flow: build_engine skips itself; the check, the repository and the server
    # still run, on the checkpoint (an upstream skip must not cascade).
    t = dag.task_dict
    assert t["verify_engine"].trigger_rule == "none_failed"
    assert t["render_model_repo"].trigger_rule == "none_failed"
    assert t["build_engine"].downstream_task_ids >= {"verify_engine"}


def test_the_benchmark_task_links_to_its_report_in_the_llm_deployments_view(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    tasks = {t["__var"]["task_id"]: t["__var"] for t in DagSerialization.serialize_dag(dag)["tasks"]}
    assert tasks["benchmark"]["_operator_extra_links"] == {"Benchmark report": "_link_BenchmarkReportLink"}
    assert not tasks["stop_server"].get("_operator_extra_links")
