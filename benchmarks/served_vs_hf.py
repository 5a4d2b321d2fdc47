"""Served in-flight batching against HF transformers' static batch, same machine, same run, with a breakdown.

Same model (built-in SmolLM2-135M-Instruct, float32, greedy), same prompt, 64 tokens a request:

1. served: the DAG's benchmark step (streaming gRPC through the ensemble, closed loop at
   concurrency 16, max_batch_size 16 so that concurrency 16 is served, not queued);
2. the breakdown of that level: one more level at the same concurrency with Triton's metrics
   read before and after. The tensorrt_llm model's in-flight batcher publishes the seconds its
   thread spent in prefills, decode steps and response callbacks, and its decode steps and rows
   (backends/torch/batcher_metrics.py); Triton's statistics give the pre- and postprocessing
   models' compute time. What is left of the client's inter-token latency is the transport (the
   hops from the stub to tritonserver, through postprocessing, out over gRPC) and waiting;
3. peers, with the server stopped: our engine called directly (the same InflightBatcher and
   requests in a process of its own, no Triton), HF ``generate()`` at batch 1 and at static
   batches of 8 and 16 (every sequence made to produce all 64 tokens), and the floor a decode
   step cannot beat on this machine: the weights read once at the measured read bandwidth.

The goal: served at concurrency 16 at least equal to HF's static batch of 16. About 2 minutes on
an idle 2-core machine; the 1-minute load average before and after is recorded, since other work
on the machine skews each side differently.

    python benchmarks/served_vs_hf.py          # writes benchmarks/results/served_vs_hf.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _batcher_level import batcher_level
from _served import bench_spec, deployed, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="served requests at that concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16, help="engine's in-flight batch slots")
    parser.add_argument("--static-batch", type=int, nargs="+", default=[8, 16], help="HF generate() static batches")
    parser.add_argument("--engine-direct", nargs=2, metavar=("ENGINE_DIR", "TOKENIZER_DIR"),
                        help=argparse.SUPPRESS)  # the peer's own process (see engine_direct)
    args = parser.parse_args()
    if args.engine_direct:
        print(json.dumps(engine_direct(*map(Path, args.engine_direct), args)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from llm_deploy import volume
    from llm_deploy.bench.hf_baseline import hf_generate_throughput
    from llm_deploy.bench.workload import tokenizer_dir_of

    spec = bench_spec(max_batch_size=args.max_batch_size, benchmark_max_tokens=args.max_tokens,
                      benchmark_concurrency_levels=[args.concurrency], benchmark_requests=args.requests,
                      benchmark_warmup_requests=4, benchmark_duration_s=0, benchmark_hf_baseline=False)
    run_id = f"served_vs_hf-{int(time.time())}"
    load_before = os.getloadavg()[0]
    with deployed(spec, run_id) as server:
        from llm_deploy.steps.benchmark import benchmark

        summary = benchmark(spec, server, run_id).to_xcom()
        breakdown = measured_breakdown(spec, server)
        checkpoint = tokenizer_dir_of(Path(server["model_repo"]))
        engine_dir = Path(volume.served_engine_dir(server["model_repo"]))
    # Server stopped: each peer runs alone on the same cores.
    direct = subprocess.run([sys.executable, __file__, "--engine-direct", str(engine_dir), str(checkpoint),
                             "--concurrency", str(args.concurrency), "--requests", str(args.requests),
                             "--max-tokens", str(args.max_tokens), "--max-batch-size", str(args.max_batch_size)],
                            check=True, capture_output=True, text=True)
    engine = json.loads(direct.stdout.strip().splitlines()[-1])
    prompts = [spec.benchmark_prompt]
    hf = {"batch_1": hf_generate_throughput(checkpoint, prompts * 4, args.max_tokens, 1)}
    for size in args.static_batch:
        hf[f"static_batch_{size}"] = hf_generate_throughput(checkpoint, prompts * size, args.max_tokens, size)
    served = summary["output_token_throughput_per_s"]
    static = hf.get(f"static_batch_{args.concurrency}", {}).get("output_token_throughput_per_s")
    write_result("served_vs_hf", {
        "what": "served output tok/s at concurrency N (max_batch_size N) against HF generate static batch N, "
                "same machine, same run; where a served decode step's time goes; peers",
        "command": "python benchmarks/served_vs_hf.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "model": spec.model_id, "dtype": spec.dtype, "max_tokens": args.max_tokens,
        "served": {"concurrency": args.concurrency, "max_batch_size": args.max_batch_size,
                   "requests": summary["requests"], "errors": summary["errors"],
                   "output_token_throughput_per_s": served,
                   "time_to_first_token_p50_ms": summary["time_to_first_token_p50_ms"],
                   "inter_token_latency_p50_ms": summary["inter_token_latency_p50_ms"],
                   "report": summary["report_path"]},
        "breakdown": breakdown,
        "peers": {"engine_direct": engine, "hf_generate": hf, "floor": engine.pop("floor")},
        f"served_over_hf_static_batch_{args.concurrency}": round(served / static, 3) if served and static else None,
        "engine_direct_over_hf_static_batch": round(engine["output_token_throughput_per_s"] / static, 3)
        if static else None,
        "goal": f"served >= HF static batch {args.concurrency}",
    })


# --- the breakdown ------------------------------------------------------------------------------


def measured_breakdown(spec, server: dict) -> dict:
    """One more level at the spec's concurrency, Triton's metrics and statistics read around it."""
    from llm_deploy.bench import workload
    from llm_deploy.bench.report import figure
    from llm_deploy.bench.sweep import sweep_target

    tokenizer = workload.load_tokenizer(Path(server["model_repo"]))
    requests = workload.spec_requests(spec, tokenizer)
    level_spec = spec.model_copy(update={"benchmark_warmup_requests": 0})
    before = _scrape(server)
    started = time.perf_counter()
    [level] = sweep_target("grpc_ensemble", server, requests, level_spec, tokenizer)
    wall_s = time.perf_counter() - started
    time.sleep(1.5)  # the batcher's metrics are published once a second
    after = _scrape(server)
    delta = {key: after["metrics"].get(key, 0.0) - before["metrics"].get(key, 0.0) for key in after["metrics"]}

    def batcher(name: str, **labels) -> float:
        return sum(v for key, v in delta.items()
                   if key.startswith(name + "{") and all(f'{k}="{v_}"' in key for k, v_ in labels.items()))

    steps = batcher("nv_trt_llm_general_metrics", general_type="iteration_counter") or float("nan")
    rows = batcher("llm_deploy_batcher_decode_rows_total")
    decode_s = batcher("llm_deploy_batcher_seconds_total", phase="decode")
    prefill_s = batcher("llm_deploy_batcher_seconds_total", phase="prefill")
    emit_s = batcher("llm_deploy_batcher_seconds_total", phase="emit")
    stats = {model: _stats_delta(before["stats"].get(model), after["stats"].get(model))
             for model in ("preprocessing", "postprocessing")}
    itl = figure(level, "inter_token_latency_ms", "p50")
    forward_ms, emit_ms = 1000 * decode_s / steps, 1000 * emit_s / steps
    return {
        "level": {"concurrency": level["concurrency"], "requests": level["requests"],
                  "output_token_throughput_per_s": level["output_token_throughput_per_s"],
                  "inter_token_latency_p50_ms": itl,
                  "time_to_first_token_p50_ms": figure(level, "time_to_first_token_ms", "p50"),
                  "wall_s": round(wall_s, 2)},
        "decode_steps": int(steps), "mean_rows_per_step": round(rows / steps, 2),
        "per_decode_step_ms": {
            "model_forward": round(forward_ms, 2),
            "response_callbacks_on_batcher_thread": round(emit_ms, 2),
            "postprocessing_compute": round(stats["postprocessing"]["compute_ms"] / steps, 2),
            "transport_and_waiting": round(itl - forward_ms - emit_ms, 2) if itl else None,
        },
        "batcher_thread_s": {"prefill": round(prefill_s, 2), "decode": round(decode_s, 2), "emit": round(emit_s, 2),
                             "waiting_or_scheduling": round(wall_s - prefill_s - decode_s - emit_s, 2)},
        "prefill_ms_per_request": round(1000 * prefill_s / level["requests"], 1),
        "triton_model_stats": stats,
        "how": "per_decode_step_ms: the batcher's own clocks (model_forward; response_callbacks, what building "
               "and sending the step's responses costs the batcher thread: near 0 with the response thread on), "
               "Triton's statistics for postprocessing (its compute over the level / decode steps; it runs beside "
               "the model, on the same two cores), and what is left of the client's inter-token latency p50 "
               "(transport_and_waiting: stub to tritonserver, the ensemble, postprocessing, gRPC out, and any wait "
               "for the next step; about 0 or below when the responses travel while the next step computes)",
    }


def _scrape(server: dict) -> dict:
    with urllib.request.urlopen(server["metrics_url"], timeout=10) as response:
        lines = response.read().decode().splitlines()
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith(("nv_trt_llm_", "llm_deploy_batcher_"))}
    stats = {}
    for model in ("preprocessing", "postprocessing"):
        with urllib.request.urlopen(f"{server['http_url']}/v2/models/{model}/stats", timeout=10) as response:
            stats[model] = json.loads(response.read())["model_stats"][0]
    return {"metrics": metrics, "stats": stats}


def _stats_delta(before: dict, after: dict) -> dict:
    executions = after["execution_count"] - before["execution_count"]

    def ns(name: str) -> float:
        return after["inference_stats"][name]["ns"] - before["inference_stats"][name]["ns"]

    per = (lambda value: round(value / executions / 1e6, 3)) if executions else (lambda value: None)
    compute = ns("compute_input") + ns("compute_infer") + ns("compute_output")
    return {"executions": executions, "requests": after["inference_count"] - before["inference_count"],
            "compute_ms": round(compute / 1e6, 1), "compute_ms_per_execution": per(compute),
            "queue_ms_per_execution": per(ns("queue"))}


# --- the engine-direct peer (its own process) ---------------------------------------------------


def engine_direct(engine_dir: Path, tokenizer_dir: Path, args) -> dict:
    """Our engine through the in-flight batcher in this process, no Triton: same prompt, closed loop.

    Its own process, loaded on a passing thread like the server's stub (openmp_teams.py): the
    benchmark process has run torch on its main thread, and a second OpenMP team would slow it."""
    import torch
    from transformers import AutoTokenizer

    from llm_deploy.backends.torch.inflight import InflightBatcher
    from llm_deploy.backends.torch.llama import LlamaEngine
    from llm_deploy.backends.torch.openmp_teams import on_passing_thread
    from llm_deploy.bench.report import figure
    from llm_deploy.spec import TUTORIAL_PROMPT

    config = json.loads((engine_dir / "engine_config.json").read_text())
    generation = json.loads((engine_dir / "generation_config.json").read_text())
    end_id = generation.get("eos_token_id")
    end_id = end_id[0] if isinstance(end_id, list) else end_id
    prompt = AutoTokenizer.from_pretrained(tokenizer_dir)(TUTORIAL_PROMPT)["input_ids"]
    engine = on_passing_thread(lambda: LlamaEngine.load(
        engine_dir, getattr(torch, config["dtype"]), max_batch_size=args.max_batch_size,
        max_seq_len=config["max_input_len"] + config["max_output_len"]))
    batcher = InflightBatcher(engine, args.max_batch_size, config["max_input_len"], config["max_output_len"])
    batcher.start()
    try:
        def closed_loop(requests: int) -> dict:
            return asyncio.run(batcher_level(batcher, lambda index: prompt, end_id=end_id, max_tokens=args.max_tokens,
                                             concurrency=args.concurrency, requests=requests))

        closed_loop(4)  # warm-up
        before = batcher.stats
        level = closed_loop(args.requests)
        after = batcher.stats
    finally:
        batcher.stop()
    steps = after["steps"] - before["steps"]
    return {"concurrency": args.concurrency, "requests": level["requests"], "errors": level["errors"],
            "output_tokens": level["output_tokens"], "wall_s": level["wall_s"],
            "output_token_throughput_per_s": level["output_token_throughput_per_s"],
            "inter_token_latency_p50_ms": figure(level, "inter_token_latency_ms", "p50"),
            "time_to_first_token_p50_ms": figure(level, "time_to_first_token_ms", "p50"),
            "decode_ms_per_step": round(1000 * (after["decode_s"] - before["decode_s"]) / steps, 2),
            "mean_rows_per_step": round((after["decode_rows"] - before["decode_rows"]) / steps, 2),
            "torch_threads": torch.get_num_threads(), "floor": _floor(engine_dir)}


def _floor(engine_dir: Path) -> dict:
    """Weights read once per decode step at this machine's read bandwidth: what no step can beat."""
    import torch

    weight_bytes = sum(path.stat().st_size for path in engine_dir.glob("*.safetensors"))
    block = torch.ones(256 * 2**20 // 4)
    block.sum()
    started, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        block.sum()
    read_gbps = block.numel() * 4 * repeats / (time.perf_counter() - started) / 1e9
    return {"weight_bytes": weight_bytes, "read_GBps": round(read_gbps, 1),
            "ms_per_step": round(weight_bytes / read_gbps / 1e6, 2),
            "note": "the weights read once at the read bandwidth; at 16 rows a CPU step is bound by the "
                    "matrix products' arithmetic, not by this"}


if __name__ == "__main__":
    main()
