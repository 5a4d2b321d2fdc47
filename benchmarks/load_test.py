"""Load test: N concurrent streaming clients for D seconds against the real deployment, on loopback.

Brings up what the DAG would (SmolLM2-135M-Instruct, torch backend, CPU; the engines volume's
checkpoint and engine are reused) on 127.0.0.1 only, then runs ``--clients`` closed-loop clients,
each sending its next streaming gRPC request through the ensemble as soon as the previous one
ends, until ``--duration`` seconds have passed; requests in flight then finish, and the server is
stopped. It stops by itself; nothing leaves the machine.

Every request ends in exactly one bucket: completed (the final response arrived, no error),
failed (the server or the transport reported an error) or lost (the stream ended without a final
response, or the request outlived ``--request-timeout``). sent == completed + failed + lost is
checked, not assumed. Server memory: the summed RSS of tritonserver and its python-backend stubs
(the server's process group) when ready, after a warm-up (the start of the measured load), every
10 s, and at the end; growth is end against the start of the load.

    python benchmarks/load_test.py                      # 64 clients, 300 s -> results/load_test.json
    python benchmarks/load_test.py --duration 30 --out /tmp/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _served import RESULTS, bench_spec, deployed  # noqa: E402

GOALS = {"lost_or_failed": 0, "rss_growth_pct_below": 10.0}
PROMPTS = [
    "How do I count to ten in French?",
    "Write a haiku about the sea.",
    "What is the capital of Italy?",
    "Explain in one sentence what a GPU does.",
]


@dataclass
class Counts:
    sent: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    tokens_received: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, bucket: str, message: str) -> None:
        setattr(self, bucket, getattr(self, bucket) + 1)
        key = f"{bucket}: {message[:160]}"
        self.errors[key] = self.errors.get(key, 0) + 1


def group_rss_kib(pgid: int) -> dict[str, int]:
    """Resident memory per live process of the server's group (tritonserver and its stubs), in KiB."""
    import psutil

    from llm_deploy import processes

    rss = {}
    for pid in processes.group_members(pgid):
        try:
            rss[f"{processes.program_name(pid)}[{pid}]"] = psutil.Process(pid).memory_info().rss // 1024
        except psutil.NoSuchProcess:
            continue
    return rss


async def one_request(stub, request, counts: Counts, timeout_s: float) -> None:
    async def requests():
        yield request

    counts.sent += 1
    final = False
    try:
        async with asyncio.timeout(timeout_s):
            async for response in stub.ModelStreamInfer(requests()):
                if response.error_message:
                    counts.error("failed", response.error_message)
                    return
                if response.infer_response.outputs:
                    counts.tokens_received += 1
                if response.infer_response.parameters["triton_final_response"].bool_param:
                    final = True
                    break
    except TimeoutError:
        counts.error("lost", f"no final response within {timeout_s:.0f} s")
        return
    except Exception as exc:  # noqa: BLE001 - counted, never dropped
        counts.error("failed", f"{type(exc).__name__}: {exc}")
        return
    if final:
        counts.completed += 1
    else:
        counts.error("lost", "the stream ended without a final response")


async def drive(grpc_url: str, *, clients: int, duration_s: float, max_tokens: int, timeout_s: float,
                pgid: int, counts: Counts, rss_samples: list[dict]) -> float:
    from tritonclient.grpc import service_pb2_grpc

    from llm_deploy.bench.stream_client import direct_channel, ensemble_request

    started = time.monotonic()
    async with direct_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def client(index: int) -> None:
            turn = 0
            while time.monotonic() - started < duration_s:
                prompt = PROMPTS[(index + turn) % len(PROMPTS)]
                await one_request(stub, ensemble_request(prompt, max_tokens, request_id=f"c{index}-{turn}"),
                                  counts, timeout_s)
                turn += 1

        async def sample_rss() -> None:
            while True:
                await asyncio.sleep(10)
                rss_samples.append({"t_s": round(time.monotonic() - started, 1),
                                    "kib": sum(group_rss_kib(pgid).values()), "sent": counts.sent})

        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(client(i) for i in range(clients)))
        sampler.cancel()
    return time.monotonic() - started


async def warm_up(grpc_url: str, requests: int, max_tokens: int, counts: Counts, timeout_s: float) -> None:
    """First requests allocate what the server keeps (KV slots, tokenizer caches): not growth."""
    from tritonclient.grpc import service_pb2_grpc

    from llm_deploy.bench.stream_client import direct_channel, ensemble_request

    async with direct_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(*(one_request(stub, ensemble_request(PROMPTS[i % len(PROMPTS)], max_tokens),
                                           counts, timeout_s) for i in range(requests)))


def run(*, clients: int = 64, duration_s: float = 300, max_tokens: int = 32, max_batch_size: int = 16,
        warmup_requests: int = 8, request_timeout_s: float = 600) -> dict:
    spec = bench_spec(max_batch_size=max_batch_size, server_host="127.0.0.1")
    counts = Counts()
    samples: list[dict] = []
    with deployed(spec, "load-test") as server:
        pgid = server["pgid"]
        rss_ready = group_rss_kib(pgid)
        warm = Counts()
        asyncio.run(warm_up(server["grpc_url"], warmup_requests, max_tokens, warm, request_timeout_s))
        rss_start = group_rss_kib(pgid)
        wall_s = asyncio.run(drive(server["grpc_url"], clients=clients, duration_s=duration_s,
                                   max_tokens=max_tokens, timeout_s=request_timeout_s, pgid=pgid,
                                   counts=counts, rss_samples=samples))
        rss_end = group_rss_kib(pgid)
    start_kib, end_kib = sum(rss_start.values()), sum(rss_end.values())
    figures = {
        "what": "closed-loop streaming gRPC clients through the ensemble, SmolLM2-135M-Instruct, torch backend on CPU, 127.0.0.1",
        "clients": clients,
        "duration_s": duration_s,
        "wall_s": round(wall_s, 1),
        "max_tokens": max_tokens,
        "max_batch_size": max_batch_size,
        "server_pgid": pgid,
        **{k: v for k, v in asdict(counts).items() if k != "errors"},
        "lost_or_failed": counts.failed + counts.lost,
        "accounted": counts.sent == counts.completed + counts.failed + counts.lost,
        "errors": counts.errors,
        "warmup": {"sent": warm.sent, "completed": warm.completed, "errors": warm.errors},
        "requests_per_s": round(counts.completed / wall_s, 2),
        "tokens_per_s": round(counts.tokens_received / wall_s, 1),
        "server_rss_kib": {"ready": sum(rss_ready.values()), "load_start": start_kib, "end": end_kib,
                           "peak": max([start_kib, end_kib] + [s["kib"] for s in samples]),
                           "processes_at_end": rss_end},
        "rss_growth_pct": round(100 * (end_kib - start_kib) / start_kib, 2) if start_kib else None,
        "rss_samples": samples,
        "goals": GOALS,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "note": "shared 2-core machine, other work running: throughput figures are noisy"},
    }
    figures["goals_met"] = (figures["accounted"] and figures["lost_or_failed"] == 0
                            and figures["rss_growth_pct"] is not None
                            and figures["rss_growth_pct"] < GOALS["rss_growth_pct_below"])
    return figures


def main(argv: list[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=300, help="seconds of load (no new requests after)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--request-timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS / "load_test.json")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 1024 and 0 < args.duration <= 3600):
        parser.error("--clients must be 1..1024 and --duration 0..3600 s: the test must stay bounded")
    figures = run(clients=args.clients, duration_s=args.duration, max_tokens=args.max_tokens,
                  max_batch_size=args.max_batch_size, request_timeout_s=args.request_timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written: {args.out}")
    return 0 if figures["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
