"""Server locality: the tasks that use a server run on the host that started it, whichever host.

A qualification server binds the loopback of the host start_server ran on, and stop_server
stops it by its process group there; a deployment's server is likewise its supervisor's host's.
On one host (LocalExecutor) that holds by itself. With Celery workers on several GPU hosts, a
shared ``gpu`` queue would hand benchmark or stop_server to any of them. So each GPU host's
worker also listens on a queue of its own, ``gpu@<host>`` (``worker_queues``), and Airflow's own
task policy routes the tasks that use a server there:

- A task says which task's record names its server's host in its ``executor_config``
  (``next_to(task_id)``), which the Celery executor ignores. The record is a dict with a
  ``hostname`` (``with_host``: the name the worker reports for its task instances), returned in a
  list of one or by each instance of a mapped task.
- The DAG maps the task over that record, so that Airflow creates its instance only once the
  record exists, when the scheduler knows where.
- The scheduler calls ``task_instance_mutation_hook`` on each instance it creates; the hook reads
  the record's host and sets the queue. A record without a host (a deployment that is stopped)
  leaves the task on the shared queue: any GPU host will do.

The alternative rejected: one task that starts, benchmarks and stops. It gives locality for free,
but loses the setup/teardown guarantee (a killed benchmark still stops its server), retries of
the benchmark alone, and the benchmark's own log and XCom in the grid. The policy is registered
through the ``airflow.policy`` entry point (pyproject.toml, ``locality_policy``), so every
Airflow component that has llm-deploy installed applies it; it touches only tasks that carry our
executor_config key.

``require_same_host`` is the safety net for what the policy cannot see, e.g. a run cleared after
its tasks were routed: a task handed a server of another host fails, naming both hosts, instead
of benchmarking nothing or leaving the server running.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from llm_deploy import hosts
from llm_deploy.errors import NonRetryableError

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

log = logging.getLogger(__name__)

CONFIG_KEY = "llm_deploy_next_to"  # executor_config: the task whose record names the server's host
HOST_FIELD = "hostname"  # in that record: the host the server runs on


def next_to(task_id: str) -> dict[str, Any]:
    """Task arguments that put a task on the host ``task_id``'s record names (with the DAG mapping
    the task over that record)."""
    return {"executor_config": {CONFIG_KEY: task_id}}


def host_queue(queue: str, hostname: str) -> str:
    return f"{queue}@{hostname}"


def this_host() -> str:
    """The host name a worker reports for TaskInstance.hostname ([core] hostname_callable)."""
    return hosts.this_host()


def worker_queues(*queues: str) -> str:
    """The ``--queues`` of a GPU host's Celery worker: each shared queue and its own host's."""
    host = this_host()
    return ",".join([*queues, *(host_queue(queue, host) for queue in queues)])


def route(task_instance: TaskInstance, dag_run: DagRun | None) -> None:
    """Route a task instance that must run next to another task to that task's host queue."""
    config = task_instance.executor_config or {}
    anchor = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if not anchor or dag_run is None:
        return
    hostname = _host_named_by(dag_run, anchor, task_instance.map_index)
    if not hostname:
        # Created before its anchor's record (only an unmapped task can be), or a record that
        # names no host: it keeps its queue.
        return
    queue = host_queue(task_instance.task.queue if task_instance.task else task_instance.queue, hostname)
    if task_instance.queue != queue:
        log.info("%s of %s runs next to %s: queue %s", task_instance.task_id, dag_run.run_id, anchor, queue)
        task_instance.queue = queue


def _host_named_by(dag_run: DagRun, task_id: str, map_index: int) -> str | None:
    """The host in ``task_id``'s record for instance ``map_index``: the item of its list of
    records, or, when ``task_id`` is mapped itself, the record of its instance of that index."""
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    from airflow.models.xcom import XComModel

    # The hook runs inside the scheduler's transaction, which it must neither commit nor leave:
    # read through the session the run is bound to.
    session = object_session(dag_run)
    if session is None or map_index < 0:
        return None
    rows = session.scalars(select(XComModel).where(
        XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id, XComModel.task_id == task_id,
        XComModel.map_index.in_((-1, map_index)), XComModel.key == "return_value"))
    for row in rows:
        value = XComModel.deserialize_value(row)
        if row.map_index == -1:
            value = value[map_index] if isinstance(value, list) and map_index < len(value) else None
        if isinstance(value, dict) and value.get(HOST_FIELD):
            return value[HOST_FIELD]
    return None


def with_host(record: dict[str, Any]) -> dict[str, Any]:
    """A server record that names the host it runs on."""
    return {**record, HOST_FIELD: this_host()}


def require_same_host(task_id: str, server: dict[str, Any] | None) -> None:
    """Refuse to act on a server started on another host, naming both."""
    started_on = (server or {}).get(HOST_FIELD)
    here = this_host()
    if started_on and started_on != here:
        raise NonRetryableError(
            f"{task_id} ran on host {here}, but its server runs on host {started_on} (pid {server.get('pid')}, "
            f"{server.get('http_url')}), which only that host can reach and stop. The server-locality policy "
            f"routes this task to queue gpu@{started_on}: check that the policy is installed where the scheduler "
            f"runs (entry point airflow.policy of llm-deploy) and that host {started_on}'s Celery worker listens "
            "on its own queue (python -m llm_deploy.airflow.locality gpu); to start over, clear start_server "
            "with its downstream tasks")


if __name__ == "__main__":
    import sys

    print(worker_queues(*(sys.argv[1:] or ["gpu"])))
