"""Fault: a port the server needs is taken: a clear, immediate, final error, and nothing left."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from llm_deploy.airflow.tasks import task_outcome
from llm_deploy.errors import NonRetryableError
from llm_deploy.steps.serve import start_server
from tests.faults.processes import assert_no_server_processes


@pytest.mark.parametrize("param", ["http_port", "grpc_port"])
def test_a_taken_port_fails_the_start_at_once_naming_the_port(make_deployment, tmp_path, param):
    deployment = make_deployment()
    port = getattr(deployment.spec, param)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(NonRetryableError) as failure:
            start_server(deployment.spec, deployment.repo, "port-run")
        elapsed = time.monotonic() - started
        # Through the Airflow wrapper: fail without retry, so no retry storm against the port.
        with pytest.raises(AirflowFailException, match=f"port {port}"):
            task_outcome(lambda: start_server(deployment.spec, deployment.repo, "port-run"))

    message = str(failure.value)
    assert f"{param.removesuffix('_port')} port {port} on 127.0.0.1 is already in use" in message
    assert f"choose another {param}" in message
    assert elapsed < 5, f"took {elapsed:.1f}s"
    log = Path(deployment.spec.root / "runs").rglob("tritonserver.log")
    assert [p for p in log if p.stat().st_size] == [], "tritonserver was launched anyway"
    assert_no_server_processes([tmp_path])
