"""Cross-check our figures with NVIDIA's aiperf against the same running server and load.

One tritonserver (built-in SmolLM2 through the ensemble); the same requests (one fixed prompt,
fixed max_tokens, greedy so every answer is the same length) at the same concurrency through the
same endpoint, /v2/models/ensemble/generate_stream. Our client runs, then aiperf (0.13.0, in
its own venv: its pins differ from Airflow's), then our client again, so machine drift between
runs shows. Compared: TTFT p50, ITL p50 and output token throughput; agreement means within 5%.

    .cache/aiperf-venv must hold aiperf:  python3 -m venv .cache/aiperf-venv &&
        .cache/aiperf-venv/bin/pip install aiperf==0.13.0
    python benchmarks/aiperf_crosscheck.py   # writes benchmarks/results/aiperf_crosscheck.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path

from _served import REPO_ROOT, bench_spec, deployed, write_result

AIPERF = REPO_ROOT / ".cache" / "aiperf-venv" / "bin" / "aiperf"
TOLERANCE_PCT = 5.0


async def our_client(server: dict, prompt: str, max_tokens: int, concurrency: int, requests: int,
                     warmup: int) -> dict:
    from llm_deploy.bench.metrics import summarize
    from llm_deploy.bench.stream_client import LoadClient, run_level
    from llm_deploy.bench.workload import BenchRequest

    request = BenchRequest(prompt, [], max_tokens)
    async with LoadClient("http_generate_stream", grpc_url=server["grpc_url"], http_url=server["http_url"]) as client:
        await run_level(lambda i: client.send(request, i), requests=warmup, concurrency=concurrency)
        timings, wall_s = await run_level(lambda i: client.send(request, i), requests=requests,
                                          concurrency=concurrency)
    s = summarize(timings, wall_s)
    return {"errors": s["errors"], "ttft_p50_ms": s["time_to_first_token_ms"]["p50"],
            "itl_p50_ms": s["inter_token_latency_ms"]["p50"],
            "output_token_throughput_per_s": s["output_token_throughput_per_s"],
            "output_sequence_length_p50": s["output_sequence_length"]["p50"],
            "request_latency_p50_ms": s["request_latency_ms"]["p50"], "wall_s": s["wall_s"]}


def run_aiperf(server: dict, tokenizer_dir: Path, prompt: str, max_tokens: int, concurrency: int,
               requests: int, warmup: int, work: Path) -> dict:
    dataset = work / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"text": prompt}) + "\n" for _ in range(requests)))
    # Same body as our client sends; max_tokens fixed in the template so both ask for the same length.
    template = ('{"text_input": {{ text|tojson }}, "max_tokens": %d, "bad_words": "", "stop_words": "", '
                '"stream": true}' % max_tokens)
    artifacts = work / "artifacts"
    argv = [str(AIPERF), "profile", "--model", "ensemble", "--url", server["http_url"],
            "--endpoint-type", "template", "--custom-endpoint", "/v2/models/ensemble/generate_stream",
            "--streaming", "--extra-inputs", json.dumps({"payload_template": template, "response_field": "text_output"}),
            "--tokenizer", str(tokenizer_dir), "--input-file", str(dataset), "--custom-dataset-type", "single_turn",
            "--concurrency", str(concurrency), "--request-count", str(requests),
            "--warmup-request-count", str(warmup), "--ui-type", "none", "--artifact-dir", str(artifacts),
            "--random-seed", "0"]
    started = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"aiperf failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    export = next(artifacts.rglob("profile_export_aiperf.json"))
    metrics = json.loads(export.read_text())
    flat = metrics.get("records", metrics)

    def get(name: str, stat: str):
        block = flat.get(name)
        return None if block is None else block.get(stat)

    return {"ttft_p50_ms": get("time_to_first_token", "p50"), "itl_p50_ms": get("inter_token_latency", "p50"),
            "output_token_throughput_per_s": get("output_token_throughput", "avg"),
            "output_sequence_length_p50": get("output_sequence_length", "p50"),
            "request_latency_p50_ms": get("request_latency", "p50"), "errors": get("error_request_count", "avg"),
            "export": str(export), "seconds": round(time.time() - started, 1)}


def server_counters(metrics_url: str) -> dict[str, float]:
    """Triton's own cumulative counters for the ensemble: the referee between two clients."""
    import re
    import urllib.request

    url = metrics_url if metrics_url.endswith("/metrics") else f"{metrics_url}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()  # noqa: S310
    counters = {}
    for name in ("nv_inference_request_success", "nv_inference_request_duration_us",
                 "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"):
        match = re.search(rf'^{name}{{[^}}]*model="ensemble"[^}}]*}} ([0-9.e+]+)\s*$', text, re.M)
        counters[name] = float(match.group(1)) if match else float("nan")
    return counters


def server_side(before: dict, after: dict) -> dict:
    """Mean server-side duration of the ensemble requests sent between two counter snapshots."""
    n = after["nv_inference_request_success"] - before["nv_inference_request_success"]
    return {"requests": n, "mean_request_duration_ms": round(
        (after["nv_inference_request_duration_us"] - before["nv_inference_request_duration_us"]) / n / 1000, 2)
        if n else None}


def agreement(ours: dict, theirs: dict) -> dict:
    out = {}
    for key in ("ttft_p50_ms", "itl_p50_ms", "output_token_throughput_per_s"):
        a, b = ours[key], theirs[key]
        diff = None if not a or b is None else round((b - a) / a * 100, 2)
        out[key] = {"ours": a, "aiperf": b, "aiperf_vs_ours_pct": diff,
                    "within_5pct": diff is not None and abs(diff) <= TOLERANCE_PCT}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from llm_deploy.bench.workload import tokenizer_dir_of

    spec = bench_spec(benchmark_max_tokens=args.max_tokens)
    load = (args.max_tokens, args.concurrency, args.requests, args.warmup)
    with deployed(spec, f"aiperf-{int(time.time())}") as server, tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = tokenizer_dir_of(server["model_repo"])
        snapshots = [server_counters(server["metrics_url"])]
        before = asyncio.run(our_client(server, spec.benchmark_prompt, *load))
        snapshots.append(server_counters(server["metrics_url"]))
        theirs = run_aiperf(server, tokenizer_dir, spec.benchmark_prompt, *load, Path(tmp))
        snapshots.append(server_counters(server["metrics_url"]))
        after = asyncio.run(our_client(server, spec.benchmark_prompt, *load))
        snapshots.append(server_counters(server["metrics_url"]))
    # Server-side means include warm-up requests (the counters cannot tell them apart).
    before["server_side"], theirs["server_side"], after["server_side"] = (
        server_side(a, b) for a, b in zip(snapshots, snapshots[1:]))
    ours = {k: (before[k] + after[k]) / 2 if isinstance(before[k], (int, float)) else before[k] for k in before}
    write_result("aiperf_crosscheck", {
        "endpoint": "/v2/models/ensemble/generate_stream", "prompt": spec.benchmark_prompt,
        "max_tokens": args.max_tokens, "concurrency": args.concurrency, "requests": args.requests,
        "ours_before": before, "aiperf": theirs, "ours_after": after,
        "agreement_vs_mean_of_ours": agreement(ours, theirs), "tolerance_pct": TOLERANCE_PCT,
    })


if __name__ == "__main__":
    main()
