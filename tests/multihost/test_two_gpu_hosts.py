"""The DAGs on two GPU hosts under the CeleryExecutor, as README's "Scaling out" runs them.

Each host is a network namespace with a loopback and a host name of its own, so a server one
host starts on 127.0.0.1 is out of the other's reach, exactly as on two machines. The run's
tasks go wherever Celery hands them; what must hold is that every task that uses the server
runs on the host that started it, even after that host's worker dies mid-benchmark, and that
nothing of a server is left on either host afterwards. Where each task ran is read from the
REST API (the host name Airflow recorded for every try) and printed as a table.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.process_tree import read_proc
from tests.support.small_runs import KILL_RUN, SMALL_RUN

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

DAG_ID = "deploy_llm"
SERVER_TASKS = ("start_server", "benchmark", "compare_with_live", "stop_server")


def where_each_try_ran(stack, dag_id: str, run_id: str) -> dict[str, list[tuple[str, str | None]]]:
    """task id -> [(state, host name)] of each of its tries, in order."""
    ran = {}
    for ti in stack.task_instances(dag_id, run_id):
        if ti["map_index"] > 0:
            continue
        ran[ti["task_id"]] = [(t["state"], t["hostname"] or None) for t in stack.tries(dag_id, run_id, ti["task_id"])]
    return ran


def print_table(title: str, ran: dict[str, list[tuple[str, str | None]]]) -> None:
    print(f"\n{title}\n| task | tries: state @ host |\n|---|---|")
    for task, tries in ran.items():
        print(f"| {task} | {', '.join(f'{state} @ {host}' for state, host in tries)} |")


def servers_on(stack) -> dict[str, int]:
    """host -> tritonserver processes running on it."""
    servers = [p.pid for p in stack.ours() if p.name == "tritonserver"]
    return {host: sum(stack.host(host).runs(pid) for pid in servers) for host in stack.gpu_hosts}



def test_the_servers_tasks_stay_on_its_host_when_that_hosts_worker_is_killed(two_gpu_hosts, free_ports):
    stack = two_gpu_hosts
    began = time.monotonic()
    run_id = stack.trigger(DAG_ID, {**KILL_RUN, **free_ports})
    victim = stack.wait_until_running(DAG_ID, run_id, "benchmark")
    host = victim["hostname"]
    assert host in stack.gpu_hosts, victim
    time.sleep(3)  # into the sweep, past the warm-up
    assert servers_on(stack)[host] >= 1, f"no tritonserver on {host}, where benchmark runs: {servers_on(stack)}"

    # The host loses its worker: the Celery worker's whole session, and the task runner in its
    # own process group (Airflow's setpgid), SIGKILLed. Its supervisor starts it again.
    worker = stack.components[stack.worker_name(host)]
    task = read_proc(victim["pid"])
    assert task and stack.host(host).runs(task.pid), task
    os.killpg(worker.process.pid, signal.SIGKILL)
    os.killpg(task.pgid, signal.SIGKILL)
    worker.process.wait()
    stack.start_worker(host)

    run = stack.wait_for_run(DAG_ID, run_id, timeout_s=600)
    ran = where_each_try_ran(stack, DAG_ID, run_id)
    print_table(f"deploy_llm {run_id} ({time.monotonic() - began:.0f} s; {host}'s worker killed mid-benchmark)", ran)
    assert run["state"] == "success", ran
    assert [state for state, _ in ran["benchmark"]] == ["failed", "success"], ran["benchmark"]
    for task_id in SERVER_TASKS:
        assert {where for _, where in ran[task_id]} == {host}, (task_id, ran[task_id])
    summary = stack.xcom(DAG_ID, run_id, "benchmark")
    assert summary["requests"] > 0 and summary["errors"] == 0
    assert stack.xcom(DAG_ID, run_id, "stop_server") is True
    assert servers_on(stack) == {name: 0 for name in stack.gpu_hosts}


def test_a_matrix_spreads_its_builds_over_both_hosts_and_its_benchmark_finds_every_engine(two_gpu_hosts, free_ports):
    stack = two_gpu_hosts
    consumer = "benchmark_llm_engines"
    stack.wait_for_dag("build_llm_engines")
    stack.wait_for_dag(consumer)
    stack.api("PATCH", f"/api/v2/dags/{consumer}", json={"is_paused": False})
    began = time.monotonic()
    conf = {**SMALL_RUN, **free_ports, "matrix": [{"max_batch_size": 2}, {"max_batch_size": 4}]}
    build_id = stack.trigger("build_llm_engines", conf)
    build = stack.wait_for_run("build_llm_engines", build_id, timeout_s=600)
    builds = [ti for ti in stack.task_instances("build_llm_engines", build_id)
              if ti["task_id"] == "build_engine_for_config"]
    print_table(f"build_llm_engines {build_id} ({time.monotonic() - began:.0f} s)",
                {f"build_engine_for_config[{ti['rendered_map_index']}]": [(ti["state"], ti["hostname"])]
                 for ti in builds})
    assert build["state"] == "success", builds
    assert {ti["hostname"] for ti in builds} == set(stack.gpu_hosts), "both hosts build, one config each"

    deadline = time.monotonic() + 60
    while not (runs := stack.api("GET", f"/api/v2/dags/{consumer}/dagRuns")["dag_runs"]):
        assert time.monotonic() < deadline, "the asset event scheduled no benchmark run"
        time.sleep(1)
    (run,) = runs
    done = stack.wait_for_run(consumer, run["dag_run_id"], timeout_s=600)
    served = [ti for ti in stack.task_instances(consumer, run["dag_run_id"]) if ti["task_id"] == "serve_and_benchmark"]
    print_table(f"{consumer} {run['dag_run_id']}",
                {f"serve_and_benchmark[{ti['rendered_map_index']}]": [(ti["state"], ti["hostname"])] for ti in served})
    assert done["state"] == "success", served
    summary = stack.xcom(consumer, run["dag_run_id"], "compare_configs")
    assert summary["configs"] == 2 and Path(summary["table_path"]).is_file()
    assert servers_on(stack) == {name: 0 for name in stack.gpu_hosts}


def promoting(stack, name: str, ports: dict, live: dict) -> tuple[dict, dict]:
    """The params naming deployment ``name``, and a small deploy_llm run that promotes into it."""
    deployment = {"engines_root": str(stack.engines_root), "deployment_name": name}
    conf = {**SMALL_RUN, **ports, **deployment, "promote": True,
            "deployment_http_port": live["http_port"], "deployment_grpc_port": live["grpc_port"],
            "deployment_metrics_port": live["metrics_port"]}
    return deployment, conf


def test_a_deployment_serves_from_the_host_that_promoted_it_and_is_stopped_there(two_gpu_hosts, free_ports,
                                                                                  free_ports_factory):
    stack = two_gpu_hosts
    deployment, conf = promoting(stack, "two-hosts", free_ports, free_ports_factory())
    run_id = stack.trigger(DAG_ID, conf)
    run = stack.wait_for_run(DAG_ID, run_id, timeout_s=600)
    ran = where_each_try_ran(stack, DAG_ID, run_id)
    print_table(f"deploy_llm {run_id} (promote: true)", ran)
    assert run["state"] == "success", ran
    (_, host), = ran["start_server"]
    assert {where for _, where in ran["promote"]} == {host}
    assert stack.xcom(DAG_ID, run_id, "promote")["action"] == "started"
    # The candidate's server is gone, the deployment's serves on: from the promoting host only.
    assert servers_on(stack) == {name: int(name == host) for name in stack.gpu_hosts}

    stop_dag = "stop_llm_deployment"
    stack.wait_for_dag(stop_dag)
    stop_id = stack.trigger(stop_dag, deployment)
    stopped = stack.wait_for_run(stop_dag, stop_id, timeout_s=300)
    ran = where_each_try_ran(stack, stop_dag, stop_id)
    print_table(f"{stop_dag} {stop_id}", ran)
    assert stopped["state"] == "success", ran
    assert {where for _, where in ran["stop_deployment"]} == {host}, "the stop runs where the server does"
    assert stack.xcom(stop_dag, stop_id, "stop_deployment")["action"] == "stopped"
    assert servers_on(stack) == {name: 0 for name in stack.gpu_hosts}


def test_a_deployment_whose_host_is_gone_is_let_go_of_and_served_again_from_the_other(two_gpu_hosts, free_ports,
                                                                                     free_ports_factory):
    stack = two_gpu_hosts
    deployment, conf = promoting(stack, "lost-host", free_ports, free_ports_factory())
    first = stack.trigger(DAG_ID, conf)
    assert stack.wait_for_run(DAG_ID, first, timeout_s=600)["state"] == "success"
    (_, gone), = where_each_try_ran(stack, DAG_ID, first)["promote"]
    (other,) = set(stack.gpu_hosts) - {gone}

    # The host goes for good: its worker and everything else on it (the deployment's supervisor
    # and server among them) SIGKILLed, and nothing starts its worker again.
    worker = stack.components[stack.worker_name(gone)]
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    # Until none is left: a supervisor may restart its server between one look and the next.
    killed, deadline = [], time.monotonic() + 30
    while on_gone_host := [p for p in stack.ours() if stack.host(gone).runs(p.pid)]:
        assert time.monotonic() < deadline, f"still running on {gone}: {on_gone_host}"
        for proc in on_gone_host:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        killed += on_gone_host
        time.sleep(0.5)
    assert any(p.name == "tritonserver" for p in killed), killed

    stop_dag = "stop_llm_deployment"
    stack.wait_for_dag(stop_dag)
    let_go = stack.trigger(stop_dag, {**deployment, "host_gone": gone})
    assert stack.wait_for_run(stop_dag, let_go, timeout_s=300)["state"] == "success"
    ran = where_each_try_ran(stack, stop_dag, let_go)
    print_table(f"{stop_dag} {let_go} (host_gone: {gone})", ran)
    assert [state for state, _ in ran["forget_host"]] == ["success"]
    assert gone not in {where for _, where in ran["forget_host"]}
    assert stack.xcom(stop_dag, let_go, "forget_host")["action"] == "host_gone"

    # The next promotion starts the deployment on the host that is left, which stops it later.
    again = stack.trigger(DAG_ID, {**conf, **free_ports_factory()})
    assert stack.wait_for_run(DAG_ID, again, timeout_s=600)["state"] == "success"
    ran = where_each_try_ran(stack, DAG_ID, again)
    print_table(f"deploy_llm {again} (promote: true, {gone} gone)", ran)
    assert {where for _, where in ran["promote"]} == {other}
    assert stack.xcom(DAG_ID, again, "promote")["action"] == "started"
    stop = stack.trigger(stop_dag, deployment)
    assert stack.wait_for_run(stop_dag, stop, timeout_s=300)["state"] == "success"
    assert servers_on(stack) == {name: 0 for name in stack.gpu_hosts}
