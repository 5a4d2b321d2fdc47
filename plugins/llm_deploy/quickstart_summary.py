"""What the quick start prints at the end: how the last run went, and where its report is."""

from __future__ import annotations

import json
import time
from pathlib import Path

from llm_deploy.dags_test_console import failures, hint_for, read_log

DAG_ID = "deploy_llm"


def last_run_tasks(since_unix: float, dag_id: str = DAG_ID) -> tuple[str, str, list[tuple[str, str, float | None]]] | None:
    """(run_id, state, [(task_id, state, seconds)]) of the newest run started since ``since_unix``,
    read from Airflow's DB; None when there is none (the UI's runs share this DB)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = [r for r in session.query(DagRun).filter(DagRun.dag_id == dag_id).all()
                if r.start_date and r.start_date.timestamp() >= since_unix]
        if not runs:
            return None
        run = max(runs, key=lambda r: r.start_date)
        tasks = sorted(
            ((ti.task_id, str(ti.state), ti.duration, ti.start_date) for ti in run.get_task_instances(session=session)),
            key=lambda row: (row[3] is None, row[3]),
        )
        return run.run_id, str(run.state), [(t, s, d) for t, s, d, _ in tasks]


def latest_run_summary(log_path: Path, engines_root: Path, started_unix: float) -> int:
    """The closing summary of the quick start that began at ``started_unix``; its exit code."""
    wall_s = time.time() - started_unix
    found = last_run_tasks(started_unix)
    if found is None:
        refusal = read_log(log_path).refusal
        print(f"\nno run of {DAG_ID} started: {refusal.error if refusal and refusal.error else 'see the log'}")
        print(f"full log: {log_path}")
        return 1
    run_id, state, tasks = found
    print(f"\nrun {run_id}: {state} in {wall_s:.0f}s wall time")
    for task_id, task_state, seconds in tasks:
        shown = f"{seconds:7.1f}s" if seconds is not None else "      -"
        print(f"  {task_id:<18} {task_state:<15} {shown}")
    reports = sorted(engines_root.glob("runs/*/*/benchmark.json"), key=lambda p: p.stat().st_mtime)
    if state != "success":
        print()
        for task in failures(log_path):
            tries = f" after {task.try_number} tries" if task.try_number > 1 else ""
            print(f"{task.task_id} failed{tries}: {task.error or 'no error message in the log'}")
            if hint := hint_for(task.error):
                print(f"  what to do: {hint}")
        print(f"the run did not succeed; full log: {log_path}")
        return 1
    if not reports:
        print("\nthe run succeeded but wrote no benchmark report")
        return 1
    report = json.loads(reports[-1].read_text())
    print(f"\nbenchmark, concurrency sweep {report['load']['concurrency_levels']}:")
    for target, levels in report["sweep"].items():
        for level in levels:
            print(f"  {target:<22} c={level['concurrency']:<4} {level['output_token_throughput_per_s'] or 0:8.1f} tok/s"
                  f"  TTFT p50 {_p50(level['time_to_first_token_ms']):8.1f} ms"
                  f"  ITL p50 {_p50(level['inter_token_latency_ms']):7.1f} ms  errors {level['errors']}")
    for name, run in (report.get("baseline") or {}).get("runs", {}).items():
        print(f"  HF generate {name:<12} {run['output_token_throughput_per_s']:8.1f} tok/s")
    print(f"/generate answered: {report['generate']['text_output'][:120]!r}")
    print(f"report: {reports[-1]}")
    for extra in [report["artifacts"]["summary_md"], *report["artifacts"]["plots"]]:
        print(f"        {extra}")
    print_deployments(engines_root)
    return 0


def print_deployments(engines_root: Path) -> None:
    """What serves now: each deployment's live version, where it answers, and how to stop it."""
    from llm_deploy.deployment import record, server

    for path in sorted(engines_root.glob(f"deployments/*/{record.RECORD}")):
        deployment = record.read(path.parent)
        if deployment is None or not deployment.live:
            continue
        last = next((e for e in reversed(deployment.history) if e["action"] in ("refused", "promoted", "started",
                                                                                   "rolled_back")), {})
        if not server.running(deployment):
            print(f"\ndeployment {deployment.name}: stopped (version {deployment.live} is kept)")
            continue
        print(f"\ndeployment {deployment.name} serves version {deployment.live} at {deployment.http_url} "
              f"(gRPC {deployment.grpc_url}); it stays up after this run")
        if last.get("action") == "refused":
            print(f"  this run's candidate was not promoted: {last['reason']}")
        print(f"  try:  curl -s -X POST {deployment.http_url}/v2/models/{deployment.ensemble}/generate "
              "-d '{\"text_input\": \"What is machine learning?\", \"max_tokens\": 20, \"bad_words\": \"\", "
              "\"stop_words\": \"\"}'")
        print(f"  stop: airflow dags test stop_llm_deployment --conf '{{\"deployment_name\": \"{deployment.name}\"}}'"
              "   (with scripts/airflow-env.sh sourced)")


def _p50(block: dict | None) -> float:
    return block["p50"] if block else float("nan")
