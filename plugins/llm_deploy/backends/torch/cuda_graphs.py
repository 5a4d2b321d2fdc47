"""Decode and prefill replayed as CUDA graphs, with attention over each row's true length.

At batch 1 a 7B decode step reads 13.5 GB of weights (~4.5 ms on an H100) but eager PyTorch
issues ~1,400 kernel launches from Python, which on its own took >100 ms/step on the device
machine's CPU. A graph needs static shapes, so a step runs over a bucket: row i of a decode graph
is slot i, for slots 0..B-1 with B the next power of two above the highest slot in the step (the
batcher hands out the lowest free slots, so B tracks the batch). Rows of slots sitting the step
out write their K/V into a scratch slot nobody reads, and their logits are dropped.

Attention (``attention="varlen"``, the default) reads exactly each row's own cached length, not
a padded bucket: the cache [slots, kv_heads, max_seq, head_dim] is viewed as one long run of
head_dim vectors, and every (row, query head) pair becomes its own one-query "sequence" whose
keys start at its slot's and KV head's offset and stop at the row's length (cumulative starts +
``seqused_k`` of FlashAttention-2's varlen kernel, or ``seqlen_k`` of the memory-efficient one).
With a boolean mask over a bucket instead (``attention="masked"``), every row of a batch-64 step
read K/V up to the longest row rounded up to ``kv_step``: at Llama-2-7B's 0.5 MB of K/V per
token that padding was most of the gap between batch 1 and batch 64. On CPU the same offsets
drive a plain gather (``varlen_attention_reference``), so CI checks the offsets a GPU uses.
On CUDA a Triton split-KV kernel over the cache itself (decode_attention.py) is tried first:
FlashAttention-2 tiles 128 query rows for our one, and read K/V at about 45% of bandwidth.

The step itself is written for few kernels: q/k/v and gate/up are one GEMM each (the layer's
own tensors become views into the stacked ones, so memory is not doubled), RoPE rotates q and k
together, and RMSNorm normalises with one fused call while keeping HF's rounding (fp32, then the
model dtype, then the weight). Each residual add is done by the norm that reads it, and on CUDA
torch.compile fuses each of those and RoPE and SiLU*up into one kernel (fused_elementwise.py).

Prefill runs through graphs too, batched: every request admitted in a turn is one row of a
[rows, prompt bucket] graph (right-padded; causal attention keeps real tokens from seeing the
padding). Eagerly, one 7B prefill costs the same ~100 ms of launches as an eager decode step,
which at 64 concurrent requests would stall every decoding row for seconds.

Greedy steps can also run without waiting for the host (``decode_greedy``, ``prefill_greedy``):
each slot's last greedy token stays on the device, the next step reads its input tokens from
there, and the tokens come back through a pinned copy the caller collects later
(``PendingTokens``). The in-flight batcher launches step N+1 before it hands out step N's
tokens, so the GPU never waits for the host's bookkeeping between two steps.

On CPU (``capture=False``) the same static-shape functions run eagerly, which is how CI covers
them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from llm_deploy.backends.torch.fused_elementwise import ElementwiseOps
from llm_deploy.backends.torch.layer_weights import FusedLayer, LayerWeights

logger = logging.getLogger(__name__)

Attention = Literal["varlen", "masked"]
ATTENTION_CHOICES = ("varlen", "masked")


@dataclass(frozen=True)
class DecoderState:
    """What a graphed step reads from its engine: the weights, RoPE tables and slot KV cache.

    The engine hands over its own tensors, not copies: the graphs write the K/V that its eager
    path attends to next.
    """

    embed: torch.Tensor
    layers: list[LayerWeights]
    fused: list[FusedLayer]  # the layers' q/k/v and gate/up stacks (their weights are views of them)
    final_norm: torch.Tensor
    lm_head: torch.Tensor
    cos: torch.Tensor  # [max_seq_len, head_dim]
    sin: torch.Tensor
    k_cache: list[torch.Tensor]  # per layer [max_batch_size + 1, kv_heads, max_seq_len, head_dim]
    v_cache: list[torch.Tensor]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    scale: float  # of the attention scores
    device: torch.device
    max_batch_size: int
    max_seq_len: int
    # The engine's own masked forward over a bucket whose row i is slot i (attention="masked"):
    # (ids, positions, *, kv_len, slot_index) -> fp32 last-token logits.
    masked_forward: Callable[..., torch.Tensor]


@dataclass
class _Entry:
    ids: torch.Tensor        # [B, T] long
    positions: torch.Tensor  # [B, T] long
    slot_index: torch.Tensor  # [B] long: where each row writes its K/V
    last: torch.Tensor | None = None  # [B] long: prefill only, each row's last real token
    logits: torch.Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None


def varlen_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_k: torch.Tensor,
                               used_k: torch.Tensor, max_k: int, scale: float) -> torch.Tensor:
    """What the varlen kernels compute, gathered by hand: q [N, 1, D]; k, v [total, 1, D].

    Sequence n attends to k[cu_k[n] : cu_k[n] + used_k[n]].
    """
    index = cu_k[:-1, None].long() + torch.arange(max_k, device=q.device)
    index = index.clamp_(max=k.shape[0] - 1)
    keys, values = k[index, 0], v[index, 0]  # [N, max_k, D]
    scores = (q.float() @ keys.float().transpose(1, 2)) * scale  # [N, 1, max_k]
    beyond = torch.arange(max_k, device=q.device)[None, :] >= used_k[:, None]
    scores = scores.masked_fill(beyond[:, None, :], float("-inf"))
    return (scores.softmax(-1) @ values.float()).to(q.dtype)


def _flash(q, k, v, cu_q, cu_k, used_k, max_k, scale):
    return torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, 1, max_k, 0.0, False, False, scale=scale, seqused_k=used_k)[0]


def _efficient(q, k, v, cu_q, cu_k, used_k, max_k, scale):
    out = torch.ops.aten._efficient_attention_forward(
        q[None], k[None], v[None], None, cu_q, cu_k, 1, max_k, 0.0, 0, False, scale=scale, seqlen_k=used_k)[0]
    return out[0]


def _reference(q, k, v, cu_q, cu_k, used_k, max_k, scale):
    return varlen_attention_reference(q, k, v, cu_k, used_k, max_k, scale)


_VARLEN_KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "flash": _flash, "efficient": _efficient, "reference": _reference,
}


def _triton(q, k_cache, v_cache, lengths, scale):
    try:  # imported here: CPU installs without triton never get this far
        from triton.errors import TritonError

        from llm_deploy.backends.torch.decode_attention import decode_attention
    except ImportError as exc:
        raise RuntimeError(f"triton is not importable ({exc})") from exc
    try:
        return decode_attention(q, k_cache, v_cache, lengths, scale)
    except TritonError as exc:  # not a RuntimeError: a GPU it cannot compile for must still fall back
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc


# Kernels that read the cache [slots, kv_heads, seq, dim] and per-row lengths, not the folded form:
# (q [B, heads, dim], k_cache, v_cache, lengths [B] int32, scale) -> [B, heads, dim].
_CACHE_KERNELS: dict[str, Callable[..., torch.Tensor]] = {"triton": _triton}
CUDA_KERNELS = ("triton", "flash", "efficient")


class PendingTokens:
    """Greedy tokens of a launched step, in the caller's row order, once the step has run.

    On CUDA the ids travel to pinned host memory behind the step on the same stream; ``result``
    waits for that copy only (with the GIL released), not for later steps queued behind it."""

    def __init__(self, ids: torch.Tensor, rows: list[int]) -> None:
        self._rows = rows  # which of ``ids``' rows are the caller's, in its order
        self._event = None
        if ids.is_cuda:
            self._ids = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self._ids.copy_(ids, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._ids = ids

    def result(self) -> list[int]:
        if self._event is not None:
            self._event.synchronize()
        ids = self._ids.tolist()
        return [ids[row] for row in self._rows]


def warm_up_on_side_stream(run: Callable[[], object], times: int = 2) -> torch.cuda.Stream:
    """``run()`` a few times on a side stream before it is captured (allocator, cuBLAS workspaces,
    Triton's compilation), as torch's CUDA-graph docs prescribe; the stream, to capture on."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(times):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    return stream


class GraphedDecode:
    def __init__(self, model: DecoderState, *, capture: bool, kv_step: int = 128,
                 attention: Attention = "varlen", prefill_step: int = 64) -> None:
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention={attention!r} is not one of {', '.join(ATTENTION_CHOICES)}")
        if kv_step < 1 or prefill_step < 1:
            raise ValueError(f"kv_step ({kv_step}) and prefill_step ({prefill_step}) must be >= 1")
        self.model = model
        self.capture = capture
        self.kv_step = kv_step
        self.prefill_step = prefill_step
        self.attention = attention
        self.scratch_slot = model.max_batch_size  # the engine allocates one extra cache row for it
        self._entries: dict[tuple[int, int], _Entry] = {}
        self._prefills: dict[tuple[int, int], _Entry] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        # CUDA tries the Triton decode kernel, then FlashAttention-2's varlen; CPU has none of them.
        self._kernels = list(CUDA_KERNELS) if model.device.type == "cuda" else ["reference"]
        # Fused by torch.compile on CUDA (compiled in the warm-up runs before capture); eager on CPU.
        self._ops = ElementwiseOps(model.device)
        self._folds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._used_k: tuple[torch.Tensor, torch.Tensor] | None = None
        # Each slot's last greedy token (the scratch slot's is junk): the next greedy step's input.
        self._last_tokens = torch.zeros(model.max_batch_size + 1, dtype=torch.long, device=model.device)

    @property
    def kernel(self) -> str:
        return self._kernels[0] if self.attention == "varlen" else "masked sdpa"

    # --- decode ------------------------------------------------------------------------------

    def bucket(self, rows: int, kv_len: int) -> tuple[int, int]:
        batch = _pow2_at_least(rows, self.model.max_batch_size)
        if self.attention == "varlen":  # the kernels stop at each row's length: no kv bucket
            return batch, self.model.max_seq_len
        kv = min(-(-kv_len // self.kv_step) * self.kv_step, self.model.max_seq_len)
        return batch, kv

    def __call__(self, slots: list[int], tokens: list[int], lengths: list[int]) -> torch.Tensor:
        entry, logits = self._step(slots, tokens, lengths)
        # Back to the caller's row order; indexing copies, so the next replay cannot overwrite it.
        return logits[torch.tensor(slots, device=logits.device)]

    def decode_greedy(self, slots: list[int], lengths: list[int]) -> PendingTokens:
        """A decode step whose input is each slot's last greedy token (from ``prefill_greedy`` or
        an earlier ``decode_greedy``), already on the device: nothing waits for the host."""
        entry, logits = self._step(slots, None, lengths)
        return self._keep_greedy(entry, logits, rows=slots)

    def _step(self, slots: list[int], tokens: list[int] | None, lengths: list[int]) -> tuple[_Entry, torch.Tensor]:
        key = self.bucket(max(slots) + 1, max(lengths) + 1)
        entry = self._entries.get(key) or self._build(*key)
        width = key[0]
        ids, positions, writes = [0] * width, [0] * width, [self.scratch_slot] * width
        for slot, length in zip(slots, lengths):
            positions[slot], writes[slot] = length, slot
        for slot, token in zip(slots, tokens or ()):
            ids[slot] = token
        self._load(entry, [ids, positions, writes])
        if tokens is None:  # row r is slot r; rows sitting the step out read junk and write scratch
            entry.ids[:, 0].copy_(self._last_tokens[:width])
        return entry, self._replay(entry, lambda: self._run(entry, key[1]))

    def _keep_greedy(self, entry: _Entry, logits: torch.Tensor, rows: list[int]) -> PendingTokens:
        ids = logits.argmax(dim=-1)
        # Rows that are no request's write the scratch slot (several of them: any one may win).
        self._last_tokens.index_copy_(0, entry.slot_index, ids)
        return PendingTokens(ids, rows)

    def _run(self, entry: _Entry, kv_len: int) -> torch.Tensor:
        if self.attention == "masked":
            return self.model.masked_forward(entry.ids, entry.positions, kv_len=kv_len, slot_index=entry.slot_index)
        return self._decode_step(entry)

    def _decode_step(self, entry: _Entry) -> torch.Tensor:
        model = self.model
        heads, kv_heads, dim = model.num_heads, model.num_kv_heads, model.head_dim
        width = entry.ids.shape[0]
        positions = entry.positions[:, 0]
        cos, sin = model.cos[positions][:, None], model.sin[positions][:, None]  # [B, 1, D]
        # Row r (slot r) holds positions+1 tokens once this step's K/V is written.
        lengths = (positions + 1).to(torch.int32)
        qk_width = (heads + kv_heads) * dim
        ops, eps = self._ops, model.rms_norm_eps
        x, mlp_out = F.embedding(entry.ids[:, 0], model.embed), None  # x: [B, hidden]
        for w, fused, k_cache, v_cache in zip(model.layers, model.fused, model.k_cache, model.v_cache):
            x, h = self._add_norm(x, mlp_out, w.input_norm)
            qkv = F.linear(h, fused.qkv)
            qk = ops.rope_qk(qkv[:, :qk_width].view(width, heads + kv_heads, dim), cos, sin)
            k_cache[entry.slot_index, :, positions] = qk[:, heads:]
            v_cache[entry.slot_index, :, positions] = qkv[:, qk_width:].view(width, kv_heads, dim)
            attn = self._attend(qk[:, :heads], k_cache, v_cache, lengths)
            attn_out = F.linear(attn.view(width, heads * dim), w.o_proj)
            x, h = ops.add_rms_norm(x, attn_out, w.post_attention_norm, eps)
            mlp_out = F.linear(ops.silu_mul(F.linear(h, fused.gate_up)), w.down_proj)
        _, h = self._add_norm(x, mlp_out, model.final_norm)
        return F.linear(h, model.lm_head).float()

    def _add_norm(self, x: torch.Tensor, delta: torch.Tensor | None,
                  weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x + delta`` and its RMSNorm: a layer leaves its MLP output unadded, so that the next
        layer's input norm (or the final norm) adds it in the same kernel."""
        if delta is None:  # the embedding, before the first layer: nothing to add yet
            return x, self._ops.rms_norm(x, weight, self.model.rms_norm_eps)
        return self._ops.add_rms_norm(x, delta, weight, self.model.rms_norm_eps)

    def _fold(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cumulative query and key starts of the (row, query head) sequences of a ``width`` bucket."""
        if width not in self._folds:
            model = self.model
            device, seq = model.device, model.max_seq_len
            group = model.num_heads // model.num_kv_heads
            rows = torch.arange(width, device=device)[:, None]
            kv_head = torch.arange(model.num_heads, device=device)[None, :] // group
            starts = ((rows * model.num_kv_heads + kv_head) * seq).flatten()
            # The end entry only closes the array: with seqused_k the kernels never read it as a length.
            cu_k = torch.cat([starts, starts[-1:] + seq]).to(torch.int32)
            cu_q = torch.arange(width * model.num_heads + 1, device=device, dtype=torch.int32)
            self._folds[width] = (cu_q, cu_k)
        return self._folds[width]

    def _attend(self, q, k_cache, v_cache, lengths) -> torch.Tensor:
        """q [B, heads, dim] over rows' caches of ``lengths`` keys (row r is slot r) -> [B, heads, dim]."""
        width, heads, dim = q.shape
        max_k, scale = self.model.max_seq_len, self.model.scale
        while True:
            name = self._kernels[0]
            try:
                if name in _CACHE_KERNELS:
                    return _CACHE_KERNELS[name](q, k_cache, v_cache, lengths, scale)
                cu_q, cu_k = self._fold(width)
                out = _VARLEN_KERNELS[name](q.reshape(width * heads, 1, dim), k_cache.view(-1, 1, dim),
                                            v_cache.view(-1, 1, dim), cu_q, cu_k,
                                            self._fold_lengths(lengths, heads), max_k, scale)
                return out.view(width, heads, dim)
            except (RuntimeError, NotImplementedError) as exc:
                # (capture=False never captures, and CPU builds of torch cannot even ask.)
                if len(self._kernels) == 1 or (self.capture and torch.cuda.is_current_stream_capturing()):
                    raise
                # Checked on the warm-up runs before any capture: a torch build without this
                # kernel (or refusing these shapes) falls back to the next one, once.
                logger.warning("varlen attention: %s kernel unavailable (%s); trying %s",
                               self._kernels[0], exc, self._kernels[1])
                self._kernels.pop(0)

    def _fold_lengths(self, lengths: torch.Tensor, heads: int) -> torch.Tensor:
        # One length per (row, query head) sequence, built once per step rather than per layer.
        if self._used_k is None or self._used_k[0] is not lengths:
            self._used_k = (lengths, lengths.repeat_interleave(heads))
        return self._used_k[1]

    # --- prefill -----------------------------------------------------------------------------

    def prefill(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Prefill ``slots[i]`` with ``prompts[i]`` in one batched step; fp32 last-token logits [n, vocab]."""
        return self._prefill(slots, prompts)[1][:len(slots)].clone()

    def prefill_greedy(self, slots: list[int], prompts: list[list[int]]) -> PendingTokens:
        """``prefill`` whose greedy first tokens stay on the device for ``decode_greedy``."""
        entry, logits = self._prefill(slots, prompts)
        return self._keep_greedy(entry, logits, rows=list(range(len(slots))))

    def _prefill(self, slots: list[int], prompts: list[list[int]]) -> tuple[_Entry, torch.Tensor]:
        if self.attention != "varlen":
            raise RuntimeError("batched prefill needs attention='varlen'")
        model = self.model
        rows = _pow2_at_least(len(slots), model.max_batch_size)
        longest = max(len(p) for p in prompts)
        tokens = min(-(-longest // self.prefill_step) * self.prefill_step, model.max_seq_len)
        key = (rows, tokens)
        entry = self._prefills.get(key) or self._build_prefill(*key)
        ids = [[0] * tokens for _ in range(rows)]
        writes, last = [self.scratch_slot] * rows, [0] * rows
        for row, (slot, prompt) in enumerate(zip(slots, prompts)):
            ids[row][:len(prompt)] = prompt
            writes[row], last[row] = slot, len(prompt) - 1
        host = torch.tensor([value for row in ids for value in row] + writes + last, dtype=torch.long)
        device_inputs = host.to(model.device, non_blocking=True)
        entry.ids.copy_(device_inputs[:rows * tokens].view(rows, tokens))
        entry.slot_index.copy_(device_inputs[rows * tokens:rows * tokens + rows])
        entry.last.copy_(device_inputs[rows * tokens + rows:])
        return entry, self._replay(entry, lambda: self._prefill_step(entry))

    def _prefill_step(self, entry: _Entry) -> torch.Tensor:
        model = self.model
        heads, kv_heads, dim = model.num_heads, model.num_kv_heads, model.head_dim
        rows, tokens = entry.ids.shape
        cos, sin = model.cos[:tokens][None, :, None], model.sin[:tokens][None, :, None]  # [1, T, 1, D]
        positions = entry.positions
        qk_width = (heads + kv_heads) * dim
        grouped = heads != kv_heads
        ops, eps = self._ops, model.rms_norm_eps
        x, mlp_out = F.embedding(entry.ids, model.embed), None  # x: [R, T, hidden]
        for w, fused, k_cache, v_cache in zip(model.layers, model.fused, model.k_cache, model.v_cache):
            x, h = self._add_norm(x, mlp_out, w.input_norm)
            qkv = F.linear(h, fused.qkv)
            qk = ops.rope_qk(qkv[..., :qk_width].view(rows, tokens, heads + kv_heads, dim), cos, sin)
            k, v = qk[:, :, heads:], qkv[..., qk_width:].view(rows, tokens, kv_heads, dim)
            k_cache[entry.slot_index[:, None], :, positions] = k
            v_cache[entry.slot_index[:, None], :, positions] = v
            # A prefill starts its slot over: the prompt attends to itself only, never to the cache.
            attn = F.scaled_dot_product_attention(
                qk[:, :, :heads].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                is_causal=True, scale=model.scale, enable_gqa=grouped)
            attn_out = F.linear(attn.transpose(1, 2).reshape(rows, tokens, heads * dim), w.o_proj)
            x, h = ops.add_rms_norm(x, attn_out, w.post_attention_norm, eps)
            mlp_out = F.linear(ops.silu_mul(F.linear(h, fused.gate_up)), w.down_proj)
        # Only each row's last token goes on to the head: adding before or after picking it is
        # the same element-wise sum, and the final add and norm then cover R rows, not R x T.
        last = (torch.arange(rows, device=x.device), entry.last)
        _, h = self._add_norm(x[last], mlp_out[last], model.final_norm)
        return F.linear(h, model.lm_head).float()

    # --- ahead of the first request ------------------------------------------------------------

    def capture_ahead(self) -> None:
        """Build every decode bucket, and the one-row prefill of the shortest prompts, now.

        Built lazily, each lands on the first request that needs it: on CUDA the first build
        compiles the fused element-wise ops (~18 s on an H200, see fused_elementwise.py) and
        each later one captures a graph, all after tritonserver has said the model is ready.
        Inference servers capture their decode graphs at load for that reason. Longer prefill
        buckets stay lazy: there are rows x prompt-length of them, each holding its activations
        in the graph pool. The warm-up runs write the scratch slot only.
        """
        started = time.perf_counter()
        batches = _pow2_buckets(self.model.max_batch_size)
        for batch in batches:
            key = self.bucket(batch, 1)
            if key not in self._entries:
                self._build(*key)
        if self.attention == "varlen":
            key = (1, min(self.prefill_step, self.model.max_seq_len))
            if key not in self._prefills:
                self._build_prefill(*key)
        logger.info("decode buckets %s %s ahead of the first request in %.1fs",
                    ",".join(map(str, batches)), "captured" if self.capture else "built",
                    time.perf_counter() - started)

    # --- building and replaying graphs ----------------------------------------------------------

    def _load(self, entry: _Entry, columns: list[list[int]]) -> None:
        # One host->device copy of all inputs: small copies each cost a launch too.
        device_inputs = torch.tensor(columns, dtype=torch.long).to(self.model.device, non_blocking=True)
        entry.ids[:, 0].copy_(device_inputs[0])
        entry.positions[:, 0].copy_(device_inputs[1])
        entry.slot_index.copy_(device_inputs[2])

    def _replay(self, entry: _Entry, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        if entry.graph is not None:
            entry.graph.replay()
            return entry.logits
        return run()

    def _build(self, batch: int, kv_len: int) -> _Entry:
        device = self.model.device
        entry = _Entry(
            ids=torch.zeros((batch, 1), dtype=torch.long, device=device),
            positions=torch.zeros((batch, 1), dtype=torch.long, device=device),
            slot_index=torch.full((batch,), self.scratch_slot, dtype=torch.long, device=device),
        )
        self._capture(entry, lambda: self._run(entry, kv_len))
        self._entries[(batch, kv_len)] = entry
        return entry

    def _build_prefill(self, rows: int, tokens: int) -> _Entry:
        device = self.model.device
        entry = _Entry(
            ids=torch.zeros((rows, tokens), dtype=torch.long, device=device),
            positions=torch.arange(tokens, device=device)[None, :].expand(rows, tokens).contiguous(),
            slot_index=torch.full((rows,), self.scratch_slot, dtype=torch.long, device=device),
            last=torch.zeros((rows,), dtype=torch.long, device=device),
        )
        self._capture(entry, lambda: self._prefill_step(entry))
        self._prefills[(rows, tokens)] = entry
        logger.info("prefill bucket %d rows x %d tokens %s", rows, tokens, "captured" if self.capture else "built")
        return entry

    def _capture(self, entry: _Entry, run: Callable[[], torch.Tensor]) -> None:
        if not self.capture:
            return
        # Warm-up runs write K/V for the scratch slot only (slot_index starts there).
        stream = warm_up_on_side_stream(run)
        # capture_begin/end rather than the torch.cuda.graph context manager: that one runs
        # gc.collect() first, and inside the Triton python stub a collection on the batcher thread
        # can run finalizers of the stub's objects that wait for its main thread.
        # thread_local: the server's other threads keep running during the capture; the default
        # ("global") would fail their CUDA calls for its length.
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
            try:
                entry.logits = run()
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        entry.graph = graph


def _pow2_buckets(cap: int) -> list[int]:
    """Every batch width a step can take: the powers of two below ``cap``, then ``cap``."""
    widths = [1]
    while widths[-1] < cap:
        widths.append(min(widths[-1] * 2, cap))
    return widths


def _pow2_at_least(rows: int, cap: int) -> int:
    batch = 1
    while batch < rows:
        batch *= 2
    return min(batch, cap)
