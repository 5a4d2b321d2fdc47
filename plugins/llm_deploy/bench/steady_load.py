"""Streaming requests kept in flight against a server while something else happens to it
(a promotion, a rollback, a restart): what clients saw meanwhile.

``StreamingLoad`` sends gRPC streaming requests through the ensemble, ``concurrency`` at a time,
one after another, in a thread of its own, until stopped; then it tells how many were sent,
how many failed and the longest silence between any two responses across all streams, over the
whole load or over a window of it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from llm_deploy.bench import stream_client
from llm_deploy.bench.metrics import RequestTiming
from llm_deploy.bench.workload import BenchRequest


@dataclass(frozen=True)
class LoadOutcome:
    sent: int
    failed: int
    errors: list[str]
    longest_gap_s: float
    responses: int


class StreamingLoad:
    def __init__(self, grpc_url: str, *, concurrency: int = 2, prompt: str = "Count to ten in French.",
                 max_tokens: int = 16):
        self.grpc_url, self.concurrency = grpc_url, concurrency
        self.request = BenchRequest(prompt=prompt, input_ids=[], max_tokens=max_tokens)
        self.timings: list[RequestTiming] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with stream_client.LoadClient("grpc_ensemble", grpc_url=self.grpc_url, http_url="") as client:
            counter = iter(range(1 << 30))

            async def worker() -> None:
                while not self._stop.is_set():
                    self.timings.append(await client.send(self.request, next(counter)))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def __enter__(self) -> StreamingLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def outcome(self, window: tuple[float, float] | None = None) -> LoadOutcome:
        """Over the whole load, or over requests that overlap ``window`` (perf_counter times)."""
        timings = self.timings
        if window:
            start, end = window
            timings = [t for t in timings if t.sent <= end and (t.response_times[-1] if t.response_times else t.sent) >= start]
        arrivals = sorted(t for timing in timings for t in [timing.sent, *timing.response_times])
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        errors = [t.error for t in timings if t.error]
        return LoadOutcome(sent=len(timings), failed=len(errors), errors=errors[:5],
                           longest_gap_s=round(max(gaps, default=0.0), 3),
                           responses=sum(len(t.response_times) for t in timings))
