"""benchmark_llm_engines: scheduled on the engines Asset, one engine served at a time."""

from pathlib import Path

import pytest
from airflow.sdk.definitions.mappedoperator import MappedOperator

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag


@pytest.fixture(scope="module")
def dag(bag):
    return bag.get_dag("benchmark_llm_engines")


def test_it_is_scheduled_on_the_asset_the_build_dag_updates(bag, dag):
    from airflow.sdk import Asset

    produced = bag.get_dag("build_llm_engines").task_dict["publish_engines"].outlets
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    condition = dag.timetable.asset_condition  # schedule=[asset] is "all of" one asset
    assert list(condition.objects) == [produced[0]]
    assert isinstance(produced[0], Asset)
    assert dag.is_paused_upon_creation is False  # announced engines are benchmarked on a fresh deployment


def test_engines_are_served_one_at_a_time_then_compared(dag):
    assert set(dag.task_ids) == {"engines_to_benchmark", "serve_and_benchmark", "compare_configs"}
    t = dag.task_dict
    serve = t["serve_and_benchmark"]
    assert isinstance(serve, MappedOperator)
    assert serve.max_active_tis_per_dagrun == 1  # one server on the shared ports
    assert serve.pool == "gpu" and serve.retries >= 2
    assert t["engines_to_benchmark"].downstream_task_ids == {"serve_and_benchmark", "compare_configs"}
    assert serve.downstream_task_ids == {"compare_configs"}
    assert dag.max_active_runs == 1


def test_each_benchmark_and_the_comparison_link_to_their_pages_in_the_llm_deployments_view(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    tasks = {t["__var"]["task_id"]: t["__var"] for t in DagSerialization.serialize_dag(dag)["tasks"]}
    assert tasks["serve_and_benchmark"]["_operator_extra_links"] == {"Benchmark report": "_link_BenchmarkReportLink"}
    assert tasks["compare_configs"]["_operator_extra_links"] == {"Config comparison": "_link_ComparisonLink"}
