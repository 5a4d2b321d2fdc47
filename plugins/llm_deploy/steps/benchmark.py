"""Tutorial step "query the server", grown into a benchmark: a concurrency sweep per target.

Per target (streaming gRPC through the ensemble as upstream's inflight_batcher_llm_client.py,
token ids straight to tensorrt_llm as benchmark_core_model.py, HTTP /generate_stream and
/generate): warm-up, then one closed-loop level per concurrency. Also one /generate call for the
tutorial's text, an HF generate() baseline on the torch backend, and a comparison with the
previous run of the same spec and load. The full report, plots and a Markdown summary go to the
run's directory on the engines volume; XCom gets the headline figures and the paths.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from llm_deploy import volume
from llm_deploy.backends.registry import backend_for
from llm_deploy.bench import report as reporting
from llm_deploy.bench import stream_client, workload
from llm_deploy.bench.metrics import RequestTiming, count_output_tokens, summarize
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.records import Record
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = reporting.REPORT_SCHEMA_VERSION


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



def sweep_target(target: str, server: dict, requests: list[workload.BenchRequest], spec: DeploySpec,
                 tokenizer) -> list[dict]:
    """Warm-up, then one summarized level per concurrency, for one target."""

    async def run() -> list[dict]:
        async with stream_client.LoadClient(target, grpc_url=server["grpc_url"], http_url=server["http_url"],
                                            concurrency_limit=max(spec.benchmark_concurrency_levels)) as client:
            async def send(index: int) -> RequestTiming:
                request = requests[index % len(requests)]
                timing = await client.send(request, index)
                if target != "grpc_tensorrt_llm" and timing.error is None:
                    # Text answers: tokens re-counted with the model's tokenizer, as genai-perf does.
                    # /generate echoes the prompt before the completion (tensorrtllm_backend 0.5.0).
                    echoed = len(request.input_ids) if target == "http_generate" else 0
                    timing.output_tokens = count_output_tokens(tokenizer, timing.text, echoed)
                return timing

            if spec.benchmark_warmup_requests:
                warm, _ = await stream_client.run_level(send, requests=spec.benchmark_warmup_requests,
                                                        concurrency=min(spec.benchmark_warmup_requests,
                                                                        max(spec.benchmark_concurrency_levels)))
                failed = [t.error for t in warm if t.error]
                if failed:
                    raise StepError(f"{target}: warm-up requests failed: {failed[0]}; "
                                    f"server log: {server['log_path']}")
            levels = []
            for concurrency in spec.benchmark_concurrency_levels:
                timings, wall_s = await stream_client.run_level(
                    send, requests=spec.benchmark_requests, concurrency=concurrency,
                    duration_s=spec.benchmark_duration_s)
                entry = {"concurrency": concurrency, **summarize(timings, wall_s),
                         "sample_output": next((t.text for t in timings if t.error is None), "")}
                log.info("%s c=%d: %d/%d ok, %.1f output tok/s, TTFT p50 %s ms, ITL p50 %s ms", target,
                         concurrency, entry["completed"], entry["requests"],
                         entry["output_token_throughput_per_s"] or 0.0,
                         reporting.figure(entry, "time_to_first_token_ms", "p50"),
                         reporting.figure(entry, "inter_token_latency_ms", "p50"))
                levels.append(entry)
            return levels

    return asyncio.run(run())


def benchmark(spec: DeploySpec, server: dict, run_id: str) -> BenchmarkSummary:
    tokenizer_dir = workload.tokenizer_dir_of(Path(server["model_repo"]))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    requests = workload.build_requests(
        tokenizer, spec.benchmark_requests, prompt=spec.benchmark_prompt,
        input_len_mean=spec.benchmark_input_len_mean, input_len_spread=spec.benchmark_input_len_spread,
        max_tokens=spec.benchmark_max_tokens, output_len_spread=spec.benchmark_output_len_spread,
        max_input_len=spec.max_input_len, max_output_len=spec.max_output_len, seed=spec.benchmark_seed)
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
    load["fingerprint"] = reporting.load_fingerprint(load)

    sweep = {}
    for target in spec.benchmark_targets:
        log.info("sweeping %s over concurrency %s, %d requests per level (at most %ss)", target,
                 spec.benchmark_concurrency_levels, spec.benchmark_requests, spec.benchmark_duration_s or "∞")
        sweep[target] = sweep_target(target, server, requests, spec, tokenizer)
    headline = max(sweep[spec.benchmark_targets[0]], key=lambda e: e["concurrency"])

    started = time.perf_counter()
    generate_error = None
    try:
        generated = stream_client.generate(server["http_url"], spec.benchmark_prompt, spec.benchmark_max_tokens)
    except Exception as exc:  # noqa: BLE001 - a dead server: still write the report that counts it
        generated, generate_error = "", f"{type(exc).__name__}: {exc}"
    generate_s = time.perf_counter() - started

    baseline = None
    if backend_for(spec).compares_with_hf_generate and spec.benchmark_hf_baseline:
        from llm_deploy.bench.hf_baseline import baseline as hf_baseline

        log.info("HF transformers generate() baseline on %s", tokenizer_dir)
        baseline = hf_baseline(tokenizer_dir, [r.prompt for r in requests], spec.benchmark_max_tokens,
                               static_batch=spec.max_batch_size)

    out_dir = volume.run_dir(spec, run_id)
    path = out_dir / reporting.REPORT_NAME
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run_id": run_id,
        "created_unix": round(time.time(), 3),
        "spec": spec.model_dump(),
        "engine_hash": spec.engine_hash,
        "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "load": load,
        "sweep": sweep,
        "streaming": headline,
        "sample_output": headline["sample_output"],
        "generate": {"endpoint": f"/v2/models/{stream_client.ENSEMBLE}/generate",
                     "text_output": generated, "latency_s": round(generate_s, 4), "error": generate_error},
        "baseline": baseline,
        "regression": None,
    }
    previous = reporting.previous_report(out_dir.parent, current=path, fingerprint=load["fingerprint"])
    if previous is not None:
        report["regression"] = {"previous_report": str(previous), **reporting.compare(
            report, json.loads(previous.read_text()), spec.benchmark_regression_threshold_pct)}
    summary_path = out_dir / "benchmark.md"
    plots = _plots(report, out_dir)
    report["artifacts"] = {"summary_md": str(summary_path), "plots": [str(p) for p in plots]}
    problems = reporting.schema_errors(report)
    if problems:  # a bug here, not a bad run: the next run and every comparison would trip on it
        raise NonRetryableError(f"benchmark report breaks schema {REPORT_SCHEMA_VERSION}: {'; '.join(problems[:5])}")
    summary_path.write_text(reporting.markdown_summary(report))
    path.write_text(json.dumps(report, indent=2))
    log.info("benchmark report: %s; summary: %s; plots: %s", path, summary_path, ", ".join(map(str, plots)))

    errors = sum(e["errors"] for levels in sweep.values() for e in levels) + (generate_error is not None)
    if errors:
        messages = sorted({m for levels in sweep.values() for e in levels for m in e["error_messages"]})
        messages += [f"/generate: {generate_error}"] if generate_error else []
        sent = sum(e["requests"] for levels in sweep.values() for e in levels) + 1
        # Say first whether the server is still there: a crash reads very differently from a few
        # refused requests, and its log is where the cause is.
        from llm_deploy.server.tritonserver import is_live

        message = (f"{errors} of {sent} benchmark requests failed ({'; '.join(messages[:5])}); "
                   f"report: {path}")
        if not is_live(server["http_url"]):
            # A retry of this task alone would hit the same dead server (Airflow does not rerun
            # the start_server setup for it): fail at once, teardown still runs.
            raise NonRetryableError(f"tritonserver at {server['http_url']} is not answering any more "
                                    f"(crashed or killed? its log: {server['log_path']}); {message}")
        raise StepError(message)
    regressions = (report["regression"] or {}).get("regressions", [])
    for r in regressions:
        log.warning("regression: %s c=%d %s %s -> %s (%.1f%% worse)", r["target"], r["concurrency"],
                    r["metric"], r["previous"], r["current"], r["worse_pct"])
    if regressions and spec.benchmark_fail_on_regression:
        raise StepError(f"{len(regressions)} figures regressed beyond "
                        f"{spec.benchmark_regression_threshold_pct}% against {previous}; summary: {summary_path}")
    return BenchmarkSummary(
        report_path=str(path),
        summary_path=str(summary_path),
        requests=headline["requests"],
        errors=errors,
        concurrency=headline["concurrency"],
        output_token_throughput_per_s=headline["output_token_throughput_per_s"],
        time_to_first_token_p50_ms=reporting.figure(headline, "time_to_first_token_ms", "p50"),
        inter_token_latency_p50_ms=reporting.figure(headline, "inter_token_latency_ms", "p50"),
        regressions=len(regressions),
        generate_text=generated[:200],
    )


def _plots(report: dict, out_dir: Path) -> list[Path]:
    try:
        return reporting.plot(report, out_dir)
    except ImportError:  # matplotlib missing on a slim worker: the JSON and Markdown still stand
        log.warning("matplotlib is not installed; no plots")
        return []
