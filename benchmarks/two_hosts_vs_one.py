"""The same DAG runs on one GPU host and on two: what a second host buys and what Celery costs.

Two real deployments, one after the other, each on a fresh engines volume:

- **one host**: tests/deployment's stack (PostgreSQL, api-server, scheduler with LocalExecutor,
  dag-processor, triggerer), the gpu pool at one slot: one GPU set;
- **two hosts**: tests/multihost's CeleryStack (the same control plane on the CeleryExecutor
  with Redis, and a Celery worker in each of two network namespaces, one GPU set per host).

On each, the same two runs through the REST API:

1. ``deploy_llm`` with the suite's small run on the empty volume: a cold run (convert, build,
   verify, serve, benchmark). Its tasks form one chain, so a second host cannot shorten it; the
   difference is what the CeleryExecutor adds to every task (broker hop, worker pickup);
2. ``build_llm_engines`` with a two-entry matrix (max_batch_size 2 and 4; the checkpoint is
   cached by then): two independent builds that one host runs one after the other and two
   hosts run side by side.

Each run's wall time (queued -> end), the sum of its task durations and where each task ran.
Both "hosts" of the two-host stack share this machine's CPUs, so the side-by-side builds compete
for the same cores: on two real GPU hosts they would not.

    .venv/bin/python benchmarks/two_hosts_vs_one.py

Writes benchmarks/results/two_hosts_vs_one.json and prints it. Needs root (network namespaces)
and PostgreSQL/Redis from Debian (installed when missing, as the tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]  # tests.support and llm_deploy

from benchmarks.pipeline_overhead import free_ports, seconds  # noqa: E402
from tests.support.airflow_api import parse_time  # noqa: E402
from tests.support.airflow_stack import AirflowStack  # noqa: E402
from tests.support.celery_stack import CeleryStack  # noqa: E402
from tests.support.small_runs import SMALL_RUN  # noqa: E402

RESULT = REPO_ROOT / "benchmarks" / "results" / "two_hosts_vs_one.json"
MATRIX = [{"max_batch_size": 2}, {"max_batch_size": 4}]
RUNS = (("deploy_llm", {}), ("build_llm_engines", {"matrix": MATRIX}))


def timed_run(stack: AirflowStack, dag_id: str, conf: dict) -> dict:
    stack.wait_for_dag(dag_id)
    run_id = stack.trigger(dag_id, conf)
    run = stack.wait_for_run(dag_id, run_id, timeout_s=1500)
    tis = stack.task_instances(dag_id, run_id)
    if run["state"] != "success":
        states = {ti["task_id"]: ti["state"] for ti in tis}
        raise SystemExit(f"{dag_id} run {run_id} ended {run['state']}: {states}\nlogs under {stack.logs}")
    where = {}
    for ti in tis:
        name = ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['rendered_map_index'] or ti['map_index']}]"
        where[name] = {"host": ti["hostname"], "duration_s": ti["duration"],
                       "start": ti["start_date"], "end": ti["end_date"]}
    return {
        "run_id": run_id,
        "wall_s": seconds(parse_time(run["end_date"]), parse_time(run["queued_at"])),
        "sum_task_durations_s": round(sum(ti["duration"] or 0 for ti in tis), 3),
        "hosts_used": sorted({w["host"] for w in where.values() if w["host"]}),
        "tasks": where,
    }


def measure(kind: str, make_stack, root: Path) -> dict:
    engines = root / f"engines-{kind}"  # fresh: the first run is cold
    engines.mkdir()
    stack = make_stack(root / f"stack-{kind}", engines)
    began = time.monotonic()
    try:
        stack.start()
        started = round(time.monotonic() - began, 1)
        runs = {}
        for dag_id, extra in RUNS:
            conf = {**SMALL_RUN, **free_ports(), **extra, "engines_root": str(engines)}
            runs[dag_id] = timed_run(stack, dag_id, conf)
            print(f"{kind}: {dag_id} {runs[dag_id]['wall_s']} s on {runs[dag_id]['hosts_used']}", flush=True)
    finally:
        leftovers = stack.stop()
    return {"stack_start_s": started, "runs": runs, "processes_left_after_stop": [str(p) for p in leftovers]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the stacks' directories (logs) afterwards")
    args = parser.parse_args()
    cache = REPO_ROOT / ".cache"
    root = Path(tempfile.mkdtemp(prefix="two-hosts-vs-one-", dir=cache if cache.is_dir() else None))
    try:
        one = measure("one-host", lambda r, e: AirflowStack(root=r, engines_root=e), root)
        two = measure("two-hosts", lambda r, e: CeleryStack(root=r, engines_root=e), root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    figures = {
        "what": "the same DAG runs on one GPU host (LocalExecutor, one gpu slot) and on two "
                "(CeleryExecutor, a worker per host in its own network namespace): wall time "
                "queued -> end, on fresh engines volumes",
        "command": "python benchmarks/two_hosts_vs_one.py",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "one 2-core machine: both test hosts share its CPUs"},
        "conf": {**SMALL_RUN, "matrix (build_llm_engines)": MATRIX},
        "one_host": one,
        "two_hosts": two,
        "two_hosts_over_one_host_wall": {
            dag_id: round(two["runs"][dag_id]["wall_s"] / one["runs"][dag_id]["wall_s"], 3) for dag_id, _ in RUNS},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k not in ("one_host", "two_hosts")}, indent=2))


if __name__ == "__main__":
    main()
