"""The server-locality task policy, as Airflow loads it: the ``airflow.policy`` entry point.

Only Airflow imports this module, while it initialises (airflow.settings loads the entry point),
so ``airflow.policies`` is already there. The logic lives in ``locality``, which imports no
Airflow at module level: a module that imported ``airflow`` first thing would start that very
initialisation while half-defined, and Airflow would register it without its hook.
"""

from __future__ import annotations

from airflow.policies import hookimpl

from llm_deploy.airflow.locality import route


@hookimpl
def task_instance_mutation_hook(task_instance, dag_run) -> None:
    route(task_instance, dag_run)
