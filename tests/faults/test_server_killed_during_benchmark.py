"""Fault: tritonserver is SIGKILLed while the benchmark step drives it.

The benchmark must fail with a message that says the server is gone and where its log is, its
report must count every request it sent (completed + failed, none dropped), the stop_server
teardown must still run cleanly, and no server process of ours may be left afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.request

import pytest
from llm_deploy.errors import NonRetryableError
from llm_deploy.steps.benchmark import benchmark
from llm_deploy.steps.serve import start_server, stop_server

from tests.faults.processes import assert_no_server_processes, server_processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def ensemble_successes(metrics_url: str) -> int:
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - local server
            text = response.read().decode()
    except OSError:
        return 0
    found = re.search(r'^nv_inference_request_success\{model="ensemble",version="1"\} (\d+)', text, re.M)
    return int(found.group(1)) if found else 0


def test_the_benchmark_reports_a_killed_server_and_the_teardown_leaves_nothing(make_deployment, tmp_path):
    deployment = make_deployment(benchmark_concurrency_levels=[4], benchmark_requests=5000,
                                 benchmark_duration_s=120, benchmark_warmup_requests=2)
    server = start_server(deployment.spec, deployment.repo, "fault-run").to_xcom()
    assert {p.name for p in server_processes([tmp_path])} >= {"tritonserver", "triton_python_backend_stub"}
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = benchmark(deployment.spec, server, "fault-run")
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    bench = threading.Thread(target=run)
    bench.start()
    deadline = time.monotonic() + 120
    while ensemble_successes(server["metrics_url"]) < 12 and time.monotonic() < deadline and bench.is_alive():
        time.sleep(0.1)
    served_before_kill = ensemble_successes(server["metrics_url"])
    assert served_before_kill >= 12, f"the sweep never got going: {outcome}"
    os.kill(server["pid"], signal.SIGKILL)
    bench.join(timeout=180)

    assert not bench.is_alive(), "the benchmark hung on a dead server"
    error = outcome.get("error")
    assert isinstance(error, NonRetryableError), outcome
    message = str(error)
    assert f"tritonserver at {server['http_url']} is not answering any more" in message
    assert server["log_path"] in message
    report_path = message.rsplit("report: ", 1)[1]
    report = json.loads(open(report_path).read())
    [level] = report["sweep"]["grpc_ensemble"]
    assert level["errors"] > 0 and level["completed"] + level["errors"] == level["requests"]
    # Requests the server finished before the kill were counted as completed, not lost; the
    # warm-up's two are not in the sweep.
    assert level["completed"] >= served_before_kill - 2
    assert report["generate"]["error"] and f"{level['errors'] + 1} of {level['requests'] + 1}" in message

    assert stop_server(deployment.spec, server) is False  # teardown: no error, the server was already gone
    assert_no_server_processes([tmp_path], [server["pgid"]])
