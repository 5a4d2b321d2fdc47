"""The promotion gate: the candidate against the live version, on the same load, in the same run.

The qualification benchmark's figures cannot be held against the live version's from an earlier
run: the machine's speed drifts between runs by more than the differences that matter (two
identical quick starts differ by 15%). So the gate measures both now, alternating
(candidate, live, candidate, live ...) so that a drift during the comparison hits both alike,
and compares the medians of output tokens per second at the benchmark's top concurrency,
on the benchmark's own requests (same prompts, lengths and seed) through its first target.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from llm_deploy.bench import workload
from llm_deploy.bench.sweep import sweep_target
from llm_deploy.records import Record
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

ROUNDS = 2  # per side; each round is one level (the first also warms the server up)


@dataclass(frozen=True)
class Comparison(Record):
    # promote | refuse | first (no live version to compare with) | unchanged (the live version
    # serves this very model repository)
    verdict: str
    reason: str
    deployment: str
    live_version: int = 0
    concurrency: int = 0
    candidate_tok_s: list[float] = field(default_factory=list)
    live_tok_s: list[float] = field(default_factory=list)
    slowdown_pct: float | None = None  # how much slower the candidate is (negative: faster)
    threshold_pct: float = 0.0


def compare(spec: DeploySpec, candidate: dict, live: dict, *, deployment: str, live_version: int) -> Comparison:
    """Measure ``candidate`` and ``live`` (server records: grpc_url, http_url, log_path) alike."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workload.tokenizer_dir_of(Path(candidate["model_repo"])))
    concurrency = max(spec.benchmark_concurrency_levels)
    level = spec.model_copy(update={"benchmark_concurrency_levels": [concurrency]})
    requests = workload.spec_requests(spec, tokenizer)
    target = spec.benchmark_targets[0]
    figures: dict[str, list[float]] = {"candidate": [], "live": []}
    warm = level.model_copy(update={"benchmark_warmup_requests": 0})
    for round_ in range(ROUNDS):
        for side, server in (("candidate", candidate), ("live", live)):
            # Warmed up once per side: the live server serves users meanwhile, so the gate adds
            # no more load to it than the measurement needs.
            entry = sweep_target(target, server, requests, level if round_ == 0 else warm, tokenizer)[0]
            if entry["errors"]:
                raise_failed(side, entry, server)
            figures[side].append(round(entry["output_token_throughput_per_s"] or 0.0, 2))
            log.info("gate round %d: %s %s c=%d: %.1f output tok/s", round_ + 1, side, target, concurrency,
                     figures[side][-1])
    cand, cur = statistics.median(figures["candidate"]), statistics.median(figures["live"])
    slowdown = round((cur - cand) / cur * 100, 1) if cur else 0.0
    threshold = spec.promotion_max_slowdown_pct
    if slowdown > threshold:
        verdict = "refuse"
        reason = (f"the candidate is {slowdown}% slower than live version {live_version} ({cand:.1f} vs {cur:.1f} "
                  f"output tok/s at c={concurrency}, medians of {ROUNDS} alternating rounds); the limit is "
                  f"promotion_max_slowdown_pct={threshold}")
    else:
        verdict = "promote"
        reason = (f"the candidate is {'%.1f%% slower than' % slowdown if slowdown > 0 else 'not slower than'} live "
                  f"version {live_version} ({cand:.1f} vs {cur:.1f} output tok/s at c={concurrency}), within "
                  f"promotion_max_slowdown_pct={threshold}")
    log.info("promotion gate: %s: %s", verdict, reason)
    return Comparison(verdict=verdict, reason=reason, deployment=deployment, live_version=live_version,
                      concurrency=concurrency, candidate_tok_s=figures["candidate"], live_tok_s=figures["live"],
                      slowdown_pct=slowdown, threshold_pct=threshold)


def raise_failed(side: str, entry: dict, server: dict) -> None:
    from llm_deploy.errors import StepError

    raise StepError(f"promotion gate: {entry['errors']} of {entry['requests']} requests to the {side} server failed; "
                    f"its log: {server.get('log_path', '')}")
