"""build_llm_engines: plan the matrix, one mapped build per config, one Asset event per run."""

import subprocess
import sys
from pathlib import Path

import pytest
from airflow.sdk.definitions.mappedoperator import MappedOperator

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag("build_llm_engines")


def test_importing_the_dag_does_no_heavy_work():
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]);"
        "heavy = [m for m in ('torch', 'transformers', 'tritonclient', 'matplotlib') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(DAGS / "build_llm_engines.py")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1:] in ([], [""])


def test_plan_then_one_mapped_build_per_config_then_publish(dag):
    assert set(dag.task_ids) == {"plan", "build_engine_for_config", "publish_engines"}
    t = dag.task_dict
    assert t["plan"].downstream_task_ids == {"build_engine_for_config"}
    assert t["build_engine_for_config"].downstream_task_ids == {"publish_engines"}
    assert isinstance(t["build_engine_for_config"], MappedOperator)
    assert t["plan"].retries == 0  # a bad matrix cannot be fixed by retrying


def test_builds_hold_a_gpu_and_retry_with_backoff(dag):
    build = dag.task_dict["build_engine_for_config"]
    assert build.pool == "gpu" and build.queue == "gpu"
    assert build.retries >= 2 and build.retry_exponential_backoff


def test_publish_updates_the_engines_asset(dag):
    from llm_deploy.matrix import ENGINES_ASSET_NAME, ENGINES_ASSET_URI

    outlets = dag.task_dict["publish_engines"].outlets
    assert [(a.name, a.uri) for a in outlets] == [(ENGINES_ASSET_NAME, ENGINES_ASSET_URI)]


def test_params_are_deploy_llms_plus_the_matrix(dag):
    from llm_deploy.airflow.params import param_schemas
    from llm_deploy.matrix import DEFAULT_MATRIX

    params = dag.params
    assert set(params) == set(param_schemas()) | {"matrix"}
    matrix = params.get_param("matrix")
    assert matrix.value == DEFAULT_MATRIX
    assert matrix.schema["type"] == "array" and matrix.schema["minItems"] == 1
    assert matrix.description
    assert type(dag.timetable).__name__ == "NullTimetable" and dag.max_active_runs == 1
