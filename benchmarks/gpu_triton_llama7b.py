"""Llama-2-7B-shaped bf16 served through tritonserver by the torch backend on one GPU, in one run.

1. the GPU's device-to-device copy bandwidth, and from it the decode floor (weights / bandwidth);
2. HF transformers eager ``generate`` at batch 1 and 64 on the same shapes (random weights built
   from the Llama-2-7B config on the GPU: nothing is downloaded);
3. our engine called directly (CUDA graphs, varlen attention; and the masked-bucket attention it
   replaced), with a kernel-time profile of one decode step and a check of its logits against
   the masked path and HF;
4. the same weights saved as an HF checkpoint on local disk, served by tritonserver with our
   ``tensorrt_llm`` python model (device "cuda" in its config), measured with our gRPC client
   straight at the tensorrt_llm model (token ids in, one streamed response per token, as
   upstream's benchmark_core_model.py): decode ms/step at concurrency 1, output tok/s at 16 and 64.

Between 2 and 3, the batcher phase: the engine at batch 64 with its element-wise ops compiled
and eager (``--batcher-compile``), then our in-flight batcher over the compiled one at
concurrency 64 with overlapped steps off and on, alternated: the serving loop without a server.
Served variants (``--variants``) restart tritonserver with other model options, e.g.
``auto,overlap=off,compile=0``.

``--kernels triton,flash`` runs phase 3 once per attention kernel (each pinned first in the
graphed decode's fallback order), and its logits check then also compares each kernel with flash
on the same step; ``--sweep`` then times the attention kernels alone on decode shapes (the Triton
split-KV kernel over block sizes, warps, stages and splits; flash's varlen on the folded form).

Every phase's figures go to --out as soon as they exist, so a failure late in the run keeps them;
a served variant whose warm-up fails stops there (--request-timeout-s) and leaves the stubs' Python
stacks (and py-spy's native ones, when py-spy is installed) next to --out.

On a lent GPU machine (Python 3.12, torch, numpy 2, no network), $SITE holds what is carried: the
nvidia-pytriton wheel's ``pytriton`` package, tritonclient, grpcio, protobuf, python-rapidjson and
pydantic (with pydantic-core, annotated-types, typing-inspection). The stubs need their own python
with numpy<2 (benchmarks/results/gpu_stub_probe_h200.json); torch comes from the machine's:

    python3 -m venv --without-pip /tmp/stubenv
    python3 -c "import torch,os;print(os.path.dirname(os.path.dirname(torch.__file__)))" \
        > /tmp/stubenv/lib/python3.12/site-packages/device-site.pth
    pip install --no-deps --target /tmp/stubenv/lib/python3.12/site-packages numpy==1.26.4
    LLM_DEPLOY_STUB_PYTHON=/tmp/stubenv/bin/python3 PYTHONPATH=$SITE \
        python3 benchmarks/gpu_triton_llama7b.py --out $OUT/gpu_triton_llama7b.json --variants auto,overlap=off

Results: benchmarks/results/gpu_triton_llama7b_h200.json; _repeat.json and _head.json are two more
runs (the second on the final code, on another H200 machine whose slower host made HF eager 1.5x
slower while the served figures moved by 3%: read the HF ratio with its host in mind).
_h100_triton_attention.json: ``--skip hf,served --kernels triton,flash --sweep`` on an H100
(_block64.json: the same, before the Triton kernel's block and split choice was tuned on its sweep).
_h100_compiled_overlap.json: ``--skip hf,engine,batcher --variants auto,capture_ahead=off,overlap=off``
on an H100, with the fused ops and overlapped steps (its auto variant lost its stub to a periodic
stack dump of the time, see StackDumps in tensorrt_llm_torch.py; overlap=off captured ahead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "plugins"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from gpu_llama7b import LLAMA2_7B, copy_bandwidth, hf_generate  # noqa: E402

from llm_deploy.backends.torch.llama import LlamaArch, LlamaEngine  # noqa: E402

MAX_BATCH = 64
START = time.perf_counter()


class Report:
    def __init__(self, path: Path, **head) -> None:
        self.path, self.figures = path, dict(head)

    def __setitem__(self, key: str, value) -> None:
        self.figures[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.figures, indent=1))
        print(f"--- {key}: {json.dumps(value)[:2000]}", flush=True)

    def phase(self, name: str, run):
        started = time.perf_counter()
        try:
            self[name] = run()
        except Exception as exc:  # noqa: BLE001 - one broken phase must not lose the others' figures
            traceback.print_exc()
            self[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"=== {name}: {time.perf_counter() - started:.1f}s", flush=True)


def batch_floors(weight_bytes: int, bandwidth_gbps: float, args) -> dict[str, float]:
    """ms a decode step cannot beat at batch 1, 16 and 64: the weights read once plus every row's
    K/V read at the run's mean context (prompt + half the new tokens), at the copy bandwidth."""
    kv_per_token = 2 * LLAMA2_7B["num_hidden_layers"] * LLAMA2_7B["num_key_value_heads"] * (
        LLAMA2_7B["hidden_size"] // LLAMA2_7B["num_attention_heads"]) * 2  # K and V, bf16
    context = args.prompt_len + args.new_tokens / 2
    return {str(batch): 1000 * (weight_bytes + batch * context * kv_per_token) / (bandwidth_gbps * 1e9)
            for batch in (1, 16, 64)}


def random_prompts(count: int, length: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    # Above the special tokens (0..2) of Llama's vocabulary.
    return torch.randint(3, LLAMA2_7B["vocab_size"], (count, length), generator=generator).tolist()


# --- engine called directly ------------------------------------------------------------------


def engine_decode(engine: LlamaEngine, prompts: list[list[int]], steps: int) -> dict:
    """Batched prefill of every prompt, then ``steps`` greedy decode steps, as the batcher runs them."""
    slots = list(range(len(prompts)))
    torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = engine.prefill_many(slots, prompts).argmax(dim=-1).tolist()
    prefill_s = time.perf_counter() - start
    for _ in range(3):  # warm-up: captures this width's graph
        tokens = engine.decode(slots, tokens).argmax(dim=-1).tolist()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        tokens = engine.decode(slots, tokens).argmax(dim=-1).tolist()
    seconds = time.perf_counter() - start
    for slot in slots:
        engine.release(slot)
    return {"batch": len(prompts), "steps": steps, "ms_per_step": 1000 * seconds / steps,
            "tokens_per_s": len(prompts) * steps / seconds, "prefill_ms": 1000 * prefill_s}


def batcher_direct(engine: LlamaEngine, args, *, overlap: bool, concurrency: int = MAX_BATCH,
                   count: int = 3 * MAX_BATCH) -> dict:
    """``count`` requests through our in-flight batcher at ``concurrency``, no server: the
    batcher's own host work per step, with steps overlapped or not (the peer that tells the
    served figures' Triton share from the batcher's)."""
    from _batcher_level import batcher_level

    from llm_deploy.backends.torch.inflight import InflightBatcher

    batcher = InflightBatcher(engine, max_batch_size=MAX_BATCH, max_input_len=args.prompt_len,
                              max_output_len=args.new_tokens, overlap=overlap)
    prompts = random_prompts(count, args.prompt_len, 17)
    batcher.start()
    try:
        level = asyncio.run(batcher_level(batcher, prompts.__getitem__, end_id=None, max_tokens=args.new_tokens,
                                          concurrency=concurrency, requests=count))
        stats = batcher.stats
    finally:
        batcher.stop()
    steps = max(stats["steps"], 1)
    return {"overlap": overlap, **level, "ms_per_step": 1000 * level["wall_s"] / steps,
            "rows_per_step": stats["decode_rows"] / steps, "stats": stats}


def kernel_profile(engine: LlamaEngine, prompts: list[list[int]]) -> dict:
    """GPU time per kernel of one uncaptured fast decode step (the kernels a graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    graphed = engine._graphed
    engine.enable_graphed_decode(capture=False)
    eager = engine._graphed
    try:
        slots = list(range(len(prompts)))
        tokens = engine.prefill_many(slots, prompts).argmax(dim=-1).tolist()
        engine.decode(slots, tokens)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            engine.decode(slots, tokens)
            torch.cuda.synchronize()
        for slot in slots:
            engine.release(slot)
    finally:
        engine._graphed = graphed
    rows = []
    total = 0.0
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if device_us and event.count:
            rows.append((event.key[:90], event.count, device_us / 1000))
    rows.sort(key=lambda row: -row[2])
    kernels = [r for r in rows if not r[0].startswith(("aten::", "cuda"))]
    total = sum(r[2] for r in kernels)
    return {"batch": len(prompts), "kernel_ms_total": total, "kernels": sum(r[1] for r in kernels),
            "attention_kernel": eager.kernel,
            "top": [{"kernel": k, "count": c, "ms": round(ms, 4)} for k, c, ms in kernels[:14]]}


def logits_check(engine: LlamaEngine, model, prompts: list[list[int]]) -> dict:
    """One decode step through varlen attention vs. the masked-bucket path vs. HF's forward."""
    slots = list(range(len(prompts)))
    first = engine.prefill_many(slots, prompts).argmax(dim=-1).tolist()
    varlen = engine.decode(slots, first)
    kernel = engine._graphed.kernel
    graphed = engine._graphed
    flash = None
    if kernel != "flash":  # the same step again through FlashAttention-2's varlen kernel
        for slot in slots:
            engine._lengths[slot] -= 1
        engine.enable_graphed_decode(capture=True)
        engine._graphed._kernels = ["flash", "efficient"]
        flash = engine.decode(slots, first)
    for slot in slots:  # the masked path re-runs the same step on the same cache
        engine._lengths[slot] -= 1
    engine.enable_graphed_decode(capture=True, attention="masked")
    masked = engine.decode(slots, first)
    engine._graphed = graphed
    for slot in slots:
        engine.release(slot)
    ids = torch.tensor([p + [t] for p, t in zip(prompts, first)], device="cuda")
    hf = model(ids).logits[:, -1].float()
    scale = hf.std().item()

    def compare(a, b):
        return {"max_abs_diff_over_logit_std": (a - b).abs().max().item() / scale,
                "argmax_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item()}

    result = {"batch": len(prompts), "kernel": kernel, "varlen_vs_masked": compare(varlen, masked),
              "varlen_vs_hf": compare(varlen, hf), "masked_vs_hf": compare(masked, hf)}
    if flash is not None:
        result["varlen_vs_flash"] = {**compare(varlen, flash), "max_abs_diff": (varlen - flash).abs().max().item(),
                                     "mean_abs_diff_over_logit_std": (varlen - flash).abs().mean().item() / scale}
    return result


def pin_kernels(engine: LlamaEngine, first: str) -> None:
    """Make ``first`` the varlen kernel every graphed decode of this engine tries first."""
    from llm_deploy.backends.torch.cuda_graphs import CUDA_KERNELS

    order = [first, *[k for k in CUDA_KERNELS if k != first]] if first in CUDA_KERNELS else [first]
    if first == "flash":  # the baseline as it was: no Triton kernel to fall back from
        order = ["flash", "efficient"]
    enable = engine.enable_graphed_decode

    def pinned(**options) -> None:
        enable(**options)
        engine._graphed._kernels = list(order)

    engine.enable_graphed_decode = pinned
    engine._graphed._kernels = list(order)


def engine_direct(model, args, kernel: str | None = None) -> dict:
    tensors = dict(model.state_dict())  # same storage as the HF model: no second copy
    engine = LlamaEngine._from_tensors(LlamaArch.from_config(LLAMA2_7B), tensors, dtype=torch.bfloat16,
                                       device="cuda", max_batch_size=MAX_BATCH,
                                       max_seq_len=args.prompt_len + args.new_tokens)
    if kernel is not None:
        pin_kernels(engine, kernel)
    out: dict = {"attention_kernel": None}
    with torch.inference_mode():
        out["varlen"] = [engine_decode(engine, random_prompts(b, args.prompt_len, b), args.new_tokens - 4)
                         for b in (1, 16, 64)]
        out["attention_kernel"] = engine._graphed.kernel
        out["profile"] = [kernel_profile(engine, random_prompts(b, args.prompt_len, 7)) for b in (1, 64)]
        out["logits_check"] = logits_check(engine, model, random_prompts(8, args.prompt_len, 11))
        engine.enable_graphed_decode(capture=True, attention="masked")
        prompts = random_prompts(64, args.prompt_len, 5)
        masked = []
        for b in (1, 64):
            slots = list(range(b))
            for slot, prompt in zip(slots, prompts):  # one eager prefill each: masked has no batched prefill
                engine.prefill(slot, prompt)
            masked.append(_decode_only(engine, slots, args.new_tokens - 4))
        out["masked_bucket_kv128"] = masked
    del engine, tensors
    torch.cuda.empty_cache()
    return out


def batcher_phase(model, args) -> dict:
    """The engine at batch 64 (its fused element-wise ops compiled, or not), then our batcher
    over it with steps overlapped and not, alternated: no server, same weights."""
    from llm_deploy.backends.torch import fused_elementwise

    out: dict = {}
    for compiled in args.batcher_compile.split(","):
        os.environ[fused_elementwise.COMPILE_ENV] = compiled
        tensors = dict(model.state_dict())  # the engine takes its tensors out of the dict it is given
        engine = LlamaEngine._from_tensors(LlamaArch.from_config(LLAMA2_7B), tensors, dtype=torch.bfloat16,
                                           device="cuda", max_batch_size=MAX_BATCH,
                                           max_seq_len=args.prompt_len + args.new_tokens)
        started = time.perf_counter()
        with torch.inference_mode():
            first = engine_decode(engine, random_prompts(MAX_BATCH, args.prompt_len, MAX_BATCH), args.new_tokens - 4)
            run = {"engine_b64": {**first, "first_run_s": time.perf_counter() - started},
                   "compiled": engine._graphed._ops.compiled}
            if compiled == "1":
                run["batcher"] = [batcher_direct(engine, args, overlap=overlap)
                                  for overlap in (False, True, False, True)]
        out[f"compile_{compiled}"] = run
        print(f"batcher phase, compile={compiled}: {json.dumps(run)[:800]}", flush=True)
        del engine, tensors
        torch.cuda.empty_cache()
    os.environ.pop(fused_elementwise.COMPILE_ENV, None)
    return out


def _decode_only(engine: LlamaEngine, slots: list[int], steps: int) -> dict:
    tokens = [1] * len(slots)
    for _ in range(3):
        tokens = engine.decode(slots, tokens).argmax(dim=-1).tolist()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        tokens = engine.decode(slots, tokens).argmax(dim=-1).tolist()
    seconds = time.perf_counter() - start
    for slot in slots:
        engine.release(slot)
    return {"batch": len(slots), "steps": steps, "ms_per_step": 1000 * seconds / steps,
            "tokens_per_s": len(slots) * steps / seconds}


# --- attention kernels alone -------------------------------------------------------------------


def _graph_time_us(run, calls: int = 20, replays: int = 5) -> float:
    """GPU time of one ``run()``, from a CUDA graph of ``calls`` of them (no launch overhead)."""
    from llm_deploy.backends.torch.cuda_graphs import warm_up_on_side_stream

    warm_up_on_side_stream(run)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            run()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return 1000 * start.elapsed_time(end) / (calls * replays)


def attention_sweep(bandwidth_GBps: float, budget_s: float) -> dict:
    """One layer's decode attention at Llama-2-7B's heads, Triton configs vs flash, on decode shapes."""
    from llm_deploy.backends.torch import cuda_graphs
    from llm_deploy.backends.torch.decode_attention import decode_attention, launch_config

    heads, dim, scale = 32, 128, 128 ** -0.5
    # (batch, cache length, shortest row, KV heads): the benchmark's own, long contexts, and GQA as
    # Llama-3-8B has it (8 KV heads), whose tl.dot path Triton's CPU interpreter cannot check in bf16.
    shapes = [(1, 256, 128, 32), (16, 256, 128, 32), (64, 256, 128, 32), (64, 4096, 2048, 32),
              (8, 4096, 2048, 32), (64, 256, 128, 8), (64, 4096, 2048, 8)]
    results = []
    for batch, max_len, low, kv_heads in shapes:
        generator = torch.Generator(device="cuda").manual_seed(batch)
        k_cache = torch.randn(MAX_BATCH + 1, kv_heads, max_len, dim, device="cuda", dtype=torch.bfloat16,
                              generator=generator)
        v_cache = torch.randn_like(k_cache)
        # Rows between ``low`` and the cache's end, as a batch part-way through its new tokens.
        lengths = torch.randint(low, max_len + 1, (batch,), device="cuda", generator=generator, dtype=torch.int32)
        q = torch.randn(batch, heads, dim, device="cuda", dtype=torch.bfloat16, generator=generator)
        moved = int(lengths.sum()) * kv_heads * dim * 2 * k_cache.element_size()
        starts = ((torch.arange(batch, device="cuda")[:, None] * kv_heads
                   + torch.arange(heads, device="cuda")[None, :] // (heads // kv_heads)) * max_len).flatten()
        cu_k = torch.cat([starts, starts[-1:] + max_len]).to(torch.int32)
        cu_q = torch.arange(batch * heads + 1, device="cuda", dtype=torch.int32)
        used_k = lengths.repeat_interleave(heads)
        want = cuda_graphs._flash(q.reshape(-1, 1, dim), k_cache.view(-1, 1, dim), v_cache.view(-1, 1, dim),
                                  cu_q, cu_k, used_k, max_len, scale).view(batch, heads, dim)
        row = {"batch": batch, "max_len": max_len, "kv_heads": kv_heads, "mean_len": float(lengths.float().mean()), "kv_bytes": moved,
               "default_block_n_splits": launch_config(batch, kv_heads, heads // kv_heads, max_len, q.device)}

        def figure(us: float) -> dict:
            return {"us": round(us, 2), "GBps": round(moved / us / 1e3, 1),
                    "of_copy_bw": round(moved / us / 1e3 / bandwidth_GBps, 3)}

        row["flash"] = figure(_graph_time_us(lambda: cuda_graphs._flash(
            q.reshape(-1, 1, dim), k_cache.view(-1, 1, dim), v_cache.view(-1, 1, dim), cu_q, cu_k, used_k,
            max_len, scale)))
        row["triton_default"] = figure(_graph_time_us(lambda: decode_attention(q, k_cache, v_cache, lengths, scale)))
        got = decode_attention(q, k_cache, v_cache, lengths, scale)
        row["triton_default"]["max_abs_diff_vs_flash"] = (got.float() - want.float()).abs().max().item()
        configs = []
        # Every config at batch 64 (the target); block size and split count alone at smaller batches.
        full = batch == 64
        for block_n in (32, 64, 128) if full else (64, 128):
            for warps in (2, 4, 8) if full else (4,):
                for stages in (1, 2, 3) if full else (2,):
                    for splits in sorted({1, 2, 4, 8, 16, row["default_block_n_splits"][1]}):
                        if splits > -(-max_len // block_n) or time.perf_counter() - START > budget_s:
                            continue
                        options = dict(block_n=block_n, num_warps=warps, num_stages=stages, splits=splits)
                        try:
                            us = _graph_time_us(lambda o=options: decode_attention(q, k_cache, v_cache, lengths,
                                                                                  scale, **o), calls=10, replays=3)
                        except Exception as exc:  # noqa: BLE001 - a config the compiler refuses is a figure too
                            configs.append({**options, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                            continue
                        configs.append({**options, **figure(us)})
        ok = sorted((c for c in configs if "us" in c), key=lambda c: c["us"])
        row["triton_best"] = ok[:6]
        row["configs_tried"] = len(configs)
        row["config_errors"] = [c for c in configs if "error" in c][:3]
        results.append(row)
        print(f"sweep {batch}x{max_len} kv {kv_heads}: flash {row['flash']} default {row['triton_default']} best {ok[:1]}",
              flush=True)
        k_cache = v_cache = None  # freed before the next shape allocates its own
        torch.cuda.empty_cache()
    return {"heads": heads, "head_dim": dim, "dtype": "bfloat16", "shapes": results}


# --- served through tritonserver ---------------------------------------------------------------


def save_checkpoint(model, directory: Path, args) -> dict:
    """An HF checkpoint of these weights plus the torch backend's engine_config.json."""
    started = time.perf_counter()
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(directory, max_shard_size="20GB")
    # No EOS: random weights would stop requests at random; every request runs to its budget.
    config = {**LLAMA2_7B, "torch_dtype": "bfloat16", "dtype": "bfloat16"}
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    (directory / "generation_config.json").unlink(missing_ok=True)
    (directory / "engine_config.json").write_text(json.dumps({
        "backend": "torch", "dtype": "bfloat16", "max_batch_size": MAX_BATCH,
        "max_input_len": args.prompt_len, "max_output_len": args.new_tokens, "world_size": 1,
    }))
    return {"dir": str(directory), "seconds": time.perf_counter() - started,
            "bytes": sum(p.stat().st_size for p in directory.glob("*.safetensors"))}


# A served variant's settings: model-config parameters of the tensorrt_llm model, or (compile)
# an environment variable of the server.
VARIANT_PARAMETERS = {"response_thread": "llm_deploy_response_thread", "overlap": "llm_deploy_overlap",
                      "capture_ahead": "llm_deploy_capture_ahead", "stack_dump_s": "llm_deploy_stack_dump_s"}
VARIANT_ENV = {"compile": "LLM_DEPLOY_TORCH_COMPILE"}


def parse_variant(text: str) -> dict[str, str]:
    """"auto" (the defaults) or settings joined by "+", e.g. "overlap=off+compile=0"."""
    if text == "auto":
        return {}
    settings = dict(item.split("=", 1) for item in text.split("+"))
    unknown = set(settings) - set(VARIANT_PARAMETERS) - set(VARIANT_ENV)
    if unknown:
        raise SystemExit(f"variant {text!r}: unknown settings {sorted(unknown)} "
                         f"(known: {sorted(VARIANT_PARAMETERS) + sorted(VARIANT_ENV)})")
    return settings


def render_core_model(engine_dir: Path, repo: Path, device: str, settings: dict[str, str], stacks: Path) -> Path:
    """The inflight_batcher_llm repository's tensorrt_llm model alone, its device set explicitly.

    The random-weight model has no tokenizer, so the pre/postprocessing models and the ensemble
    are left out; the client sends token ids, as upstream's benchmark_core_model.py does.
    """
    from llm_deploy.backends.torch import model_repo
    from llm_deploy.model_config import parse_model_config
    from llm_deploy.spec import DeploySpec

    spec = DeploySpec(backend="torch", dtype="bfloat16", max_batch_size=MAX_BATCH, engines_root=str(engine_dir.parent),
                      max_input_len=json.loads((engine_dir / "engine_config.json").read_text())["max_input_len"],
                      max_output_len=json.loads((engine_dir / "engine_config.json").read_text())["max_output_len"],
                      benchmark_max_tokens=16, benchmark_input_len_mean=16)
    context = model_repo.template_context(spec, engine_dir=engine_dir, tokenizer_dir=engine_dir, decoupled=True,
                                          exclude_input_in_output=True)
    context["device"] = device
    if repo.exists():
        shutil.rmtree(repo)
    (repo / "tensorrt_llm" / "1").mkdir(parents=True)
    config = repo / "tensorrt_llm" / "config.pbtxt"
    text = model_repo.render_template("tensorrt_llm", context)
    text += ('parameters: {\n  key: "llm_deploy_stack_dump_path"\n  value: {\n'
             f'    string_value: "{stacks}"\n  }}\n}}\n')
    settings = {"stack_dump_s": "20", **settings}  # every thread's stack every 20 s, unless the variant says
    for name, value in settings.items():  # A/B of the model's options (see tensorrt_llm_torch.py)
        if name in VARIANT_PARAMETERS:
            text += (f'parameters: {{\n  key: "{VARIANT_PARAMETERS[name]}"\n  value: {{\n'
                     f'    string_value: "{value}"\n  }}\n}}\n')
    config.write_text(text)
    parse_model_config(config)
    model_repo.copy_model_code("tensorrt_llm", repo / "tensorrt_llm" / "1")
    return repo


async def _level(client, requests, concurrency: int) -> dict:
    from llm_deploy.bench.metrics import summarize
    from llm_deploy.bench.stream_client import run_level

    timings, wall = await run_level(lambda i: client.send(requests[i], i), requests=len(requests),
                                    concurrency=concurrency)
    return summarize(timings, wall)


def served(args, out_dir: Path, variant: str = "auto") -> dict:
    from llm_deploy.bench.stream_client import LoadClient
    from llm_deploy.bench.workload import BenchRequest
    from llm_deploy.server import tritonserver

    engine_dir = Path(args.work_dir) / "llama2-7b-random"
    # Diagnostics land next to --out, so they come back with the figures from a lent machine.
    settings = parse_variant(variant)
    tag = variant.replace("=", "-").replace("+", "_")
    stacks = out_dir / f"stacks-{tag}.txt"
    repo = render_core_model(engine_dir, Path(args.work_dir) / "repo", device="cuda", settings=settings,
                             stacks=stacks)
    started = time.perf_counter()
    log_path = out_dir / f"tritonserver-{tag}.log"
    env = {VARIANT_ENV[name]: value for name, value in settings.items() if name in VARIANT_ENV}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the server and its stubs inherit them
    try:
        handle = tritonserver.start(repo, http_port=18000, grpc_port=18001, metrics_port=18002,
                                    log_path=log_path, timeout_s=540)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    result: dict = {"path": "gRPC streaming to the tensorrt_llm model (token ids), our LoadClient",
                    "server_ready_s": time.perf_counter() - started}
    try:
        def requests(count: int, seed: int, tokens: int = args.new_tokens) -> list:
            return [BenchRequest("", p, tokens) for p in random_prompts(count, args.prompt_len, seed)]

        async def drive() -> None:
            async with LoadClient("grpc_tensorrt_llm", grpc_url=handle.grpc_url, http_url=handle.http_url,
                                  request_timeout_s=args.request_timeout_s) as client:
                warm = time.perf_counter()
                # Warm-up: the decode graph of every batch width and the prefill buckets, where the
                # server did not capture them at load (capture_ahead=off); the first request's latency
                # is what a user of a fresh server waits.
                result["warmup_wall_s"] = {}
                for concurrency in (1, 2, 4, 8, 16, 32, 64):
                    level = await _level(client, requests(concurrency, 100 + concurrency, 8), concurrency)
                    if level["errors"]:
                        raise RuntimeError(f"warm-up at concurrency {concurrency}: {level['errors']} of "
                                           f"{concurrency} requests failed: {level['error_messages']}")
                    result["warmup_wall_s"][f"c{concurrency}"] = level["wall_s"]
                result["warmup_s"] = time.perf_counter() - warm
                for concurrency, count in ((1, 4), (16, 48), (64, 192)):
                    result[f"c{concurrency}"] = await _level(client, requests(count, concurrency), concurrency)
                    print(f"c={concurrency}: {json.dumps(result[f'c{concurrency}'])[:600]}", flush=True)

        try:
            asyncio.run(drive())
        except BaseException:
            dump_native_stacks(handle, out_dir / f"pyspy-{tag}.txt")
            raise
    finally:
        tritonserver.stop(handle)
    log = log_path.read_text(errors="replace").splitlines()
    result["server_log_engine_lines"] = [line[-300:] for line in log
                                         if "tensorrt_llm (torch)" in line or "loading " in line
                                         or "varlen attention" in line or "compile" in line
                                         or "ahead of the first request" in line][-8:]
    return result


def dump_native_stacks(handle, path: Path) -> None:
    """py-spy's Python + native stacks of every python-backend stub, when py-spy is installed."""
    import subprocess

    import psutil

    from llm_deploy.server import tritonserver

    spy = shutil.which("py-spy") or next((str(Path(p) / "bin" / "py-spy") for p in sys.path
                                          if (Path(p) / "bin" / "py-spy").is_file()), None)
    if spy is None:
        return
    with path.open("w") as out:
        for pid in tritonserver.stub_pids(handle.pgid):
            out.write(f"=== pid {pid}: {psutil.Process(pid).exe()}\n")
            out.flush()
            subprocess.run([spy, "dump", "--native", "--pid", str(pid)], stdout=out, stderr=subprocess.STDOUT,
                           timeout=60, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work-dir", default="/tmp/llm-deploy-gpu")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: hf, batcher, engine, served")
    parser.add_argument("--kernels", default="",
                        help="comma-separated varlen kernels (triton, flash, efficient): one engine phase per "
                             "kernel, that kernel tried first (default: the engine's own order, one phase)")
    parser.add_argument("--batcher-compile", default="1,0",
                        help="the batcher phase's engines in turn: element-wise ops compiled (1) or eager (0)")
    parser.add_argument("--sweep", action="store_true", help="then time the attention kernels alone")
    parser.add_argument("--variants", default="auto",
                        help="comma-separated served variants, in turn: auto (the defaults) or settings joined by "
                             "'+', of response_thread (on, off), overlap (auto, off), compile (1, 0)")
    parser.add_argument("--response-thread", default="",
                        help="older spelling: comma-separated response_thread values, one variant each")
    parser.add_argument("--budget-s", type=float, default=480, help="skip further served variants after this")
    parser.add_argument("--request-timeout-s", type=float, default=120,
                        help="a served request that takes longer fails (and a failed warm-up ends that variant)")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    from transformers import LlamaConfig, LlamaForCausalLM

    report = Report(args.out, device=torch.cuda.get_device_name(), torch=torch.__version__,
                    command=" ".join(["python3", *sys.argv]),
                    shapes={"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "dtype": "bfloat16",
                            "model": "Llama-2-7B config, random weights"})
    report["copy_bandwidth_GBps"] = copy_bandwidth() / 1e9
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(LlamaConfig(**LLAMA2_7B), dtype=torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    report["weight_bytes"] = weight_bytes
    report["floor_ms_per_step"] = 1000 * weight_bytes / (report.figures["copy_bandwidth_GBps"] * 1e9)
    report["floor_ms_per_step_by_batch"] = batch_floors(weight_bytes, report.figures["copy_bandwidth_GBps"], args)

    with torch.inference_mode():
        if "hf" not in skip:
            report.phase("hf_eager", lambda: [hf_generate(model, b, args.prompt_len, args.new_tokens) for b in (1, 64)])
        if "batcher" not in skip:
            report.phase("batcher_direct", lambda: batcher_phase(model, args))
        if "engine" not in skip:
            kernels = list(filter(None, args.kernels.split(",")))
            for kernel in kernels or [None]:
                name = "engine_direct" if kernel is None else f"engine_direct_{kernel}"
                report.phase(name, lambda k=kernel: engine_direct(model, args, k))
        if args.sweep:
            report.phase("attention_kernels", lambda: attention_sweep(report.figures["copy_bandwidth_GBps"],
                                                                                args.budget_s))
    if "served" not in skip:
        report.phase("checkpoint", lambda: save_checkpoint(model, Path(args.work_dir) / "llama2-7b-random", args))
        del model
        torch.cuda.empty_cache()
        variants = args.variants.split(",")
        if args.response_thread:
            variants = [v if v == "auto" else f"response_thread={v}" for v in args.response_thread.split(",")]
        for variant in variants:
            parse_variant(variant)  # every variant refused before the first server starts
        for index, variant in enumerate(variants):
            if index and time.perf_counter() - START > args.budget_s:
                report[f"served_{variant}"] = {"skipped": f"past --budget-s={args.budget_s}"}
                continue
            name = "served" if index == 0 else f"served_{variant}"
            report.phase(name, lambda v=variant: {"variant": v, **served(args, args.out.parent, v)})

    report["ratios"] = served_ratios(report.figures)


def served_ratios(figures: dict) -> dict:
    """The goals' ratios, from the first served variant that has figures (named in "variant")."""
    ratios: dict = {}
    served_figs = next((value for name, value in figures.items()
                        if name.startswith("served") and isinstance(value, dict) and "c1" in value), {})
    floors = figures["floor_ms_per_step_by_batch"]
    if served_figs:
        ratios["variant"] = served_figs.get("variant", "auto")
    if "c1" in served_figs:
        step_c1 = served_figs["c1"]["inter_token_latency_ms"]["avg"]
        ratios["served_decode_ms_per_step_c1"] = step_c1
        ratios["served_c1_over_floor (goal <= 2.0)"] = step_c1 / figures["floor_ms_per_step"]
        ratios["served_c1_over_batch_1_floor_with_kv (goal <= 1.6)"] = step_c1 / floors["1"]
    if "c64" in served_figs:
        ratios["served_tok_s_c16"] = served_figs["c16"]["output_token_throughput_per_s"]
        ratios["served_tok_s_c64"] = served_figs["c64"]["output_token_throughput_per_s"]
        ratios["served_c64_over_batch_64_floor_with_kv (goal <= 1.5)"] = (
            served_figs["c64"]["inter_token_latency_ms"]["avg"] / floors["64"])
        if figures.get("hf_eager"):
            ratios["served_c64_over_hf_b64 (goal >= 10)"] = (
                ratios["served_tok_s_c64"] / figures["hf_eager"][1]["tokens_per_s"])
    return ratios


if __name__ == "__main__":
    main()
