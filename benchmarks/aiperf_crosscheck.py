"""Cross-check our figures with NVIDIA's aiperf against the same running server and load.

One tritonserver (built-in SmolLM2 through the ensemble); the same requests (one fixed prompt,
fixed max_tokens, greedy so every answer is the same) at the same concurrency through the same
endpoint, /v2/models/ensemble/generate_stream. Runs alternate, ours, aiperf, ours, aiperf, ...,
ours, so each aiperf run is compared with the mean of the two runs of ours around it and machine
drift shows. Compared: TTFT p50, ITL p50 and output token throughput; agreement means within 5%.

Both sides use one definition (genai-perf's, see llm_deploy/bench/metrics.py). To tell a
difference of definitions from a difference of samples, our summarize() is also run on aiperf's
own raw records (its timestamps and texts, --export-level raw): on the same sample the two
definitions must give the same numbers.

Where live runs still differ, two things are recorded per run to say why: the client's own CPU
time (on 2 cores the server competes with its client for CPU), and the arrival pattern the
server saw: how many requests were admitted together (sent within 50 ms of each other, so their
prefills share a step) and how many other requests' prefills landed inside each request's decode
(each one stalls that request's next token). In-flight batching answers those patterns with
different TTFT and ITL, so a difference there is a difference of load, not of measurement.

What it found on a 2-core machine: aiperf's process tree (system controller, dataset, timing and
records managers, worker, record processor) burns about one core (41-49 CPU-s per run, against
0.3 CPU-s for our client), and a CPU-bound server using both cores slows down under it: Triton's
own request-duration counters rise 10-45% during aiperf runs. aiperf then measures a slower
server, correctly. So the server gets --server-threads (default: all cores but one) and the
clients the core left over; there TTFT and ITL agree within 5% and throughput within the drift
between two runs of our own client (5.9% in the recorded run, ours vary by up to 20% back to
back). benchmarks/results/aiperf_crosscheck_contended.json keeps the runs with both cores to the
server.

    python3 -m venv .cache/aiperf-venv && .cache/aiperf-venv/bin/pip install aiperf==0.13.0
    python benchmarks/aiperf_crosscheck.py   # writes benchmarks/results/aiperf_crosscheck.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _served import REPO_ROOT, bench_spec, deployed, write_result

AIPERF = REPO_ROOT / ".cache" / "aiperf-venv" / "bin" / "aiperf"
ARTIFACTS = REPO_ROOT / ".cache" / "aiperf-artifacts"
TOLERANCE_PCT = 5.0
COMPARED = ("ttft_p50_ms", "itl_p50_ms", "output_token_throughput_per_s")


TOGETHER_S = 0.05


def arrival_pattern(timings: list) -> dict:
    """What the server saw of a run's requests, from their send and response times.

    admitted_together: requests sent within TOGETHER_S of each one (itself included), mean;
    prefills_during_decode: other requests whose first token came between this one's first and
    last token, mean (each means a prefill step inside this request's decode);
    resend_gap_p50_ms: from a request's last token to the next request sent, median (a closed
    loop's think time: it decides where in the server's step cycle the next request lands);
    in_flight_at_send_mean: other requests in flight when each one was sent (concurrency - 1
    for a closed loop that refills its slots at once; lower means the load offered was lower).
    """
    done = [t for t in timings if t.response_times]
    if not done:
        return {}
    together = [sum(1 for o in done if abs(o.sent - t.sent) <= TOGETHER_S) for t in done]
    interrupts = [sum(1 for o in done if o is not t and t.response_times[0] < o.response_times[0] < t.response_times[-1])
                  for t in done]
    sends = sorted(t.sent for t in timings)
    gaps = [min(s for s in sends if s >= t.response_times[-1]) - t.response_times[-1]
            for t in done if sends[-1] >= t.response_times[-1]]
    in_flight = [sum(1 for o in done if o is not t and o.sent < t.sent <= o.response_times[-1]) for t in done]
    return {"admitted_together_mean": round(statistics.fmean(together), 2),
            "in_flight_at_send_mean": round(statistics.fmean(in_flight), 2),
            "prefills_during_decode_mean": round(statistics.fmean(interrupts), 2),
            "resend_gap_p50_ms": round(1000 * statistics.median(gaps), 1) if gaps else None}


def figures(summary: dict) -> dict:
    return {"errors": summary["errors"], "ttft_p50_ms": summary["time_to_first_token_ms"]["p50"],
            "itl_p50_ms": summary["inter_token_latency_ms"]["p50"],
            "inter_chunk_latency_p50_ms": summary["inter_chunk_latency_ms"]["p50"],
            "output_token_throughput_per_s": summary["output_token_throughput_per_s"],
            "output_sequence_length_p50": summary["output_sequence_length"]["p50"],
            "request_latency_p50_ms": summary["request_latency_ms"]["p50"], "wall_s": summary["wall_s"]}


async def our_client(server: dict, tokenizer, prompt: str, max_tokens: int, concurrency: int, requests: int,
                     warmup: int) -> dict:
    from llm_deploy.bench.metrics import count_output_tokens, summarize
    from llm_deploy.bench.stream_client import LoadClient, run_level
    from llm_deploy.bench.workload import BenchRequest

    request = BenchRequest(prompt, [], max_tokens)
    async with LoadClient("http_generate_stream", grpc_url=server["grpc_url"], http_url=server["http_url"]) as client:
        async def send(index: int):
            timing = await client.send(request, index)
            timing.output_tokens = count_output_tokens(tokenizer, timing.text)
            return timing

        await run_level(send, requests=warmup, concurrency=concurrency)
        cpu = time.process_time()
        timings, wall_s = await run_level(send, requests=requests, concurrency=concurrency)
        cpu = time.process_time() - cpu
    return {**figures(summarize(timings, wall_s)), "client_cpu_s": round(cpu, 2), **arrival_pattern(timings)}


def run_aiperf(server: dict, tokenizer_dir: Path, prompt: str, max_tokens: int, concurrency: int,
               requests: int, warmup: int, work: Path, niceness: int = 0) -> tuple[dict, Path]:
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"text": prompt}) + "\n" for _ in range(requests)))
    # Same body as our client sends; max_tokens fixed in the template so both ask for the same length.
    template = ('{"text_input": {{ text|tojson }}, "max_tokens": %d, "bad_words": "", "stop_words": "", '
                '"stream": true}' % max_tokens)
    artifacts = work / "artifacts"
    argv = [*(["nice", "-n", str(niceness)] if niceness else []), str(AIPERF), "profile", "--model", "ensemble", "--url", server["http_url"],
            "--endpoint-type", "template", "--custom-endpoint", "/v2/models/ensemble/generate_stream",
            "--streaming", "--extra-inputs", json.dumps({"payload_template": template, "response_field": "text_output"}),
            "--tokenizer", str(tokenizer_dir), "--input-file", str(dataset), "--custom-dataset-type", "single_turn",
            "--concurrency", str(concurrency), "--request-count", str(requests),
            "--warmup-request-count", str(warmup), "--ui-type", "none", "--artifact-dir", str(artifacts),
            "--random-seed", "0", "--export-level", "raw",
            # Triton's metrics live on another port than base_url/metrics, and there is no GPU: on a
            # 2-core machine these collectors only miss heartbeats and fail the run.
            "--no-server-metrics", "--no-gpu-telemetry"]
    started = time.time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"aiperf failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # aiperf's whole process tree (its workers are waited for), warm-up and start-up included.
    client_cpu_s = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    export = next(artifacts.rglob("profile_export_aiperf.json"))
    flat = json.loads(export.read_text())

    def get(name: str, stat: str):
        block = flat.get(name)
        return None if block is None else block.get(stat)

    return {"errors": get("error_request_count", "avg") or 0,
            "ttft_p50_ms": get("time_to_first_token", "p50"), "itl_p50_ms": get("inter_token_latency", "p50"),
            "inter_chunk_latency_p50_ms": get("inter_chunk_latency", "p50"),
            "output_token_throughput_per_s": get("output_token_throughput", "avg"),
            "output_sequence_length_p50": get("output_sequence_length", "p50"),
            "request_latency_p50_ms": get("request_latency", "p50"),
            "benchmark_duration_s": get("benchmark_duration", "avg"),
            "client_cpu_s_whole_run": round(client_cpu_s, 2),
            "seconds": round(time.time() - started, 1)}, artifacts


def ours_on_aiperf_records(artifacts: Path, tokenizer) -> dict:
    """Our summarize() on aiperf's own raw profiling records: same sample, our definitions."""
    from llm_deploy.bench.metrics import RequestTiming, count_output_tokens, summarize

    raw = next(artifacts.rglob("profile_export_raw.jsonl"))
    timings, first_start, last_end = [], None, None
    for line in raw.read_text().splitlines():
        record = json.loads(line)
        if record["metadata"]["benchmark_phase"] != "profiling":
            continue
        times, pieces = [], []
        for response in record.get("responses", []):
            text = _text_of(response)
            if text:
                times.append(response["perf_ns"])
                pieces.append(text)
        sent = record["start_perf_ns"]  # same clock as the responses' perf_ns
        timing = RequestTiming(sent=sent / 1e9, response_times=[t / 1e9 for t in times], text="".join(pieces))
        timing.output_tokens = count_output_tokens(tokenizer, timing.text)
        timings.append(timing)
        first_start = sent if first_start is None else min(first_start, sent)
        last_end = max(last_end or 0, times[-1] if times else sent)
    wall_s = (last_end - first_start) / 1e9
    return {**figures(summarize(timings, wall_s)), **arrival_pattern(timings), "records": len(timings),
            "raw_export": str(raw)}


def _text_of(response: dict) -> str:
    """text_output of one raw response: aiperf keeps the server-sent-event packets as received."""
    pieces = []
    for packet in response.get("packets", []):
        if packet.get("name") == "data":
            try:
                pieces.append(str(json.loads(packet["value"]).get("text_output", "")))
            except ValueError:
                continue
    return "".join(pieces)


def server_counters(metrics_url: str) -> dict[str, float]:
    """Triton's own cumulative counters for the ensemble: the referee between two clients."""
    url = metrics_url if metrics_url.endswith("/metrics") else f"{metrics_url}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()  # noqa: S310 - our own server
    counters = {}
    for name in ("nv_inference_request_success", "nv_inference_request_duration_us"):
        match = re.search(rf'^{name}{{[^}}]*model="ensemble"[^}}]*}} ([0-9.e+]+)\s*$', text, re.M)
        counters[name] = float(match.group(1)) if match else float("nan")
    return counters


def server_side(before: dict, after: dict) -> dict:
    """Mean server-side duration of the ensemble requests sent between two counter snapshots
    (warm-up requests included: the counters cannot tell them apart)."""
    n = after["nv_inference_request_success"] - before["nv_inference_request_success"]
    total_us = after["nv_inference_request_duration_us"] - before["nv_inference_request_duration_us"]
    return {"requests": n, "mean_request_duration_ms": round(total_us / n / 1000, 2) if n else None}


def agreement(ours: dict, theirs: dict) -> dict:
    out = {}
    for key in COMPARED:
        a, b = ours[key], theirs[key]
        diff = None if not a or b is None else round((b - a) / a * 100, 2)
        out[key] = {"ours": round(a, 3), "aiperf": round(b, 3), "aiperf_vs_ours_pct": diff,
                    "within_5pct": diff is not None and abs(diff) <= TOLERANCE_PCT}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="aiperf runs, each between two of ours")
    parser.add_argument("--server-threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="torch threads of the served model (OMP_NUM_THREADS); the rest of the cores are the clients'")
    parser.add_argument("--result-name", default="aiperf_crosscheck", help="benchmarks/results/<name>.json")
    parser.add_argument("--aiperf-nice", type=int, default=0,
                        help="run aiperf at this niceness, so its processes yield the CPU to the server")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from transformers import AutoTokenizer

    from llm_deploy.bench.workload import tokenizer_dir_of

    # Read by the model's torch in the server's stubs, which inherit this environment.
    os.environ["OMP_NUM_THREADS"] = str(args.server_threads)
    spec = bench_spec(benchmark_max_tokens=args.max_tokens)
    load = (args.max_tokens, args.concurrency, args.requests, args.warmup)
    work = ARTIFACTS / time.strftime("%Y%m%d-%H%M%S")
    ours_runs, aiperf_runs, same_sample = [], [], []
    with deployed(spec, f"aiperf-{int(time.time())}") as server:
        tokenizer_dir = tokenizer_dir_of(server["model_repo"])
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

        def ours() -> None:
            before = server_counters(server["metrics_url"])
            run = asyncio.run(our_client(server, tokenizer, spec.benchmark_prompt, *load))
            ours_runs.append({**run, "server_side": server_side(before, server_counters(server["metrics_url"]))})

        ours()
        for round_ in range(args.rounds):
            before = server_counters(server["metrics_url"])
            theirs, artifacts = run_aiperf(server, tokenizer_dir, spec.benchmark_prompt, *load, work / f"round{round_}",
                                           niceness=args.aiperf_nice)
            theirs["server_side"] = server_side(before, server_counters(server["metrics_url"]))
            aiperf_runs.append(theirs)
            same_sample.append(ours_on_aiperf_records(artifacts, tokenizer))
            ours()

    rounds = []
    for i, theirs in enumerate(aiperf_runs):
        around = {k: (ours_runs[i][k] + ours_runs[i + 1][k]) / 2 for k in COMPARED}
        rounds.append({"aiperf_vs_mean_of_ours_around_it": agreement(around, theirs),
                       "same_sample_ours_vs_aiperf": agreement(same_sample[i], theirs)})
    medians = {k: statistics.median(r["aiperf_vs_mean_of_ours_around_it"][k]["aiperf_vs_ours_pct"] for r in rounds)
               for k in COMPARED}
    write_result(args.result_name, {
        "endpoint": "/v2/models/ensemble/generate_stream", "prompt": spec.benchmark_prompt,
        "max_tokens": args.max_tokens, "concurrency": args.concurrency, "requests": args.requests,
        "definitions": "genai-perf's on both sides: ITL = (request_latency - TTFT) / (OSL - 1) per request, "
                       "OSL = output text re-tokenized with the model's tokenizer, percentiles across requests",
        "ours": ours_runs, "aiperf": aiperf_runs, "ours_on_aiperf_raw_records": same_sample, "rounds": rounds,
        "median_aiperf_vs_ours_pct": medians,
        "all_within_5pct": all(abs(v) <= TOLERANCE_PCT for v in medians.values()),
        "tolerance_pct": TOLERANCE_PCT, "artifacts": str(work), "aiperf_nice": args.aiperf_nice,
        "server_threads": args.server_threads, "cpus": os.cpu_count(),
        "command": "python benchmarks/aiperf_crosscheck.py " + " ".join(sys.argv[1:]),
    })


if __name__ == "__main__":
    main()
