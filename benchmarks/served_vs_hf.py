"""Served tokens/s at concurrency 16 ÷ HF transformers generate() tokens/s at batch 1.

Same model (built-in SmolLM2-135M-Instruct), same machine, same run: the served figure comes
from the benchmark step itself (streaming gRPC through the ensemble, closed loop at concurrency
16), then, with the server idle, HF generate() greedy at batch 1 and at a static batch of 8.
Goal: ≥ 6x on a 2-core machine (a static batch of 8 alone reaches about 4x, so in-flight
batching has to beat it). The engine gets 16 in-flight slots (max_batch_size 16) so that
concurrency 16 is served, not queued; HF also runs a static batch of 16 for the like-for-like
figure. Both sides run in float32 (the spec's default), greedy. About a minute on an idle 2-core
machine; the 1-minute load average before and after is recorded, since other work on the
machine skews both sides differently.

    python benchmarks/served_vs_hf.py          # writes benchmarks/results/served_vs_hf.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from _served import bench_spec, deployed, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="served requests at that concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16, help="engine's in-flight batch slots")
    parser.add_argument("--static-batch", type=int, nargs="+", default=[8, 16], help="HF generate() static batches")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from llm_deploy.bench.hf_baseline import hf_generate_throughput
    from llm_deploy.bench.workload import tokenizer_dir_of
    from llm_deploy.steps.benchmark import benchmark

    spec = bench_spec(max_batch_size=args.max_batch_size, benchmark_max_tokens=args.max_tokens,
                      benchmark_concurrency_levels=[args.concurrency], benchmark_requests=args.requests,
                      benchmark_warmup_requests=4, benchmark_duration_s=0, benchmark_hf_baseline=False)
    run_id = f"served_vs_hf-{int(time.time())}"
    load_before = os.getloadavg()[0]
    with deployed(spec, run_id) as server:
        summary = benchmark(spec, server, run_id).to_xcom()
        checkpoint = tokenizer_dir_of(server["model_repo"])
    # Server stopped: HF runs alone on the same cores.
    prompts = [spec.benchmark_prompt]
    hf = {"batch_1": hf_generate_throughput(checkpoint, prompts * 4, args.max_tokens, 1)}
    for size in args.static_batch:
        hf[f"static_batch_{size}"] = hf_generate_throughput(checkpoint, prompts * size, args.max_tokens, size)
    served = summary["output_token_throughput_per_s"]
    batch_1 = hf["batch_1"]["output_token_throughput_per_s"]
    write_result("served_vs_hf", {
        "what": "served output tok/s at concurrency N / HF generate batch-1 output tok/s",
        "command": "python benchmarks/served_vs_hf.py " + " ".join(sys.argv[1:]),
        "model": spec.model_id, "dtype": spec.dtype, "cpus": os.cpu_count(), "max_tokens": args.max_tokens,
        "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "served": {"concurrency": args.concurrency, "max_batch_size": args.max_batch_size,
                   "requests": summary["requests"], "errors": summary["errors"],
                   "output_token_throughput_per_s": served,
                   "time_to_first_token_p50_ms": summary["time_to_first_token_p50_ms"],
                   "inter_token_latency_p50_ms": summary["inter_token_latency_p50_ms"],
                   "report": summary["report_path"]},
        "hf_generate": hf,
        "served_over_hf_batch_1": round(served / batch_1, 2),
        **{f"hf_{name}_over_hf_batch_1": round(run["output_token_throughput_per_s"] / batch_1, 2)
           for name, run in hf.items() if name != "batch_1"},
        "goal": 6.0,
    })


if __name__ == "__main__":
    main()
