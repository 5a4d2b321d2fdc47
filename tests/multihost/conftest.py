"""Two GPU hosts and a control plane on this machine, started once for the tests of this folder.

``two_gpu_hosts`` (module scope): tests.support.celery_stack.CeleryStack, the CeleryExecutor
deployment README's "Scaling out" describes, with each GPU host's worker in a network namespace
and under a host name of its own. It yields once deploy_llm is parsed; at the end it stops
everything, removes the namespaces and fails if any process it started is still alive.
"""

from __future__ import annotations

import pytest

from tests.deployment.conftest import engines_volume
from tests.support.airflow_stack import StackError
from tests.support.celery_stack import CeleryStack
from tests.support.postgres import PostgresUnavailable
from tests.support.redis_server import RedisUnavailable


@pytest.fixture(scope="module")
def two_gpu_hosts(tmp_path_factory) -> CeleryStack:
    # Retries a second apart: the tests wait for retries (a killed worker's task), not for delays.
    stack = CeleryStack(root=tmp_path_factory.mktemp("celery-stack"), engines_root=engines_volume(tmp_path_factory),
                        retry_delay_s=1)
    try:
        stack.start()
        stack.wait_for_dag("deploy_llm")
    except (PostgresUnavailable, RedisUnavailable) as exc:
        pytest.skip(f"no real Celery deployment: {exc}")
    except StackError as exc:
        stack.stop()
        pytest.fail(f"the Celery deployment did not start: {exc}")
    print(f"\nCelery deployment with hosts {list(stack.gpu_hosts)} up in {stack.timings['start_s']:.1f}s; "
          f"logs: {stack.logs}")
    yield stack
    leftovers = stack.stop()
    assert not leftovers, "processes of the deployment outlived its teardown (killed now):\n" + \
        "\n".join(map(str, leftovers))
