"""The element-wise ops a graphed step fuses on CUDA: the same numbers as the unfused steps, and
graphs that torch.compile takes whole.

CI has no GPU and no C compiler, so the compiled path is traced with the ``aot_eager`` backend:
dynamo and AOT autograd build the very graph inductor would get (``fullgraph=True`` fails on any
graph break), and it runs as eager aten ops, with no code generated.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

from llm_deploy.backends.torch import fused_elementwise
from llm_deploy.backends.torch.fused_elementwise import (
    COMPILE_ENV, EAGER_OPS, ElementwiseOps, add_rms_norm, compile_op, rms_norm, rope_qk, silu_mul,
)
from llm_deploy.backends.torch.llama import apply_rope
from llm_deploy.backends.torch.llama import rms_norm as hf_rms_norm

DTYPES = [torch.float32, torch.bfloat16]
EPS = 1e-5
HIDDEN, HEADS, KV_HEADS, DIM = 64, 4, 2, 16


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Dynamo caches compiled graphs on the function's code object, across torch.compile wrappers.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def decode_args(dtype, batch=4):
    """One example call of each op, with the shapes (and views) a decode step passes it."""
    qkv = randn(batch, (HEADS + 2 * KV_HEADS) * DIM, dtype=dtype, seed=5)
    qk = qkv[:, :(HEADS + KV_HEADS) * DIM].view(batch, HEADS + KV_HEADS, DIM)  # strided, as in the step
    cos, sin = randn(batch, 1, DIM, dtype=dtype, seed=6), randn(batch, 1, DIM, dtype=dtype, seed=7)
    x, delta, weight = randn(batch, HIDDEN, dtype=dtype), randn(batch, HIDDEN, dtype=dtype, seed=1), \
        randn(HIDDEN, dtype=dtype, seed=2)
    return {
        "rms_norm": (x, weight, EPS),
        "add_rms_norm": (x, delta, weight, EPS),
        "rope_qk": (qk, cos, sin),
        "silu_mul": (randn(batch, 2 * HIDDEN, dtype=dtype, seed=8),),
    }


def prefill_args(dtype, rows=2, tokens=8):
    x, delta, weight = randn(rows, tokens, HIDDEN, dtype=dtype), randn(rows, tokens, HIDDEN, dtype=dtype, seed=1), \
        randn(HIDDEN, dtype=dtype, seed=2)
    return {
        "rms_norm": (x, weight, EPS),
        "add_rms_norm": (x, delta, weight, EPS),
        "rope_qk": (randn(rows, tokens, HEADS + KV_HEADS, DIM, dtype=dtype, seed=5),
                    randn(1, tokens, 1, DIM, dtype=dtype, seed=6), randn(1, tokens, 1, DIM, dtype=dtype, seed=7)),
        "silu_mul": (randn(rows, tokens, 2 * HIDDEN, dtype=dtype, seed=8),),
    }


def assert_equal(actual, expected):
    actual, expected = (actual, expected) if isinstance(expected, tuple) else ((actual,), (expected,))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert torch.equal(a, e)


# --- eager: the arithmetic of the unfused steps ----------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_rounds_like_hf(dtype):
    x, weight = randn(3, 5, HIDDEN, dtype=dtype), randn(HIDDEN, dtype=dtype, seed=1)
    assert_equal(rms_norm(x, weight, EPS), hf_rms_norm(x, weight, EPS))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_rounds_the_sum_before_normalising_it(dtype):
    x, delta, weight = randn(4, HIDDEN, dtype=dtype), randn(4, HIDDEN, dtype=dtype, seed=1), \
        randn(HIDDEN, dtype=dtype, seed=2)
    total = x + delta
    assert_equal(add_rms_norm(x, delta, weight, EPS), (total, hf_rms_norm(total, weight, EPS)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_qk_is_llama_apply_rope_in_the_step_layout(dtype):
    qk = randn(2, 5, HEADS, DIM, dtype=dtype)  # [B, T, heads, D]
    cos, sin = randn(2, 5, DIM, dtype=dtype, seed=1), randn(2, 5, DIM, dtype=dtype, seed=2)
    expected = apply_rope(qk.transpose(1, 2), cos, sin).transpose(1, 2)
    assert_equal(rope_qk(qk, cos[:, :, None], sin[:, :, None]), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_takes_gate_then_up_from_the_fused_projection(dtype):
    gate, up = randn(3, HIDDEN, dtype=dtype), randn(3, HIDDEN, dtype=dtype, seed=1)
    assert_equal(silu_mul(torch.cat([gate, up], dim=-1)), F.silu(gate) * up)


# --- compiled: whole graphs, same numbers ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(EAGER_OPS))
@pytest.mark.parametrize("shapes", [decode_args, prefill_args], ids=["decode", "prefill"])
def test_each_op_compiles_without_graph_breaks(name, dtype, shapes):
    args = shapes(dtype)[name]
    compiled = compile_op(EAGER_OPS[name], backend="aot_eager")
    assert_equal(compiled(*args), EAGER_OPS[name](*args))


@pytest.mark.parametrize("name", sorted(EAGER_OPS))
def test_one_graph_serves_every_decode_bucket_but_batch_1(name):
    counter = CompileCounterWithBackend("aot_eager")
    compiled = compile_op(EAGER_OPS[name], backend=counter)
    # (The first compile may take two tries: dynamo retraces once with eps as a constant.)
    compiled(*decode_args(torch.bfloat16, 2)[name])
    first = counter.frame_count
    for batch in (4, 8, 16, 32, 64):
        compiled(*decode_args(torch.bfloat16, batch)[name])
    assert counter.frame_count == first
    compiled(*decode_args(torch.bfloat16, 1)[name])  # dynamo specialises sizes of 1
    assert counter.frame_count > first


def test_one_graph_serves_every_prefill_bucket_of_several_rows():
    # Token counts that equal a model dimension must not cost a graph of their own (duck sizing).
    counter = CompileCounterWithBackend("aot_eager")
    compiled = compile_op(rope_qk, backend=counter)
    compiled(*prefill_args(torch.bfloat16, 2, 32)["rope_qk"])
    first = counter.frame_count
    for rows, tokens in [(4, DIM), (8, HEADS + KV_HEADS), (64, 512)]:  # some equal to model dimensions
        compiled(*prefill_args(torch.bfloat16, rows, tokens)["rope_qk"])
    assert counter.frame_count == first


# --- choosing the ops for a device ----------------------------------------------------------------


def test_cpu_gets_the_eager_functions_themselves(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    ops = ElementwiseOps("cpu")
    assert not ops.compiled
    for name, eager in EAGER_OPS.items():
        assert getattr(ops, name) is eager


def test_cuda_gets_compiled_ops_unless_the_env_var_turns_them_off(monkeypatch):
    # torch.compile is lazy: making the ops needs no GPU, only calling them would.
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    ops = ElementwiseOps("cuda")
    assert ops.compiled and ops.rms_norm is not rms_norm
    monkeypatch.setenv(COMPILE_ENV, "0")
    ops = ElementwiseOps("cuda")
    assert not ops.compiled
    for name, eager in EAGER_OPS.items():
        assert getattr(ops, name) is eager


def test_a_failed_compile_warns_once_and_runs_eagerly_from_then_on(monkeypatch, caplog):
    monkeypatch.delenv(COMPILE_ENV, raising=False)

    def broken_compile(fn):
        def compiled(*args):
            raise RuntimeError("no working C compiler")
        return compiled

    monkeypatch.setattr(fused_elementwise, "compile_op", broken_compile)
    ops = ElementwiseOps("cuda")
    args = decode_args(torch.float32)
    with caplog.at_level(logging.WARNING, logger=fused_elementwise.__name__):
        assert_equal(ops.rms_norm(*args["rms_norm"]), rms_norm(*args["rms_norm"]))
        assert_equal(ops.silu_mul(*args["silu_mul"]), silu_mul(*args["silu_mul"]))
    assert [r.getMessage() for r in caplog.records if "no working C compiler" in r.getMessage()] != []
    assert len(caplog.records) == 1
    assert not ops.compiled
    for name, eager in EAGER_OPS.items():
        assert getattr(ops, name) is eager


def test_graphed_decode_on_cpu_runs_the_eager_ops(tiny_checkpoint):
    from llm_deploy.backends.torch.llama import LlamaEngine

    engine = LlamaEngine.load(tiny_checkpoint, torch.float32, max_batch_size=2, max_seq_len=32)
    engine.enable_graphed_decode(capture=False)
    assert not engine._graphed._ops.compiled
