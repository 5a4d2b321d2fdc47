"""The unserved baseline: the same checkpoint through Hugging Face transformers generate().

Greedy, on the same machine, right after the sweep (the server sits idle meanwhile), at batch 1
and at a static batch; min_new_tokens = max_new_tokens so every sequence produces exactly the
requested tokens and tokens/s is comparable to the served figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def hf_generate_throughput(checkpoint: Path, prompts: list[str], max_new_tokens: int, batch_size: int,
                           clock: Callable[[], float] = time.perf_counter) -> dict:
    """Output tokens/s of generate() over ``prompts`` in batches of ``batch_size``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    settings = dict(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        model.generate(**tokenizer(prompts[:1], return_tensors="pt"), **{**settings, "max_new_tokens": 2,
                                                                         "min_new_tokens": 2})  # warm-up
        tokens, started = 0, clock()
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
            out = model.generate(**batch, **settings)
            tokens += (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
        elapsed = clock() - started
    return {"batch_size": batch_size, "prompts": len(prompts), "output_tokens": int(tokens),
            "wall_s": round(elapsed, 4), "output_token_throughput_per_s": round(tokens / elapsed, 3),
            "torch_threads": torch.get_num_threads()}


def baseline(checkpoint: Path, prompts: list[str], max_new_tokens: int, static_batch: int) -> dict:
    """batch 1 over min(4, n) prompts, and one static batch of ``static_batch`` prompts."""
    batch_prompts = (prompts * static_batch)[:static_batch]
    return {"checkpoint": str(checkpoint), "max_new_tokens": max_new_tokens, "runs": {
        "batch_1": hf_generate_throughput(checkpoint, prompts[:4], max_new_tokens, 1),
        f"static_batch_{static_batch}": hf_generate_throughput(checkpoint, batch_prompts, max_new_tokens,
                                                               static_batch),
    }}
