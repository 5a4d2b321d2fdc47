"""The short-retries policy reaches every task of a parsed DAG, and leaves the retries themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import short_retries

REPO = Path(__file__).resolve().parents[2]
# How a component of the test stacks sees deploy_llm: parsed by a DagBag in a fresh process.
PARSE = """
import json
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder={dags!r}).dags["deploy_llm"]
print(json.dumps({{t.task_id: [t.retries, t.retry_delay.total_seconds(), t.retry_exponential_backoff]
                  for t in dag.tasks}}))
"""


def parsed_retries(airflow_home: Path) -> dict[str, list]:
    env = {**os.environ, "AIRFLOW_HOME": str(airflow_home)}
    done = subprocess.run([sys.executable, "-c", PARSE.format(dags=str(REPO / "dags"))], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_retried_task_waits_one_second_and_keeps_its_retries_and_backoff(tmp_path):
    plain = parsed_retries(tmp_path / "plain")
    short_retries.install(tmp_path / "short")

    short = parsed_retries(tmp_path / "short")

    assert plain["download_weights"] == [2, 20.0, True], "the project's own rule, untouched elsewhere"
    assert short["download_weights"] == [2, 1.0, True]
    assert {task: (retries, backoff) for task, (retries, _, backoff) in short.items()} == \
        {task: (retries, backoff) for task, (retries, _, backoff) in plain.items()}
    assert all(delay == 1.0 for retries, delay, _ in short.values() if retries)
