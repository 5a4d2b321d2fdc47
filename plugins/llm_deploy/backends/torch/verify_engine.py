"""The torch backend's run.py check, stricter than eyeballing run.py's output.

The engine, driven by the same in-flight batcher that serves it, must produce exactly the tokens
that Hugging Face transformers' greedy ``generate`` produces from the source checkpoint in the
same dtype.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from llm_deploy.backends.torch.build_engine import ENGINE_CONFIG
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.records import VerifyRecord
from llm_deploy.spec import TUTORIAL_PROMPT, DeploySpec

log = logging.getLogger(__name__)

# The tutorial runs run.py with --max_output_len 100.
RUN_PY_MAX_OUTPUT_LEN = 100


def verify_engine(spec: DeploySpec, engine: dict, checkpoint: dict) -> VerifyRecord:
    from transformers import AutoTokenizer

    engine_dir = Path(engine["engine_dir"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint["checkpoint_dir"])
    prompt_ids = tokenizer(TUTORIAL_PROMPT)["input_ids"]
    max_new = min(RUN_PY_MAX_OUTPUT_LEN, spec.max_output_len)
    end_id = tokenizer.eos_token_id

    started = time.perf_counter()
    ours = engine_greedy(engine_dir, prompt_ids, max_new, end_id)
    engine_s = time.perf_counter() - started
    started = time.perf_counter()
    reference = reference_greedy(Path(checkpoint["checkpoint_dir"]), spec.dtype, prompt_ids, max_new, end_id)
    reference_s = time.perf_counter() - started

    text = tokenizer.decode(ours, skip_special_tokens=True)
    log.info("prompt: %s", TUTORIAL_PROMPT)
    log.info("engine output (%d tokens, %.2fs): %s", len(ours), engine_s, text)
    if ours != reference:
        expected = tokenizer.decode(reference, skip_special_tokens=True)
        diverge = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference)))
        raise NonRetryableError(
            f"engine output differs from transformers' greedy output at token {diverge}:\n"
            f"  engine:       {text!r}\n  transformers: {expected!r}"
        )
    log.info("matches transformers greedy output token for token (reference took %.2fs)", reference_s)
    return VerifyRecord(str(engine_dir), TUTORIAL_PROMPT, text, len(ours), round(engine_s, 3), round(reference_s, 3))


def engine_greedy(engine_dir: Path, prompt_ids: list[int], max_new: int, end_id: int | None) -> list[int]:
    """Run one request through the engine's in-flight batcher, exactly as the server does."""
    import torch

    from llm_deploy.backends.torch.llama import LlamaEngine

    config = json.loads((engine_dir / ENGINE_CONFIG).read_text())
    dtype, max_seq_len = getattr(torch, config["dtype"]), len(prompt_ids) + max_new
    world_size = config.get("tensor_parallel", 1)
    if world_size > 1:  # every rank in a process of its own, as the server runs them
        from llm_deploy.backends.torch import ranks

        with ranks.lead(engine_dir, world_size, dtype=dtype, max_batch_size=1, max_seq_len=max_seq_len) as engine:
            return _greedy_through_batcher(engine, config, prompt_ids, max_new, end_id)
    from llm_deploy.backends.torch.openmp_teams import on_passing_thread

    # Not on this thread, as in the server: the batcher's thread is then the only OpenMP team.
    engine = on_passing_thread(lambda: LlamaEngine.load(engine_dir, dtype=dtype, max_batch_size=1,
                                                        max_seq_len=max_seq_len))
    return _greedy_through_batcher(engine, config, prompt_ids, max_new, end_id)


def _greedy_through_batcher(engine, config: dict, prompt_ids: list[int], max_new: int,
                            end_id: int | None) -> list[int]:
    from llm_deploy.backends.torch.inflight import GenerationRequest, InflightBatcher

    batcher = InflightBatcher(engine, 1, config["max_input_len"], config["max_output_len"])
    tokens: list[int] = []
    done = threading.Event()
    outcome: list[str | None] = []

    def finish(error: str | None) -> None:
        outcome.append(error)
        done.set()

    batcher.start()
    try:
        batcher.submit(GenerationRequest("verify", list(prompt_ids), max_new, end_id, tokens.append, finish))
        if not done.wait(timeout=600):
            raise StepError("engine produced no result within 600s")
    finally:
        batcher.stop()
    if outcome[0] is not None:
        raise StepError(f"engine failed to generate: {outcome[0]}")
    return tokens


def reference_greedy(checkpoint_dir: Path, dtype_name: str, prompt_ids: list[int], max_new: int, end_id: int | None) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=getattr(torch, dtype_name))
    model.eval()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new,
            eos_token_id=end_id,
            pad_token_id=end_id,
        )
    return out[0, len(prompt_ids):].tolist()
