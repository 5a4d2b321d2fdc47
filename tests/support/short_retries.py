"""Airflow's own hook for a deployment's retry settings, used by tests that wait for a retry.

The project's DAGs wait 20 s before a task's second try and 40 s or more before its third
(llm_deploy.airflow.task_policy.RETRIES). A test that watches a task fail and be retried needs
the retries, not the wait, so it gives its AIRFLOW_HOME a cluster policy
(``config/airflow_local_settings.py``, which Airflow puts on sys.path and applies to every task
as the DAG is parsed) that keeps every retry and its exponential backoff and shortens the delay.
"""

from __future__ import annotations

from pathlib import Path

_POLICY = '''"""Written by tests/support/short_retries.py: the same retries, {delay_s} s apart."""
from datetime import timedelta


def task_policy(task):
    if task.retries:
        task.retry_delay = timedelta(seconds={delay_s})
'''


def install(airflow_home: Path, delay_s: int = 1) -> Path:
    """Write the policy into ``airflow_home``; processes started afterwards apply it."""
    path = Path(airflow_home) / "config" / "airflow_local_settings.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_POLICY.format(delay_s=delay_s))
    return path
