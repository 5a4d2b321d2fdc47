"""The twin at world_size 1 and 2 on this CPU machine, one after the other with the same load.

SmolLM2-135M-Instruct, float32, served through the ensemble by the DAG's own steps
(download_weights, build_engine, render_model_repo, start_server, benchmark, stop_server): at
world_size 2 the model is split over two ranks under mpirun, each with half the machine's cores
for its torch threads, joined by gloo (two all-reduces per layer per step). On a 2-core machine
this measures what tensor parallelism costs where it cannot pay (the cores are the same ones),
not a speed-up: the figure is the price of the all-reduces and of the step broadcast.

    python benchmarks/tensor_parallel_cpu.py    # writes benchmarks/results/tensor_parallel_cpu.json
"""

from __future__ import annotations

import logging
import os
import sys
import time

from _served import bench_spec, deployed, write_result

LEVELS = [1, 4]


def measure(world_size: int) -> dict:
    from llm_deploy.steps.benchmark import benchmark

    spec = bench_spec(world_size=world_size, max_batch_size=4, max_input_len=128, max_output_len=64, keep_engines=0,
                      benchmark_concurrency_levels=LEVELS, benchmark_requests=16, benchmark_max_tokens=48,
                      benchmark_warmup_requests=2, benchmark_duration_s=0, benchmark_hf_baseline=False)
    run_id = f"tensor_parallel_cpu-ws{world_size}-{int(time.time())}"
    with deployed(spec, run_id) as server:
        summary = benchmark(spec, server, run_id).to_xcom()
    import json
    from pathlib import Path

    report = json.loads(Path(summary["report_path"]).read_text())
    return {str(level["concurrency"]): {
        "output_tok_s": level["output_token_throughput_per_s"],
        "itl_p50_ms": level["inter_token_latency_ms"]["p50"],
        "ttft_p50_ms": level["time_to_first_token_ms"]["p50"],
        "requests": level["requests"], "errors": level["errors"],
    } for level in report["sweep"]["grpc_ensemble"]}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load_before = os.getloadavg()[0]
    figures = {f"world_size_{n}": measure(n) for n in (1, 2)}
    one, two = figures["world_size_1"], figures["world_size_2"]
    write_result("tensor_parallel_cpu", {
        "what": "served output tok/s and ITL through the ensemble at world_size 1 and 2 (ranks under mpirun, gloo)",
        "command": "python benchmarks/tensor_parallel_cpu.py " + " ".join(sys.argv[1:]),
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "dtype": "float32", "cpus": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        **figures,
        "world_size_2_over_1_tok_s": {c: round(two[c]["output_tok_s"] / one[c]["output_tok_s"], 3) for c in one},
    })


if __name__ == "__main__":
    main()
