"""Served tokens/s at concurrency 16 ÷ HF transformers generate() tokens/s at batch 1.

Same model (built-in SmolLM2-135M-Instruct), same machine, same run: the served figure comes
from the benchmark step itself (streaming gRPC through the ensemble, closed loop at concurrency
16), then, with the server idle, HF generate() greedy at batch 1 and at a static batch of 8.
Goal: ≥ 6x on a 2-core machine (a static batch of 8 alone reaches about 4x, so in-flight
batching has to beat it).

    python benchmarks/served_vs_hf.py          # writes benchmarks/results/served_vs_hf.json
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from _served import bench_spec, deployed, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="served requests at that concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16, help="engine's in-flight batch slots")
    parser.add_argument("--static-batch", type=int, default=8, help="HF generate() static batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from llm_deploy.bench.hf_baseline import baseline
    from llm_deploy.bench.workload import tokenizer_dir_of
    from llm_deploy.steps.benchmark import benchmark

    spec = bench_spec(max_batch_size=args.max_batch_size, benchmark_max_tokens=args.max_tokens,
                      benchmark_concurrency_levels=[args.concurrency], benchmark_requests=args.requests,
                      benchmark_warmup_requests=4, benchmark_duration_s=0, benchmark_hf_baseline=False)
    run_id = f"served_vs_hf-{int(time.time())}"
    with deployed(spec, run_id) as server:
        summary = benchmark(spec, server, run_id).to_xcom()
        checkpoint = tokenizer_dir_of(server["model_repo"])
    # Server stopped: HF runs alone on the same cores.
    hf = baseline(checkpoint, [spec.benchmark_prompt] * 4, args.max_tokens, static_batch=args.static_batch)
    served = summary["output_token_throughput_per_s"]
    batch_1 = hf["runs"]["batch_1"]["output_token_throughput_per_s"]
    static = hf["runs"][f"static_batch_{args.static_batch}"]["output_token_throughput_per_s"]
    write_result("served_vs_hf", {
        "what": "served output tok/s at concurrency N / HF generate batch-1 output tok/s",
        "model": spec.model_id, "cpus": os.cpu_count(), "max_tokens": args.max_tokens,
        "served": {"concurrency": args.concurrency, "requests": summary["requests"], "errors": summary["errors"],
                   "output_token_throughput_per_s": served,
                   "time_to_first_token_p50_ms": summary["time_to_first_token_p50_ms"],
                   "inter_token_latency_p50_ms": summary["inter_token_latency_p50_ms"],
                   "report": summary["report_path"]},
        "hf_generate": hf["runs"],
        "served_over_hf_batch_1": round(served / batch_1, 2),
        "hf_static_batch_over_hf_batch_1": round(static / batch_1, 2),
        "goal": 6.0,
    })


if __name__ == "__main__":
    main()
