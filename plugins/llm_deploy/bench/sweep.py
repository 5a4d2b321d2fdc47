"""The benchmark's concurrency sweep: per target, a warm-up, then one closed-loop level per concurrency.

The targets: streaming gRPC through the ensemble (as upstream's inflight_batcher_llm_client.py),
token ids straight to tensorrt_llm (as benchmark_core_model.py), and HTTP /generate_stream and
/generate.
"""

from __future__ import annotations

import asyncio
import logging

from llm_deploy.bench import stream_client, workload
from llm_deploy.bench.metrics import RequestTiming, count_output_tokens, summarize
from llm_deploy.bench.report import figure
from llm_deploy.bench.text_models import text_model_of
from llm_deploy.errors import StepError
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def sweep_targets(spec: DeploySpec, server: dict, requests: list[workload.BenchRequest],
                  tokenizer) -> dict[str, list[dict]]:
    """``sweep_target`` for every target of the spec, in its order."""
    sweep = {}
    for target in spec.benchmark_targets:
        log.info("sweeping %s over concurrency %s, %d requests per level (at most %ss)", target,
                 spec.benchmark_concurrency_levels, spec.benchmark_requests, spec.benchmark_duration_s or "∞")
        sweep[target] = sweep_target(target, server, requests, spec, tokenizer)
    return sweep


def sweep_target(target: str, server: dict, requests: list[workload.BenchRequest], spec: DeploySpec,
                 tokenizer) -> list[dict]:
    """Warm-up, then one summarized level per concurrency, for one target."""

    model = text_model_of(spec)

    async def run() -> list[dict]:
        async with stream_client.LoadClient(target, grpc_url=server["grpc_url"], http_url=server["http_url"],
                                            concurrency_limit=max(spec.benchmark_concurrency_levels),
                                            text_model=model) as client:
            async def send(index: int) -> RequestTiming:
                request = requests[index % len(requests)]
                timing = await client.send(request, index)
                if target != "grpc_tensorrt_llm" and timing.error is None:
                    # Text answers: tokens re-counted with the model's tokenizer, as genai-perf does.
                    # An answer that starts with the prompt: those tokens are not output.
                    echoed = len(request.input_ids) if target in model.echoes_prompt else 0
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
                         figure(entry, "time_to_first_token_ms", "p50"),
                         figure(entry, "inter_token_latency_ms", "p50"))
                levels.append(entry)
            return levels

    return asyncio.run(run())
