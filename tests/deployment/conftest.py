"""A real Airflow deployment for the tests of this folder, started once and stopped at the end.

``airflow_stack`` (module scope): PostgreSQL from the Debian package (apt-get installs it when it
is missing and we are root) and Airflow's api-server, scheduler (LocalExecutor), dag-processor
and triggerer as real processes; see tests.support.airflow_stack. It yields once deploy_llm
is parsed. At the end it stops everything and fails if any process it started is still alive.
A module that needs more environment for the components overrides it with ``running_stack``.
Module scope, not session: while the stack lives, this pytest process is the subreaper of its
processes, which must be over before other test modules start servers of their own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.airflow_stack import AirflowStack, StackError
from tests.support.postgres import PostgresUnavailable

DAG_ID = "deploy_llm"


def engines_volume(tmp_path_factory) -> Path:
    # The tests share the suite's engines volume (scripts/test.sh), so a checkpoint and engine
    # built by earlier tests are reused; the benchmark measures a cold run on a fresh volume.
    return Path(os.environ.get("LLM_DEPLOY_ENGINES_ROOT") or tmp_path_factory.mktemp("engines"))


def running_stack(tmp_path_factory, engines: Path | None = None, **extra_env: str):
    """Start a deployment, yield it once deploy_llm is parsed, stop it and require no leftovers."""
    engines = engines or engines_volume(tmp_path_factory)
    # Retries a second apart: the tests wait for retries (a killed worker's task), not for delays.
    stack = AirflowStack(root=tmp_path_factory.mktemp("airflow-stack"), engines_root=engines,
                         extra_env=extra_env, retry_delay_s=1)
    try:
        stack.start()
        stack.wait_for_dag(DAG_ID)
    except PostgresUnavailable as exc:
        pytest.skip(f"no real Airflow deployment: {exc}")
    except StackError as exc:
        stack.stop()
        pytest.fail(f"the Airflow deployment did not start: {exc}")
    print(f"\nAirflow deployment up in {stack.timings['start_s']:.1f}s ({stack.timings}); logs: {stack.logs}")
    yield stack
    leftovers = stack.stop()
    assert not leftovers, "processes of the deployment outlived its teardown (killed now):\n" + \
        "\n".join(map(str, leftovers))


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory) -> AirflowStack:
    yield from running_stack(tmp_path_factory)
