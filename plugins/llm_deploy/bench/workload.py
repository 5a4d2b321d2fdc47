"""The requests a benchmark sends: seeded synthetic prompts of chosen lengths, or one fixed prompt.

Like genai-perf's synthetic inputs, prompt and output lengths are drawn from a normal
distribution (mean, spread) with a fixed seed, so two runs of the same spec send the same load
and their figures can be compared. Prompts are built from the served model's own tokenizer:
random ordinary (non-special) token ids, decoded to text, so the ensemble's preprocessing sees
text of about the intended length and the tensorrt_llm target can send the ids themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    input_ids: list[int]
    max_tokens: int


def sample_lengths(rng: np.random.Generator, n: int, mean: int, spread: int, *, upper: int) -> list[int]:
    """n lengths ~ Normal(mean, spread), rounded and clipped to 1..upper."""
    if spread == 0:
        return [int(min(max(mean, 1), upper))] * n
    drawn = np.rint(rng.normal(mean, spread, size=n))
    return [int(v) for v in np.clip(drawn, 1, upper)]


def build_requests(tokenizer, n: int, *, prompt: str, input_len_mean: int, input_len_spread: int,
                   max_tokens: int, output_len_spread: int, max_input_len: int, max_output_len: int,
                   seed: int) -> list[BenchRequest]:
    """n requests; input_len_mean == 0 means "send ``prompt`` itself every time"."""
    rng = np.random.default_rng(seed)
    outputs = sample_lengths(rng, n, max_tokens, output_len_spread, upper=max_output_len)
    if input_len_mean == 0:
        ids = tokenizer(prompt)["input_ids"]
        return [BenchRequest(prompt, list(ids), out) for out in outputs]
    ordinary = _ordinary_token_ids(tokenizer)
    inputs = sample_lengths(rng, n, input_len_mean, input_len_spread, upper=max_input_len)
    requests = []
    for length, out in zip(inputs, outputs, strict=True):
        ids = [int(i) for i in rng.choice(ordinary, size=length)]
        requests.append(BenchRequest(tokenizer.decode(ids), ids, out))
    return requests


def spec_requests(spec, tokenizer) -> list[BenchRequest]:
    """The benchmark's requests for a DeploySpec: its prompt, lengths and seed."""
    return build_requests(
        tokenizer, spec.benchmark_requests, prompt=spec.benchmark_prompt,
        input_len_mean=spec.benchmark_input_len_mean, input_len_spread=spec.benchmark_input_len_spread,
        max_tokens=spec.benchmark_max_tokens, output_len_spread=spec.benchmark_output_len_spread,
        max_input_len=spec.max_input_len, max_output_len=spec.max_output_len, seed=spec.benchmark_seed)


def _ordinary_token_ids(tokenizer) -> np.ndarray:
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special])


def tokenizer_dir_of(model_repo: Path) -> Path:
    """The tokenizer the served preprocessing model uses, read from its config.pbtxt."""
    config = (Path(model_repo) / "preprocessing" / "config.pbtxt").read_text()
    match = re.search(r'key:\s*"tokenizer_dir"\s*value:\s*\{\s*string_value:\s*"([^"]+)"', config)
    if not match:
        raise ValueError(f"no tokenizer_dir parameter in {model_repo}/preprocessing/config.pbtxt")
    return Path(match.group(1))


def load_tokenizer(model_repo: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir_of(model_repo))
