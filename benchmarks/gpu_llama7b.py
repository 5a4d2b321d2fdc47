"""Llama-2-7B-shaped bf16 decode on one GPU: our LlamaEngine vs. HF eager generate vs. the copy floor.

Random weights built from the Llama-2-7B config on the GPU (nothing downloaded). The engine
reuses the HF model's parameter tensors (same storage), so both run the very same weights and
the GPU holds one copy. Figures are written as JSON to --out (and printed).

This measures the engine's decode step directly (engine.decode + greedy argmax + .tolist(), i.e.
exactly what InflightBatcher._decode_step does per turn), not through tritonserver.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from llm_deploy.backends.torch.llama import LlamaArch, LlamaEngine  # noqa: E402

LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
    "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
    "hidden_act": "silu",
}


def copy_bandwidth(nbytes: int = 2 << 30, iters: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second (the decode floor's denominator)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iters
    del src, dst
    return 2 * nbytes / seconds


def hf_generate(model, batch: int, prompt_len: int, new_tokens: int) -> dict:
    ids = torch.randint(0, LLAMA2_7B["vocab_size"], (batch, prompt_len), device="cuda")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    made = (out.shape[1] - prompt_len) * batch
    return {"batch": batch, "new_tokens": new_tokens, "seconds": seconds,
            "ms_per_step": 1000 * seconds / new_tokens, "tokens_per_s": made / seconds}


def engine_decode(engine: LlamaEngine, batch: int, prompt_len: int, steps: int) -> dict:
    """Prefill ``batch`` slots, then time ``steps`` greedy decode steps over all of them."""
    slots = list(range(batch))
    tokens = []
    for slot in slots:
        logits = engine.prefill(slot, torch.randint(0, 32000, (prompt_len,)).tolist())
        tokens.append(int(logits.argmax()))
    for _ in range(3):  # warm-up (also what a served request's first steps would be)
        tokens = engine.decode(slots, tokens).argmax(dim=-1).tolist()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        tokens = engine.decode(slots, tokens).argmax(dim=-1).tolist()
    seconds = time.perf_counter() - start
    for slot in slots:
        engine.release(slot)
    return {"batch": batch, "steps": steps, "ms_per_step": 1000 * seconds / steps,
            "tokens_per_s": batch * steps / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=512)
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    figures: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "command": " ".join(["python3", *sys.argv]), "path": "engine direct (not through tritonserver)",
                     "engine_decode": "CUDA graphs per (batch, kv) bucket"}
    figures["copy_bandwidth_GBps"] = copy_bandwidth() / 1e9

    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(LlamaConfig(**LLAMA2_7B), dtype=torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    figures["weight_bytes"] = weight_bytes
    figures["floor_ms_per_step"] = 1000 * weight_bytes / (figures["copy_bandwidth_GBps"] * 1e9)

    with torch.inference_mode():
        figures["hf_eager"] = [hf_generate(model, b, args.prompt_len, args.new_tokens) for b in (1, 64)]
        print(json.dumps(figures, indent=1), flush=True)
        # Same storage: no second copy of the weights on the GPU.
        tensors = dict(model.state_dict())
        engine = LlamaEngine._from_tensors(LlamaArch.from_config(LLAMA2_7B), tensors, dtype=torch.bfloat16,
                                           device="cuda", max_batch_size=64, max_seq_len=args.max_seq_len)
        figures["engine"] = [engine_decode(engine, b, args.prompt_len, args.new_tokens) for b in (1, 16, 64)]

    hf1, hf64 = figures["hf_eager"]
    e1, _, e64 = figures["engine"]
    figures["ratios"] = {
        "decode_c1_over_floor (goal <= 2.0)": e1["ms_per_step"] / figures["floor_ms_per_step"],
        "tok_s_c64_over_hf_b64 (goal >= 10)": e64["tokens_per_s"] / hf64["tokens_per_s"],
        "hf_b1_ms_per_step": hf1["ms_per_step"],
    }
    text = json.dumps(figures, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
