"""Server locality: Airflow's own scheduler code routes the tasks that use a server to its host.

The real deploy_llm DAG, serialized into the test metadata DB as the dag-processor would, and
runs of it driven by the scheduler's own ``task_instance_scheduling_decisions``: start_server is
created on the queue of the host that serves the deployment (any GPU host when none does), and
once it has run, the tasks that use its server are created on its host's queue. The policy is
the one the ``airflow.policy`` entry point of the installed package registers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_deploy.airflow import locality
from llm_deploy.errors import NonRetryableError

DAGS = Path(__file__).resolve().parents[2] / "dags"
SERVER_TASKS = ("start_server", "benchmark", "compare_with_live", "stop_server", "promote")
BUILD_TASKS = ("find_cached_engine", "download_weights", "build_wheel", "build_engine", "verify_engine",
               "render_model_repo")


@pytest.fixture(scope="module")
def new_run():
    """A factory of deploy_llm runs, created by the scheduler's own code."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    bag = DagBag(dag_folder=str(DAGS / "deploy_llm.py"))
    assert bag.import_errors == {}
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)

    def create() -> str:
        run_id = f"locality__{timezone.utcnow().isoformat()}"
        with create_session() as session:
            dag = SerializedDagModel.get_dag("deploy_llm", session=session)
            dag.create_dagrun(run_id=run_id, run_after=timezone.utcnow(), run_type=DagRunType.MANUAL,
                              triggered_by=DagRunTriggeredByType.TEST, state=DagRunState.RUNNING, session=session)
        return run_id

    return create


def _finish(run_id: str, task_id: str, value, *, hostname: str) -> None:
    """What a worker reports when a task ends: success, its host, its XCom (and map length)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskmap import TaskMap
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id="deploy_llm", run_id=run_id, task_id=task_id).one()
        ti.state, ti.hostname = TaskInstanceState.SUCCESS, hostname
        XComModel.set(key="return_value", value=value, dag_id="deploy_llm", task_id=task_id, run_id=run_id,
                      map_index=ti.map_index, session=session)
        if isinstance(value, list):
            session.add(TaskMap.from_task_instance_xcom(ti, value))
        session.flush()
        run = session.query(DagRun).filter_by(dag_id="deploy_llm", run_id=run_id).one()
        run.dag = None  # the scheduler's own lookup of the serialized DAG
        from airflow.models.dagbag import DBDagBag

        run.dag = DBDagBag().get_dag_for_run(run, session=session)
        run.task_instance_scheduling_decisions(session=session)


def _queues(run_id: str) -> dict[str, list[tuple[int, str]]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id="deploy_llm", run_id=run_id).all()
        found: dict[str, list[tuple[int, str]]] = {}
        for ti in rows:
            found.setdefault(ti.task_id, []).append((ti.map_index, ti.queue))
        return found


def test_the_installed_package_registers_the_policy_with_airflow():
    # In a fresh interpreter that imports our module first, as a DAG file or a test would.
    code = ("import llm_deploy.airflow.locality; from airflow import settings;"
            "print([i.plugin_name for i in settings.get_policy_plugin_manager().hook.task_instance_mutation_hook"
            ".get_hookimpls()])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "llm_deploy_locality" in out.stdout.strip().splitlines()[-1]


def test_the_server_starts_beside_the_serving_deployment_and_its_tasks_follow_it(new_run):
    run_id = new_run()
    # Before anything ran nobody knows the host: the mapped tasks are not created yet (map index
    # -1 placeholders on the shared queue).
    assert _queues(run_id)["start_server"] == [(-1, "gpu")] and _queues(run_id)["benchmark"] == [(-1, "gpu")]
    for task_id in BUILD_TASKS:
        _finish(run_id, task_id, {"model_repo": "/engines/model_repos/x"}, hostname="gpu-host-a")
    _finish(run_id, "find_deployment", [{"deployment": "chat", "hostname": "gpu-host-b"}], hostname="control")
    assert _queues(run_id)["start_server"] == [(0, "gpu@gpu-host-b")]
    _finish(run_id, "start_server", {"http_url": "http://127.0.0.1:8000", "hostname": "gpu-host-b"},
            hostname="gpu-host-b")
    assert _queues(run_id)["benchmark"] == [(0, "gpu@gpu-host-b")]
    _finish(run_id, "benchmark", {"levels": []}, hostname="gpu-host-b")
    assert _queues(run_id)["compare_with_live"] == [(0, "gpu@gpu-host-b")]
    _finish(run_id, "compare_with_live", {"verdict": "promote"}, hostname="gpu-host-b")
    _finish(run_id, "stop_server", True, hostname="gpu-host-b")
    queues = _queues(run_id)
    assert {task: queues[task] for task in SERVER_TASKS} == {task: [(0, "gpu@gpu-host-b")] for task in SERVER_TASKS}
    # Tasks that do not use the server keep the queue their DAG gave them.
    assert queues["build_engine"] == [(-1, "gpu")] and queues["render_model_repo"] == [(-1, "default")]


def test_with_no_deployment_serving_the_server_starts_on_any_gpu_host_and_its_tasks_follow_it(new_run):
    run_id = new_run()
    for task_id in BUILD_TASKS:
        _finish(run_id, task_id, {"model_repo": "/engines/model_repos/x"}, hostname="gpu-host-b")
    _finish(run_id, "find_deployment", [{"deployment": "chat", "hostname": ""}], hostname="control")
    assert _queues(run_id)["start_server"] == [(0, "gpu")]
    _finish(run_id, "start_server", {"http_url": "http://127.0.0.1:8000", "hostname": "gpu-host-a"},
            hostname="gpu-host-a")
    assert _queues(run_id)["benchmark"] == [(0, "gpu@gpu-host-a")]


def test_a_gpu_hosts_worker_listens_on_the_shared_queue_and_its_own(monkeypatch):
    monkeypatch.setattr(locality, "this_host", lambda: "gpu-host-a")
    assert locality.worker_queues("gpu") == "gpu,gpu@gpu-host-a"


def test_a_server_of_another_host_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(locality, "this_host", lambda: "gpu-host-a")
    server = {"pid": 4242, "http_url": "http://127.0.0.1:8000", "hostname": "gpu-host-b"}
    with pytest.raises(NonRetryableError, match="ran on host gpu-host-a, but its server runs on host gpu-host-b"):
        locality.require_same_host("stop_server", server)
    locality.require_same_host("stop_server", {**server, "hostname": "gpu-host-a"})
    locality.require_same_host("stop_server", {"pid": 1})  # a record from before hosts were recorded
