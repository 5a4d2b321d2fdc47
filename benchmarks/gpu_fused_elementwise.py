"""The element-wise ops of a decode step compiled by torch.compile against eager, on one GPU.

1. agreement: each op of fused_elementwise.py, compiled, against its eager function in bf16, on
   decode (batch 1, 8, 64) and prefill (4 x 512) shapes: the fraction of elements that differ;
2. the element-wise work of 32 layers alone, captured in a CUDA graph: µs per replay, eager
   and compiled, and whether a replay equals the uncaptured run;
3. with ``--engine``: a Llama-2-7B-shaped bf16 engine (random weights) at batch 64, graphed
   decode ms/step with compile off and on (alternated, twice), the kernel profile of one step
   each way, and eager against compiled logits and greedy tokens on 16 prompts.

    OUT=/tmp python3 benchmarks/gpu_fused_elementwise.py --engine

Results: benchmarks/results/gpu_fused_elementwise_h200.json.
"""
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from llm_deploy.backends.torch import fused_elementwise as fe  # noqa: E402
from llm_deploy.backends.torch.cuda_graphs import warm_up_on_side_stream  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp"))
report = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}


def save(key, value):
    report[key] = value
    (OUT / "fe_gpu.json").write_text(json.dumps(report, indent=1))
    print("---", key, json.dumps(value)[:3000], flush=True)


def args_for(batch, tokens=None, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(0)
    lead = (batch,) if tokens is None else (batch, tokens)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda").to(dtype)  # noqa: E731
    qkv = r(*lead, 96 * 128)
    qk = qkv[..., :64 * 128].view(*lead, 64, 128)
    cs = (batch, 1, 128) if tokens is None else (1, tokens, 1, 128)
    x, d, w = r(*lead, 4096), r(*lead, 4096), 1 + 0.1 * r(4096)
    return {"rms_norm": (x, w.to(dtype), 1e-5), "add_rms_norm": (x, d, w.to(dtype), 1e-5),
            "rope_qk": (qk, r(*cs), r(*cs)), "silu_mul": (r(*lead, 2 * 11008),)}


def agreement():
    ops = fe.ElementwiseOps("cuda")
    out = {}
    for label, kw in [("decode_b64", dict(batch=64)), ("decode_b1", dict(batch=1)),
                      ("decode_b8", dict(batch=8)), ("prefill_4x512", dict(batch=4, tokens=512))]:
        for name, a in args_for(**kw).items():
            eager, comp = fe.EAGER_OPS[name](*a), getattr(ops, name)(*a)
            eager = eager if isinstance(eager, tuple) else (eager,)
            comp = comp if isinstance(comp, tuple) else (comp,)
            out[f"{label}/{name}"] = [{"mismatch_frac": (e != c).float().mean().item(),
                                       "max_abs": (e.float() - c.float()).abs().max().item()}
                                      for e, c in zip(eager, comp)]
    out["still_compiled"] = ops.compiled
    return out


def layer_graph_us(ops, batch=64, layers=32, calls=5):
    """Replay time of a CUDA graph of only the step's element-wise work, ``layers`` times."""
    a = args_for(batch)
    x, d, w, _ = a["add_rms_norm"]
    qk, cos, sin = a["rope_qk"]
    gu = a["silu_mul"][0]

    def run():
        y = x
        for _ in range(layers):
            y, h = ops.add_rms_norm(y, d, w, 1e-5)
            q = ops.rope_qk(qk, cos, sin)
            y, h = ops.add_rms_norm(y, d, w, 1e-5)
            m = ops.silu_mul(gu)
        return y, h, q, m

    expected = run()
    stream = warm_up_on_side_stream(run)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        graph.capture_begin()
        got = run()
        graph.capture_end()
    torch.cuda.synchronize()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    same = all(torch.equal(e, g) for e, g in zip(expected, got))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls * 10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return {"us_per_32_layers": 1000 * start.elapsed_time(end) / (calls * 10), "replay_equals_first_run": same,
            "compiled": ops.compiled}


def engine_phase():
    from gpu_llama7b import LLAMA2_7B
    from gpu_triton_llama7b import engine_decode, kernel_profile, random_prompts
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_deploy.backends.torch.llama import LlamaArch, LlamaEngine

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(LlamaConfig(**LLAMA2_7B), dtype=torch.bfloat16).eval()
    tensors = dict(model.state_dict())
    engine = LlamaEngine._from_tensors(LlamaArch.from_config(LLAMA2_7B), tensors, dtype=torch.bfloat16,
                                       device="cuda", max_batch_size=64, max_seq_len=256)
    results = {}
    with torch.inference_mode():
        for flag in ("0", "1", "0", "1"):
            os.environ[fe.COMPILE_ENV] = flag
            started = time.perf_counter()
            engine.enable_graphed_decode(capture=True)
            runs = [engine_decode(engine, random_prompts(b, 128, b), 30) for b in (64,)]
            runs.append({"wall_s_incl_capture": time.perf_counter() - started,
                         "compiled": engine._graphed._ops.compiled})
            results.setdefault(f"compile={flag}", []).append(runs)
            save("engine", results)
        for flag in ("0", "1"):
            os.environ[fe.COMPILE_ENV] = flag
            engine.enable_graphed_decode(capture=True)
            prof = kernel_profile(engine, random_prompts(64, 128, 7))
            results[f"profile compile={flag}"] = prof
            save("engine", results)
        # Same prompts, both paths: do greedy tokens and logits agree?
        logits = {}
        for flag in ("0", "1"):
            os.environ[fe.COMPILE_ENV] = flag
            engine.enable_graphed_decode(capture=True)
            prompts = random_prompts(16, 100, 3)
            slots = list(range(16))
            first = engine.prefill_many(slots, prompts)
            tokens = first.argmax(-1).tolist()
            second = engine.decode(slots, tokens)
            logits[flag] = (first.clone(), second.clone())
            for s in slots:
                engine.release(s)
        cmp = {}
        for i, name in enumerate(("prefill", "decode")):
            a, b = logits["0"][i], logits["1"][i]
            cmp[name] = {"max_abs": (a - b).abs().max().item(),
                         "argmax_agree": (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
                         "logit_scale": a.abs().max().item()}
        results["eager_vs_compiled_logits"] = cmp
        save("engine", results)


save("has_emulate_precision_casts", fe._inductor_options())
t = time.perf_counter()
save("agreement", agreement())
save("first_compile_s", time.perf_counter() - t)
save("elementwise_graph", {"eager": layer_graph_us(fe.ElementwiseOps("cpu")),
                           "compiled": layer_graph_us(fe.ElementwiseOps("cuda"))})
if "--engine" in sys.argv:
    engine_phase()
