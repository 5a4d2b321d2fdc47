"""Streaming LLM metrics with genai-perf's names and meanings.

Per request we keep the send time and the arrival time of every streamed response (one token
each, as tensorrtllm_backend streams). From those:
  time_to_first_token   first response - send
  inter_token_latency   (last response - first response) / (output tokens - 1)
  request_latency       last response - send
  output_sequence_length  responses carrying a token
  output_token_throughput total output tokens / benchmark wall time
  request_throughput    completed requests / benchmark wall time
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestTiming:
    sent: float
    token_times: list[float] = field(default_factory=list)
    text: str = ""
    error: str | None = None
    # Set when responses do not map one-to-one to tokens (non-streaming /generate): then the
    # caller counts the output tokens with the tokenizer.
    counted_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.counted_tokens if self.counted_tokens is not None else len(self.token_times)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.sent if self.token_times else None

    @property
    def itl(self) -> float | None:
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)

    @property
    def latency(self) -> float | None:
        return self.token_times[-1] - self.sent if self.token_times else None


def stats(values: list[float], scale: float = 1.0) -> dict[str, float] | None:
    """mean/min/max/p50/p90/p99 of ``values`` times ``scale`` (e.g. 1000 for ms)."""
    if not values:
        return None
    arr = np.asarray(values, dtype=float) * scale
    out = {"avg": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}
    out.update({f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES})
    return {k: round(v, 4) for k, v in out.items()}


def summarize(timings: list[RequestTiming], wall_s: float) -> dict:
    ok = [t for t in timings if t.error is None]
    tokens = sum(t.tokens for t in ok)
    return {
        "requests": len(timings),
        "completed": len(ok),
        "errors": len(timings) - len(ok),
        "error_messages": sorted({t.error for t in timings if t.error})[:10],
        "wall_s": round(wall_s, 4),
        "time_to_first_token_ms": stats([t.ttft for t in ok if t.ttft is not None], 1000),
        "inter_token_latency_ms": stats([t.itl for t in ok if t.itl is not None], 1000),
        "request_latency_ms": stats([t.latency for t in ok if t.latency is not None], 1000),
        "output_sequence_length": stats([t.tokens for t in ok]),
        "output_token_throughput_per_s": round(tokens / wall_s, 3) if wall_s > 0 else None,
        "request_throughput_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "output_tokens": tokens,
    }
