"""Every DAG's trigger form can be submitted as it opens: each param the form requires has a
default that its own schema accepts (the browser test in tests/deployment shows the same)."""

from pathlib import Path

import jsonschema
import pytest

from llm_deploy.airflow.params import required_in_form

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag


def test_every_dag_has_a_form_that_opens_valid(dagbag):
    assert set(dagbag.dag_ids) == {"deploy_llm", "build_llm_engines", "benchmark_llm_engines",
                                   "watch_trtllm_releases", "rollback_llm_deployment", "stop_llm_deployment"}
    for dag_id, dag in dagbag.dags.items():
        for name, param in dag.params.items():
            schema = {k: v for k, v in param.schema.items() if k != "section"}
            where = f"{dag_id}.{name}"
            assert param.description or schema.get("description"), f"{where} has no description"
            if required_in_form(schema):
                assert param.value not in (None, ""), f"{where} is required in the form but empty"
            jsonschema.validate(param.value, schema)
