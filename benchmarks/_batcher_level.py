"""Shared by the benchmark scripts: one load level against our in-flight batcher in this process.

The benchmark's own closed loop (stream_client.run_level) and statistics (metrics.summarize), with
the batcher where the server would be, so an in-process peer is measured exactly as the served
figures beside it are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def batcher_level(batcher, prompt_of: Callable[[int], list[int]], *, end_id: int | None, max_tokens: int,
                        concurrency: int, requests: int) -> dict:
    """``requests`` requests at ``concurrency``, request i with prompt ``prompt_of(i)``; the end
    token is not counted as output, as served."""
    from llm_deploy.backends.torch.inflight import GenerationRequest
    from llm_deploy.bench.metrics import RequestTiming, summarize
    from llm_deploy.bench.stream_client import run_level

    loop = asyncio.get_running_loop()

    async def send(index: int) -> RequestTiming:
        timing, done = RequestTiming(sent=time.perf_counter()), loop.create_future()

        def on_token(token: int) -> None:  # on the batcher's thread
            if token != end_id:
                loop.call_soon_threadsafe(timing.response_times.append, time.perf_counter())

        batcher.submit(GenerationRequest(f"direct-{time.monotonic_ns()}-{index}", prompt_of(index), max_tokens,
                                         end_id, on_token,
                                         lambda error: loop.call_soon_threadsafe(done.set_result, error)))
        timing.error = await done
        return timing

    return summarize(*await run_level(send, requests=requests, concurrency=concurrency))
