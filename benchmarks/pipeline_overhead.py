"""Airflow's own cost in a deploy_llm run on a real deployment, and the cached rerun vs the cold run.

Starts the deployment of tests/deployment (PostgreSQL, api-server, scheduler with LocalExecutor,
dag-processor, triggerer: tests.support.airflow_stack) on a fresh engines volume, triggers
deploy_llm through the REST API twice with the same params (cold: converts, builds, verifies;
then cached: the volume already holds checkpoint and engine) and reads the run back through the
API and the task logs:

- wall: the run's queued_at → end_date;
- sum of task durations (Airflow's start → end of each task instance) and wall ÷ that sum
  (issue 6's goal: ≤ 1.15);
- per task: the gap between its last upstream's end and its start, split into scheduler
  (upstream end → queued) and executor/worker start (queued → start), and the task's in-process
  overhead (start → the step's first line, the step's last line → end; from the task log);
- the critical path: the longest chain of task durations through the DAG; wall minus it is
  what Airflow adds on the path that decides the wall time;
- cached wall ÷ cold wall (issue 6's goal: ≤ 0.10).

    .venv/bin/python benchmarks/pipeline_overhead.py [--conf '{"benchmark_duration_s": 5}']

Writes benchmarks/results/pipeline_overhead.json and prints it. Figures from a shared 2-core
machine are noisy: compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]  # tests.support and llm_deploy

from tests.support.airflow_api import parse_time  # noqa: E402
from tests.support.airflow_stack import AirflowStack  # noqa: E402
from tests.support.small_runs import SMALL_RUN  # noqa: E402

DAG_ID = "deploy_llm"
RESULT = REPO_ROOT / "benchmarks" / "results" / "pipeline_overhead.json"
GOAL_WALL_OVER_WORK = 1.15
GOAL_CACHED_OVER_COLD = 0.10


def free_ports() -> dict[str, int]:
    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return dict(zip(("http_port", "grpc_port", "metrics_port"), ports, strict=True))


def seconds(later, earlier) -> float | None:
    return round((later - earlier).total_seconds(), 3) if later and earlier else None


def step_window(stack: AirflowStack, run_id: str, ti: dict):
    """When the task's own code ran: after Airflow's pre-execute group, before its post-execute."""
    try:
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
        entries = stack.api("GET", path, params={"full_content": "true"},
                            headers={"Accept": "application/json"})["content"]
    except Exception:  # noqa: BLE001 - a missing log costs one column, not the figure
        return None, None
    entries = [e for e in entries if isinstance(e, dict) and e.get("timestamp")]
    events = [e.get("event") for e in entries]
    if "::group::Pre Execute" not in events:
        return None, None
    pre = events.index("::group::Pre Execute")
    begin = next((parse_time(e["timestamp"]) for e in entries[pre + 1:] if e.get("event") == "::endgroup::"), None)
    end = next((parse_time(e["timestamp"]) for e in entries if e.get("event") == "::group::Post Execute"), None)
    return begin, end or parse_time(entries[-1]["timestamp"])


def critical_path(upstream: dict[str, list[str]], duration: dict[str, float]) -> tuple[float, list[str]]:
    best: dict[str, tuple[float, list[str]]] = {}

    def longest(task: str) -> tuple[float, list[str]]:
        if task not in best:
            before = max((longest(u) for u in upstream.get(task, [])), default=(0.0, []))
            best[task] = (before[0] + duration.get(task, 0.0), [*before[1], task])
        return best[task]

    return max((longest(t) for t in upstream), default=(0.0, []))


def analyse(stack: AirflowStack, run_id: str, upstream: dict[str, list[str]]) -> dict:
    run = stack.run(DAG_ID, run_id)
    tis = {ti["task_id"]: ti for ti in stack.task_instances(DAG_ID, run_id)}
    run_start = parse_time(run["start_date"])
    tasks = {}
    for task_id, ti in tis.items():
        start, end = parse_time(ti["start_date"]), parse_time(ti["end_date"])
        queued = parse_time(ti["queued_when"])
        ends_before = [parse_time(tis[u]["end_date"]) for u in upstream.get(task_id, []) if tis[u]["end_date"]]
        ready = max(ends_before) if ends_before else run_start
        step_begin, step_end = step_window(stack, run_id, ti)
        tasks[task_id] = {
            "state": ti["state"],
            "try_number": ti["try_number"],
            "duration_s": ti["duration"],
            "step_s": seconds(step_end, step_begin),
            "gap_s": seconds(start, ready),  # upstream end (run start for roots) → task start
            "gap_scheduler_s": seconds(queued, ready),  # → queued by the scheduler
            "gap_executor_s": seconds(start, queued),  # queued → running (worker + supervisor fork)
            "in_task_overhead_s": (round(seconds(step_begin, start) + seconds(end, step_end), 3)
                                   if step_begin and step_end and start and end else None),
            "scheduled_when": ti["scheduled_when"], "queued_when": ti["queued_when"],
            "start_date": ti["start_date"], "end_date": ti["end_date"],
        }
    wall = seconds(parse_time(run["end_date"]), parse_time(run["queued_at"]))
    work = round(sum(t["duration_s"] or 0 for t in tasks.values()), 3)
    step_work = round(sum(t["step_s"] or 0 for t in tasks.values()), 3)
    path_s, path = critical_path(upstream, {k: v["duration_s"] or 0 for k, v in tasks.items()})
    gaps = [t["gap_s"] for k, t in tasks.items() if k in path and t["gap_s"] is not None]
    return {
        "run_id": run_id,
        "state": run["state"],
        "wall_s": wall,
        "queued_to_running_s": seconds(run_start, parse_time(run["queued_at"])),
        "sum_task_durations_s": work,
        "wall_over_sum_task_durations": round(wall / work, 3) if work else None,
        "sum_step_work_s": step_work,
        "wall_over_sum_step_work": round(wall / step_work, 3) if step_work else None,
        "critical_path": path,
        "critical_path_task_durations_s": round(path_s, 3),
        "airflow_overhead_on_critical_path_s": round(wall - path_s, 3),
        "mean_gap_on_critical_path_s": round(sum(gaps) / len(gaps), 3) if gaps else None,
        # A retried task's figures include its failed tries and the retry delay: not overhead.
        "tasks_retried": sorted(k for k, t in tasks.items() if t["try_number"] > 1),
        "tasks": tasks,
    }


def deploy(stack: AirflowStack, conf: dict, upstream: dict[str, list[str]]) -> dict:
    started = time.monotonic()
    run_id = stack.trigger(DAG_ID, conf)
    run = stack.wait_for_run(DAG_ID, run_id, timeout_s=1500)
    if run["state"] != "success":
        states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(DAG_ID, run_id)}
        raise SystemExit(f"run {run_id} ended {run['state']}: {states}\nlogs under {stack.logs}")
    figures = analyse(stack, run_id, upstream)
    figures["client_trigger_to_done_s"] = round(time.monotonic() - started, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="{}", help="params (JSON) merged over the small default run")
    parser.add_argument("--keep", action="store_true", help="keep the stack's directory (logs) afterwards")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pipeline-overhead-", dir=REPO_ROOT / ".cache"
                                 if (REPO_ROOT / ".cache").is_dir() else None))
    engines = root / "engines"  # fresh: the first run is cold
    engines.mkdir()
    conf = {**SMALL_RUN, **free_ports(), **json.loads(args.conf), "engines_root": str(engines)}
    stack = AirflowStack(root=root / "stack", engines_root=engines)
    try:
        stack.start()
        stack.wait_for_dag(DAG_ID)
        upstream = stack.task_graph(DAG_ID)
        cold = deploy(stack, conf, upstream)
        cached = deploy(stack, conf, upstream)
    finally:
        leftovers = stack.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    figures = {
        "what": "deploy_llm on a real Airflow deployment (PostgreSQL, LocalExecutor): run wall time "
                "(queued -> end) vs the sum of task durations, per-task gaps, cached vs cold",
        "command": "python benchmarks/pipeline_overhead.py" + (f" --conf '{args.conf}'" if args.conf != "{}" else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "shared 2-core dev machine, other jobs running: noisy"},
        "airflow_settings": {k: v for k, v in stack.env.items() if k.startswith(("AIRFLOW__SCHEDULER", "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__DAG_PROCESSOR", "AIRFLOW__API__WORKERS"))},
        "stack_start_s": {k: round(v, 3) for k, v in stack.timings.items()},
        "conf": {k: v for k, v in conf.items() if k != "engines_root"},
        "goals": {"wall_over_sum_task_durations": GOAL_WALL_OVER_WORK, "cached_over_cold_wall": GOAL_CACHED_OVER_COLD},
        "cold": cold,
        "cached": cached,
        "cached_over_cold_wall": round(cached["wall_s"] / cold["wall_s"], 3),
        "processes_left_after_stop": [str(p) for p in leftovers],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written: {RESULT}")


if __name__ == "__main__":
    main()
