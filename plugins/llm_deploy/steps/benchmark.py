"""Tutorial step "query the server", grown into a benchmark: a concurrency sweep per target.

Per target a warm-up, then one closed-loop level per concurrency (bench/sweep.py), with the
machine's speed on a fixed workload timed before and after (bench/machine_speed.py). Also one
/generate call for the tutorial's text, an HF generate() baseline on the torch backend, and a
comparison with the previous run of the same spec and load. The full report, plots and a
Markdown summary (bench/report.py) go to the run's directory on the engines volume; XCom gets
the headline figures and the paths.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from llm_deploy import volume
from llm_deploy.backends.registry import backend_for
from llm_deploy.bench import machine_speed, stream_client, workload
from llm_deploy.bench.report import (
    REPORT_NAME,
    REPORT_SCHEMA_VERSION,
    SUMMARY_NAME,
    add_artifacts,
    against_previous_run,
    failed_requests,
    figure,
    load_fingerprint,
    new_report,
    schema_errors,
    write_report,
)
from llm_deploy.bench.sweep import sweep_targets
from llm_deploy.bench.text_models import text_model_of
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.records import Record
from llm_deploy.server.mpirun import ranks_that_died
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchmarkSummary(Record):
    report_path: str
    summary_path: str
    requests: int
    errors: int
    concurrency: int
    output_token_throughput_per_s: float | None
    time_to_first_token_p50_ms: float | None
    inter_token_latency_p50_ms: float | None
    regressions: int
    generate_text: str



def benchmark(spec: DeploySpec, server: dict, run_id: str) -> BenchmarkSummary:
    tokenizer_dir = workload.tokenizer_dir_of(Path(server["model_repo"]))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    requests = workload.spec_requests(spec, tokenizer)
    load = _describe_load(spec)
    speed_before = machine_speed.measure()
    sweep = sweep_targets(spec, server, requests, tokenizer)
    machine = machine_speed.reference(speed_before, machine_speed.measure())
    generate = _generate_check(spec, server)
    baseline = _hf_baseline(spec, tokenizer_dir, requests) if _wants_hf_baseline(spec) else None
    report, path = _write_report(spec, run_id, load=load, sweep=sweep, generate=generate, baseline=baseline,
                                 served=_served(server), machine=machine)
    _fail_on_failed_requests(report, server, path)
    regressions = _check_regressions(spec, report)
    headline = report["streaming"]
    return BenchmarkSummary(
        report_path=str(path),
        summary_path=report["artifacts"]["summary_md"],
        requests=headline["requests"],
        errors=0,  # a failed request failed the step above
        concurrency=headline["concurrency"],
        output_token_throughput_per_s=headline["output_token_throughput_per_s"],
        time_to_first_token_p50_ms=figure(headline, "time_to_first_token_ms", "p50"),
        inter_token_latency_p50_ms=figure(headline, "inter_token_latency_ms", "p50"),
        regressions=regressions,
        generate_text=generate["text_output"][:200],
    )


def _describe_load(spec: DeploySpec) -> dict:
    """The report's load block; its fingerprint decides which earlier runs this one is compared with."""
    load = {
        "prompt": spec.benchmark_prompt, "max_tokens": spec.benchmark_max_tokens,
        "input_len_mean": spec.benchmark_input_len_mean, "input_len_spread": spec.benchmark_input_len_spread,
        "output_len_spread": spec.benchmark_output_len_spread, "seed": spec.benchmark_seed,
        "warmup_requests": spec.benchmark_warmup_requests, "requests_per_level": spec.benchmark_requests,
        "duration_s": spec.benchmark_duration_s, "concurrency_levels": list(spec.benchmark_concurrency_levels),
        "targets": list(spec.benchmark_targets),
        # Server settings outside the engine hash that still shape the figures.
        "server": {"batch_scheduler_policy": spec.batch_scheduler_policy,
                   "max_queue_delay_microseconds": spec.max_queue_delay_microseconds},
    }
    if spec.triton_flow != "engine":  # only then: earlier runs' fingerprints stay comparable
        load["server"]["triton_flow"] = spec.triton_flow
    load["fingerprint"] = load_fingerprint(load)
    return load


def _generate_check(spec: DeploySpec, server: dict) -> dict:
    """The tutorial's one /generate call, timed; a failure is recorded in the report, not raised."""
    started = time.perf_counter()
    error = None
    try:
        text = stream_client.generate(server["http_url"], spec.benchmark_prompt, spec.benchmark_max_tokens,
                                      model=text_model_of(spec))
    except Exception as exc:  # noqa: BLE001 - a dead server: still write the report that counts it
        text, error = "", f"{type(exc).__name__}: {exc}"
    latency_s = time.perf_counter() - started
    return {"endpoint": f"/v2/models/{text_model_of(spec).name}/generate",
            "text_output": text, "latency_s": round(latency_s, 4), "error": error}


def _wants_hf_baseline(spec: DeploySpec) -> bool:
    return backend_for(spec).compares_with_hf_generate and spec.benchmark_hf_baseline


def _hf_baseline(spec: DeploySpec, tokenizer_dir: Path, requests: list[workload.BenchRequest]) -> dict:
    from llm_deploy.bench.hf_baseline import baseline

    log.info("HF transformers generate() baseline on %s", tokenizer_dir)
    return baseline(tokenizer_dir, [r.prompt for r in requests], spec.benchmark_max_tokens,
                    static_batch=spec.max_batch_size)


def _served(server: dict) -> dict:
    """What the measured server served: its repository, the engine in it, and its log."""
    return {"model_repo": server["model_repo"], "engine_dir": volume.served_engine_dir(server["model_repo"]),
            "log_path": server["log_path"]}


def _airflow_task() -> dict | None:
    """The Airflow task that ran this benchmark, for the report view's link back to its run.

    Airflow exports the running task's identity to its environment (``AIRFLOW_CTX_*``, as it does
    for every operator's subprocesses); outside Airflow (``python -m llm_deploy.cli``) there is none.
    """
    names = {"dag_id": "AIRFLOW_CTX_DAG_ID", "run_id": "AIRFLOW_CTX_DAG_RUN_ID", "task_id": "AIRFLOW_CTX_TASK_ID"}
    found = {key: os.environ.get(var) for key, var in names.items()}
    return found if all(found.values()) else None


def _write_report(spec: DeploySpec, run_id: str, *, load: dict, sweep: dict, generate: dict,
                  baseline: dict | None, served: dict, machine: dict) -> tuple[dict, Path]:
    """Assemble the report, compare it with the previous run's, and write it with its plots."""
    out_dir = volume.run_dir(spec, run_id)
    path = out_dir / REPORT_NAME
    report = new_report(run_id=run_id, spec=spec.model_dump(), engine_hash=spec.engine_hash, load=load,
                        sweep=sweep, generate=generate, baseline=baseline)
    report.update(served=served, airflow=_airflow_task(), machine=machine)
    report["regression"] = against_previous_run(report, out_dir.parent, current=path,
                                                threshold_pct=spec.benchmark_regression_threshold_pct)
    add_artifacts(report, out_dir)
    problems = schema_errors(report)
    if problems:  # a bug here, not a bad run: the next run and every comparison would trip on it
        raise NonRetryableError(f"benchmark report breaks schema {REPORT_SCHEMA_VERSION}: {'; '.join(problems[:5])}")
    write_report(report, out_dir)
    log.info("benchmark report: %s; summary: %s; plots: %s", path, out_dir / SUMMARY_NAME,
             ", ".join(report["artifacts"]["plots"]))
    return report, path


def _fail_on_failed_requests(report: dict, server: dict, path: Path) -> None:
    """Fail the step if any request failed; the report that counts them is written by then."""
    errors, sent, messages = failed_requests(report)
    if not errors:
        return
    # Say first whether the server is still there: a crash reads very differently from a few
    # refused requests, and its log is where the cause is.
    from llm_deploy.server.readiness import is_live

    message = f"{errors} of {sent} benchmark requests failed ({'; '.join(messages[:5])}); report: {path}"
    died = ranks_that_died(volume.read_tail(server["log_path"], 64 * 1024))
    if died:  # a server over several ranks under mpirun: which one ended first
        message += f"; mpirun: {'; '.join(died)}"
    if not is_live(server["http_url"]):
        # A retry of this task alone would hit the same dead server (Airflow does not rerun
        # the start_server setup for it): fail at once, teardown still runs.
        raise NonRetryableError(f"tritonserver at {server['http_url']} is not answering any more "
                                f"(crashed or killed? its log: {server['log_path']}); {message}")
    raise StepError(message)


def _check_regressions(spec: DeploySpec, report: dict) -> int:
    """Log every regression against the previous run; fail on them if the spec asks to."""
    regression = report["regression"] or {}
    if regression.get("verdict") == "inconclusive":
        log.warning("no regression verdict against the previous run: %s", regression["reason"])
    regressions = regression.get("regressions", [])
    for r in regressions:
        log.warning("regression: %s c=%d %s %s -> %s (%.1f%% worse)", r["target"], r["concurrency"],
                    r["metric"], r["previous"], r["current"], r["worse_pct"])
    if regressions and spec.benchmark_fail_on_regression:
        raise StepError(f"{len(regressions)} figures regressed beyond {spec.benchmark_regression_threshold_pct}% "
                        f"against {regression['previous_report']}; summary: {report['artifacts']['summary_md']}")
    return len(regressions)
