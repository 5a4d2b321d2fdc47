"""What clients see while a deployment swaps versions: requests in flight, failed, and the
longest silence between responses, during a promotion against the same load without one.

The real model (built-in SmolLM2-135M-Instruct) on the twin: version 1 serves with
max_batch_size 8; a steady streaming load runs at the given concurrency; first a stretch with
no change (the peer), then the promotion of a second engine (max_batch_size 16) into the
running server, then a rollback to version 1, each under the same load, in the same run. The
longest gap is the longest time no stream received anything, over the requests that overlap
the window. Then the deployment is stopped (0 processes left is checked).

    python benchmarks/promotion_swap.py     # writes benchmarks/results/promotion_swap.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from _served import bench_spec, free_ports, write_result


def candidate_repo(spec) -> str:
    from llm_deploy.steps.build_engine import build_engine
    from llm_deploy.steps.download_weights import download_weights
    from llm_deploy.steps.render_model_repo import render_model_repo

    weights = download_weights(spec, None).to_xcom()
    engine = build_engine(spec, weights).to_xcom()
    return render_model_repo(spec, engine, weights).to_xcom()["model_repo"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--peer-seconds", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from pathlib import Path

    from llm_deploy import processes
    from llm_deploy.backends.torch import deployment_server
    from llm_deploy.bench.steady_load import StreamingLoad
    from llm_deploy.deployment import lifecycle, record, server
    from llm_deploy.deployment.lifecycle import Settings

    first, second = bench_spec(max_batch_size=8), bench_spec(max_batch_size=16)
    repos = [candidate_repo(first), candidate_repo(second)]
    ports = free_ports()
    directory = record.deployment_dir(Path(first.engines_root), f"swap-benchmark-{int(time.time())}")
    deployed = first.model_copy(update={f"deployment_{name}": port for name, port in ports.items()})
    settings = Settings(backend="torch", host="127.0.0.1", http_port=ports["http_port"],
                        grpc_port=ports["grpc_port"], metrics_port=ports["metrics_port"], load_timeout_s=600,
                        launch=deployment_server.launch(deployed, server.repository_dir(directory)))
    load_before = os.getloadavg()[0]
    lifecycle.promote(directory, settings, Path(repos[0]), run_id="bench-1", qualification={})
    deployment = record.read(directory)
    windows = {}
    try:
        with StreamingLoad(deployment.grpc_url, concurrency=args.concurrency, max_tokens=args.max_tokens) as load:
            time.sleep(5)  # every stream busy
            started = time.perf_counter()
            time.sleep(args.peer_seconds)
            windows["no_change"] = (started, time.perf_counter())
            started = time.perf_counter()
            lifecycle.promote(directory, settings, Path(repos[1]), run_id="bench-2", qualification={})
            windows["promotion"] = (started, time.perf_counter())
            started = time.perf_counter()
            lifecycle.rollback(directory, None, run_id="bench-rollback")
            windows["rollback"] = (started, time.perf_counter())
            time.sleep(5)
        outcomes = {name: load.outcome(window) for name, window in windows.items()}
        whole = load.outcome()
    finally:
        pgid = record.read(directory).supervisor.get("pgid", 0)
        lifecycle.stop(directory, run_id="bench-stop")
    left = processes.group_members(pgid)
    figures = {
        name: {"seconds": round(end - start, 2), "requests_overlapping": outcomes[name].sent,
               "failed": outcomes[name].failed, "longest_gap_s": outcomes[name].longest_gap_s,
               "responses": outcomes[name].responses}
        for name, (start, end) in windows.items()}
    write_result("promotion_swap", {
        "what": "streaming clients during a promotion and a rollback vs the same load with no change",
        "command": "python benchmarks/promotion_swap.py " + " ".join(sys.argv[1:]),
        "model": first.model_id, "dtype": first.dtype, "cpus": os.cpu_count(),
        "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "versions": {"1": {"max_batch_size": 8}, "2": {"max_batch_size": 16}},
        "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "windows": figures,
        "whole_load": {"requests": whole.sent, "failed": whole.failed, "errors": whole.errors},
        "processes_left_after_stop": left,
    })


if __name__ == "__main__":
    main()
