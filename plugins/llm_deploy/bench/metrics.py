"""Streaming LLM metrics with genai-perf's (and aiperf's) names and meanings.

Per request we keep the send time and the arrival time of every streamed response that carried
content (text, or token ids for the tensorrt_llm target). As genai-perf / aiperf define them:
  time_to_first_token     first content response - send
  request_latency         last content response - send
  output_sequence_length  output tokens of the request: its text re-tokenized with the served
                          model's tokenizer (text targets, as genai-perf does), or the token ids
                          received (tensorrt_llm target)
  inter_token_latency     PER REQUEST (request_latency - time_to_first_token) /
                          (output_sequence_length - 1); percentiles are taken across requests
  output_token_throughput total output tokens / benchmark wall time
  request_throughput      completed requests / benchmark wall time
and, under aiperf's name, the per-gap distribution:
  inter_chunk_latency     every gap between two consecutive content responses, pooled over all
                          requests. Not the same statistic: a p50 of gaps is not a p50 of
                          per-request means, and a response may carry several tokens or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestTiming:
    sent: float
    # Arrival of every response that carried content; empty responses (the final flag) are not here.
    response_times: list[float] = field(default_factory=list)
    text: str = ""
    error: str | None = None
    # Output tokens as genai-perf counts them; None = one token per content response (what
    # tensorrtllm_backend streams), used when nobody counted.
    output_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.output_tokens if self.output_tokens is not None else len(self.response_times)

    @property
    def ttft(self) -> float | None:
        return self.response_times[0] - self.sent if self.response_times else None

    @property
    def latency(self) -> float | None:
        return self.response_times[-1] - self.sent if self.response_times else None

    @property
    def itl(self) -> float | None:
        """genai-perf's inter-token latency of this request; None below two tokens or when the
        whole answer came in one response (then there is no decode window to divide)."""
        if self.tokens < 2 or len(self.response_times) < 2:
            return None
        return (self.latency - self.ttft) / (self.tokens - 1)

    @property
    def chunk_gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.response_times, self.response_times[1:])]


def count_output_tokens(tokenizer, text: str, echoed_prompt_tokens: int = 0) -> int:
    """Tokens in ``text`` as genai-perf/aiperf count them (no special tokens added); minus a prompt
    the endpoint echoed before the completion."""
    return max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) - echoed_prompt_tokens, 0)


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
        "inter_chunk_latency_ms": stats([g for t in ok for g in t.chunk_gaps], 1000),
        "request_latency_ms": stats([t.latency for t in ok if t.latency is not None], 1000),
        "output_sequence_length": stats([t.tokens for t in ok]),
        "output_token_throughput_per_s": round(tokens / wall_s, 3) if wall_s > 0 else None,
        "request_throughput_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "output_tokens": tokens,
        "responses": sum(len(t.response_times) for t in ok),
    }
