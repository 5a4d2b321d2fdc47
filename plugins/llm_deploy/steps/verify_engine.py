"""Tutorial step "check the engine with run.py": greedy-generate the tutorial's prompt.

The torch backend's check is stricter than eyeballing run.py's output: the engine, driven by
the same in-flight batcher that serves it, must produce exactly the tokens that Hugging Face
transformers' greedy ``generate`` produces from the source checkpoint in the same dtype.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.spec import TUTORIAL_PROMPT, DeploySpec

log = logging.getLogger(__name__)

# The tutorial runs run.py with --max_output_len 100.
RUN_PY_MAX_OUTPUT_LEN = 100


@dataclass(frozen=True)
class VerifyRecord:
    engine_dir: str
    prompt: str
    output_text: str
    tokens: int
    engine_seconds: float
    reference_seconds: float

    def to_xcom(self) -> dict:
        return asdict(self)


def verify_engine(spec: DeploySpec, engine: dict, checkpoint: dict) -> VerifyRecord:
    """Check the engine; mark it verified (a later run with the same hash skips download, build
    and verify) and let retention remove older engines of the model."""
    from llm_deploy import engine_cache

    record = _verify_trtllm(spec, engine, checkpoint) if spec.backend == "trtllm" else _verify_torch(spec, engine, checkpoint)
    engine_cache.mark_verified(engine["engine_dir"], record.to_xcom())
    engine_cache.apply_retention(spec, engine["engine_dir"])
    return record


def _verify_torch(spec: DeploySpec, engine: dict, checkpoint: dict) -> VerifyRecord:
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


def _verify_trtllm(spec: DeploySpec, engine: dict, checkpoint: dict) -> VerifyRecord:
    """The tutorial's check as it is: run.py on the tutorial's prompt must print an output text."""
    from transformers import AutoTokenizer

    from llm_deploy.backends.trtllm import pipeline
    from llm_deploy.runners import runner_for

    text, seconds = pipeline.verify_engine(spec, engine, checkpoint, runner_for(spec))
    tokens = len(AutoTokenizer.from_pretrained(checkpoint["checkpoint_dir"])(text, add_special_tokens=False)["input_ids"])
    log.info("prompt: %s", TUTORIAL_PROMPT)
    log.info("run.py output (%d tokens, %.2fs): %s", tokens, seconds, text)
    return VerifyRecord(engine["engine_dir"], TUTORIAL_PROMPT, text, tokens, round(seconds, 3), 0.0)


def engine_greedy(engine_dir: Path, prompt_ids: list[int], max_new: int, end_id: int | None) -> list[int]:
    """Run one request through the engine's in-flight batcher, exactly as the server does."""
    import torch

    from llm_deploy.backends.torch.inflight import GenerationRequest, InflightBatcher
    from llm_deploy.backends.torch.llama import LlamaEngine

    config = json.loads((engine_dir / "engine_config.json").read_text())
    engine = LlamaEngine.load(
        engine_dir,
        dtype=getattr(torch, config["dtype"]),
        max_batch_size=1,
        max_seq_len=len(prompt_ids) + max_new,
    )
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
