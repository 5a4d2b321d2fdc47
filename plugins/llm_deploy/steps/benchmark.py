"""Tutorial step "query the server": the streaming client and /generate, measured.

The streaming client goes through the ensemble exactly like upstream's
inflight_batcher_llm_client.py (gRPC, text in, one response per token out); /generate is the
tutorial's second client. The full report goes to a JSON file on the engines volume; XCom gets
the headline figures and the report's path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_deploy import volume
from llm_deploy.bench import stream_client
from llm_deploy.bench.metrics import summarize
from llm_deploy.errors import StepError
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BenchmarkSummary:
    report_path: str
    requests: int
    errors: int
    concurrency: int
    output_token_throughput_per_s: float | None
    time_to_first_token_p50_ms: float | None
    inter_token_latency_p50_ms: float | None
    generate_text: str

    def to_xcom(self) -> dict:
        return asdict(self)


def benchmark(spec: DeploySpec, server: dict, run_id: str) -> BenchmarkSummary:
    grpc_url = server["grpc_url"]
    log.info("warm-up request through the ensemble at %s", grpc_url)
    warm, _ = asyncio.run(stream_client.run_load(grpc_url, spec.benchmark_prompt, 8, requests=1, concurrency=1))
    if warm[0].error:
        raise StepError(f"warm-up request failed: {warm[0].error}; server log: {server['log_path']}")

    log.info("streaming %d requests, %d in flight, max_tokens=%d",
             spec.benchmark_requests, spec.benchmark_concurrency, spec.benchmark_max_tokens)
    timings, wall_s = asyncio.run(stream_client.run_load(
        grpc_url, spec.benchmark_prompt, spec.benchmark_max_tokens,
        requests=spec.benchmark_requests, concurrency=spec.benchmark_concurrency,
    ))
    streaming = summarize(timings, wall_s)

    started = time.perf_counter()
    generated = stream_client.generate(server["http_url"], spec.benchmark_prompt, spec.benchmark_max_tokens)
    generate_s = time.perf_counter() - started

    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run_id": run_id,
        "created_unix": round(time.time(), 3),
        "spec": spec.model_dump(),
        "engine_hash": spec.engine_hash,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "load": {
            "target": "grpc-stream:ensemble",
            "prompt": spec.benchmark_prompt,
            "max_tokens": spec.benchmark_max_tokens,
            "requests": spec.benchmark_requests,
            "concurrency": spec.benchmark_concurrency,
        },
        "streaming": streaming,
        "sample_output": next((t.text for t in timings if t.error is None), ""),
        "generate": {"endpoint": f"/v2/models/{stream_client.ENSEMBLE}/generate",
                     "text_output": generated, "latency_s": round(generate_s, 4)},
    }
    path = volume.run_dir(spec, run_id) / "benchmark.json"
    path.write_text(json.dumps(report, indent=2))
    _log_headline(streaming, path)

    if streaming["errors"]:
        raise StepError(
            f"{streaming['errors']} of {streaming['requests']} requests failed "
            f"({'; '.join(streaming['error_messages'])}); report: {path}"
        )
    return BenchmarkSummary(
        report_path=str(path),
        requests=streaming["requests"],
        errors=streaming["errors"],
        concurrency=spec.benchmark_concurrency,
        output_token_throughput_per_s=streaming["output_token_throughput_per_s"],
        time_to_first_token_p50_ms=_p50(streaming["time_to_first_token_ms"]),
        inter_token_latency_p50_ms=_p50(streaming["inter_token_latency_ms"]),
        generate_text=generated[:200],
    )


def _p50(block: dict | None) -> float | None:
    return block["p50"] if block else None


def _log_headline(streaming: dict, path: Path) -> None:
    log.info(
        "benchmark: %d/%d ok, %.1f output tok/s, TTFT p50 %s ms, ITL p50 %s ms; report: %s",
        streaming["completed"], streaming["requests"],
        streaming["output_token_throughput_per_s"] or 0.0,
        _p50(streaming["time_to_first_token_ms"]), _p50(streaming["inter_token_latency_ms"]), path,
    )
