"""deploy_llm on a real Airflow deployment, driven only through its REST API, as a user would.

Trigger with params (the UI form's ``conf``), poll the run, then read every task's state and the
XComs back through the API. Bad params must fail the first task at once, without a retry.

Issue 7's fault, the Airflow worker running a task SIGKILLed: the LocalExecutor worker (the
task's supervisor) and the task process under it die at once, the way an OOM kill of the worker
or a lost host looks to Airflow: no failure is reported, the heartbeats just stop. The scheduler
must notice (task_instance_heartbeat_timeout), fail that try and retry it; the run must end
``success`` and stop_server must leave no server behind.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.airflow_stack import StackError
from tests.support.process_tree import read_proc
from tests.support.small_runs import KILL_RUN, SMALL_RUN

# slow: the runs load the real SmolLM2 model (verify_engine, the server).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

DAG_ID = "deploy_llm"

FIRST_TASK = "find_cached_engine"  # the first task to read the params
PIPELINE = ("find_cached_engine", "download_weights", "build_wheel", "build_engine", "verify_engine", "render_model_repo",
            "start_server", "benchmark", "stop_server")


def failure_report(stack, run_id: str) -> str:
    """The states of every task and the log of each failed one, for an assertion message."""
    lines = []
    for ti in stack.task_instances(DAG_ID, run_id):
        lines.append(f"{ti['task_id']}: {ti['state']} (try {ti['try_number']})")
        if ti["state"] in ("failed", "up_for_retry"):
            lines.append(stack.task_log(DAG_ID, run_id, ti["task_id"], ti["try_number"])[-3000:])
    return "\n".join(lines)


def test_trigger_with_params_runs_every_task_and_publishes_xcoms(airflow_stack, free_ports):
    conf = {**SMALL_RUN, **free_ports}
    run_id = airflow_stack.trigger(DAG_ID, conf)

    run = airflow_stack.wait_for_run(DAG_ID, run_id, timeout_s=540)

    assert run["state"] == "success", failure_report(airflow_stack, run_id)
    assert run["conf"] == conf
    states = {ti["task_id"]: ti["state"] for ti in airflow_stack.task_instances(DAG_ID, run_id)}
    assert set(PIPELINE) <= set(states), states
    # The torch backend needs no TensorRT-LLM wheel: build_wheel says so by skipping.
    assert states.pop("build_wheel") == "skipped"
    # The suite shares one engines volume: an engine verified by an earlier test is a cache hit,
    # and then the build steps skip and the run serves it.
    cached = airflow_stack.xcom(DAG_ID, run_id, "find_cached_engine")
    built = ("download_weights", "build_engine", "verify_engine")
    assert all(states[task] == ("skipped" if cached else "success") for task in built), states
    assert all(states[task] == "success" for task in PIPELINE if task not in ("build_wheel", *built)), states

    weights = cached["weights"] if cached else airflow_stack.xcom(DAG_ID, run_id, "download_weights")
    engine = cached["engine"] if cached else airflow_stack.xcom(DAG_ID, run_id, "build_engine")
    server = airflow_stack.xcom(DAG_ID, run_id, "start_server")
    summary = airflow_stack.xcom(DAG_ID, run_id, "benchmark")
    assert Path(weights["checkpoint_dir"], "config.json").is_file()
    assert engine["backend"] == "torch" and Path(engine["engine_dir"], "engine_config.json").is_file()
    assert engine["engine_dir"].startswith(str(airflow_stack.engines_root))
    assert server["http_url"].endswith(f":{free_ports['http_port']}")
    assert summary["requests"] > 0 and summary["errors"] == 0 and summary["concurrency"] == 1
    assert summary["time_to_first_token_p50_ms"] > 0 and summary["generate_text"].strip()
    report = json.loads(Path(summary["report_path"]).read_text())
    assert report["streaming"]["errors"] == 0
    assert airflow_stack.xcom(DAG_ID, run_id, "stop_server") is True
    servers = [p for p in airflow_stack.ours() if p.name == "tritonserver"]
    assert not servers, f"stop_server left tritonserver running: {servers}"


def test_params_that_fail_the_form_schema_are_refused_by_the_api(airflow_stack):
    with pytest.raises(StackError) as refused:
        airflow_stack.trigger(DAG_ID, {"benchmark_concurrency_levels": [0]})

    assert "400" in str(refused.value) and "benchmark_concurrency_levels" in str(refused.value)


def test_bad_params_fail_the_first_task_without_retry(airflow_stack, free_ports):
    # Valid for the form's per-field schema, invalid as a deployment: one port for two servers.
    conf = {**SMALL_RUN, **free_ports, "grpc_port": free_ports["http_port"]}
    run_id = airflow_stack.trigger(DAG_ID, conf)

    run = airflow_stack.wait_for_run(DAG_ID, run_id, timeout_s=180)

    assert run["state"] == "failed"
    first = airflow_stack.task_instance(DAG_ID, run_id, FIRST_TASK)
    assert first["state"] == "failed" and first["max_tries"] >= 1, first
    assert first["try_number"] == 1, "a bad-params failure must not be retried"
    assert [t["state"] for t in airflow_stack.tries(DAG_ID, run_id, FIRST_TASK)] == ["failed"]
    log = airflow_stack.task_log(DAG_ID, run_id, FIRST_TASK, 1)
    assert "http_port, grpc_port and metrics_port must be three different ports" in log
    states = {ti["task_id"]: ti["state"] for ti in airflow_stack.task_instances(DAG_ID, run_id)}
    assert states["build_engine"] == "upstream_failed" and states["benchmark"] == "upstream_failed", states
    assert not [p for p in airflow_stack.ours() if p.name == "tritonserver"]


VICTIM = "benchmark"



def test_worker_killed_mid_task_is_retried_and_the_run_succeeds(airflow_stack, free_ports):
    run_id = airflow_stack.trigger(DAG_ID, {**KILL_RUN, **free_ports})
    ti = airflow_stack.wait_until_running(DAG_ID, run_id, VICTIM, timeout_s=420)
    time.sleep(3)  # into the sweep, past the warm-up
    task = read_proc(ti["pid"])
    worker = read_proc(task.ppid) if task else None
    assert task and worker and worker.cmdline.startswith("airflow worker -- LocalExecutor"), (task, worker)
    assert worker.pid in {p.pid for p in airflow_stack.ours()}, "the victim must be a process of this deployment"

    os.kill(worker.pid, signal.SIGKILL)
    os.killpg(task.pgid, signal.SIGKILL)  # the task runner leads its own group (Airflow's setpgid)

    run = airflow_stack.wait_for_run(DAG_ID, run_id, timeout_s=400)
    tries = airflow_stack.tries(DAG_ID, run_id, VICTIM)
    assert run["state"] == "success", {t["task_id"]: t["state"] for t in airflow_stack.task_instances(DAG_ID, run_id)}
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    final = airflow_stack.task_instance(DAG_ID, run_id, VICTIM)
    assert final["try_number"] == 2 and final["pid"] != ti["pid"]
    summary = airflow_stack.xcom(DAG_ID, run_id, VICTIM)
    assert summary["requests"] > 0 and summary["errors"] == 0
    assert airflow_stack.xcom(DAG_ID, run_id, "stop_server") is True
    assert read_proc(worker.pid) is None and read_proc(task.pid) is None
    leftovers = [p for p in airflow_stack.ours() if p.name == "tritonserver" or p.pgid == task.pgid]
    assert not leftovers, f"left running after the run: {leftovers}"
