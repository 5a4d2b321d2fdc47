"""Split-KV ("flash-decoding") attention of one query per row, straight over the slot KV cache.

A decode step has one query token per row, but FlashAttention-2's varlen kernel tiles queries
by 128: for our folded (row, head) sequences 127 of its 128 query rows are padding, and at batch
64 on an H200 it read the Llama-2-7B cache at about 45% of copy bandwidth (3.36 of a 9.7 ms step).
This kernel is written for the decode shape instead:

- one program per (row, KV head, split) loads each K/V block of its slot once for every query
  head of its GQA group, and keeps the online softmax (running max, sum, accumulator) in fp32;
- the splits share out each row's own length (a device value), so a short row's splits each get
  a part of it rather than most of them finding nothing; no host sync or Python branch depends on
  a length, so the function can be captured in a CUDA graph;
- the split count is a host constant per (batch width, cache length): enough programs to fill the
  GPU at small batches, and a single split (no combine kernel at all) once the rows fill it.

The cache is ``[slots, kv_heads, max_seq_len, head_dim]`` as cuda_graphs.py keeps it; row r reads
slot ``slots[r]`` (default: slot r) up to ``lengths[r]`` keys. This module imports triton at the
top: cuda_graphs imports it on first use, so installs without triton (CPU CI) still import it.
CPU tests run the kernels under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Measured on an H100 (benchmarks/results/gpu_triton_llama7b_h100_triton_attention*.json, one layer of
# Llama-2-7B's cache, 32 KV heads): at batch 64, 128-key blocks read rows of 128..256 tokens at 85% of
# copy bandwidth and 64-key blocks at 57%; one split per row was best once the grid held ~4 programs
# per multiprocessor; 8 rows of ~2,700 tokens took 381 us unsplit with 64-key blocks, 180 us in 16
# splits. With 8 KV heads (GQA) 64-key blocks were within 3% of the best of 81 configs.
PROGRAMS_PER_SM = 16  # split rows until the grid holds about this many programs per multiprocessor
MIN_BLOCKS_PER_SPLIT = 4  # once the rows alone fill the GPU: a shorter split costs more than it gains
LOG2_E = 1.4426950408889634


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                     scale: float, *, slots: torch.Tensor | None = None, splits: int | None = None,
                     block_n: int | None = None, num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """Attention of q [rows, heads, head_dim] over each row's cached keys; returns [rows, heads, head_dim].

    ``lengths`` [rows] (int) counts the keys row r attends to, this step's own K/V included (>= 1).
    ``block_n`` and ``splits`` default to :func:`launch_config`, which depends on shapes only.
    """
    rows, heads, dim = q.shape
    kv_heads, max_len = k_cache.shape[1], k_cache.shape[2]
    if heads % kv_heads or k_cache.shape[3] != dim or v_cache.shape != k_cache.shape:
        raise RuntimeError(f"decode_attention: q {tuple(q.shape)} does not fit cache {tuple(k_cache.shape)}")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise RuntimeError("decode_attention: q and the caches need contiguous head_dim")
    group = heads // kv_heads
    default_block, default_splits = launch_config(rows, kv_heads, group, max_len, q.device)
    block_n = block_n or default_block
    splits = splits or default_splits
    # Row r is slot r unless told otherwise: a zero stride reads row indices, nothing from memory.
    slot_stride = 0 if slots is None else slots.stride(0)
    out = torch.empty((rows, heads, dim), dtype=q.dtype, device=q.device)
    if splits == 1:
        partial, lse = out, out  # the lone split writes the result itself
    else:
        partial = torch.empty((rows, heads, splits, dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((rows, heads, splits), dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(dim)
    _split_kernel[(rows, kv_heads, splits)](
        q, k_cache, v_cache, lengths, lengths if slots is None else slots, out, partial, lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        slot_stride, scale * LOG2_E,
        GROUP=group, GROUP_PAD=_group_pad(group), HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_N=block_n,
        SPLITS=splits, SLOTS_GIVEN=slots is not None, FP32=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages)
    if splits > 1:
        _combine_kernel[(rows * heads,)](partial, lse, out, HEAD_DIM=dim, BLOCK_D=block_d, SPLITS=splits,
                                         SPLITS_PAD=triton.next_power_of_2(splits), num_warps=4)
    return out


def launch_config(rows: int, kv_heads: int, group: int, max_len: int, device: torch.device) -> tuple[int, int]:
    """(keys per block, KV splits per (row, KV head)) for a cache of ``max_len`` keys per slot."""
    programs, sms = rows * kv_heads, _multiprocessors(device)
    # GQA's dot path holds a 16-row q tile, and a grid smaller than the GPU wants finer splits:
    # both keep 64-key blocks. Otherwise 128 keys a block (fewer, longer loads).
    block_n = 64 if group > 1 or programs < sms else 128
    blocks = triton.cdiv(max_len, block_n)
    most = blocks if programs < sms else max(1, blocks // MIN_BLOCKS_PER_SPLIT)
    return block_n, max(1, min(most, PROGRAMS_PER_SM * sms // programs))


def _group_pad(group: int) -> int:
    # tl.dot wants at least 16 rows; a group of one takes the dot-free path instead.
    return 1 if group == 1 else max(16, triton.next_power_of_2(group))


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # interpreter runs on CPU: a small count still exercises the splits
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, slots_ptr, out_ptr, partial_ptr, lse_ptr,
                  stride_qb, stride_qh, stride_ks, stride_kh, stride_kn, stride_vs, stride_vh, stride_vn,
                  stride_slot, qk_scale,
                  GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, SLOTS_GIVEN: tl.constexpr, FP32: tl.constexpr):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    if SLOTS_GIVEN:
        slot = tl.load(slots_ptr + row * stride_slot).to(tl.int64)
    else:
        slot = row.to(tl.int64)
    # This split's share of the row's blocks: equal shares of the row's own length, not of the cache.
    per_split = ((length + BLOCK_N - 1) // BLOCK_N + SPLITS - 1) // SPLITS * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, length)

    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_g = tl.arange(0, GROUP_PAD)
    d_ok = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g  # the query heads of this KV head
    g_ok = offs_g < GROUP
    k_base = k_ptr + slot * stride_ks + kv_head * stride_kh
    v_base = v_ptr + slot * stride_vs + kv_head * stride_vh

    q = tl.load(q_ptr + row * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    if GROUP_PAD == 1:
        q = q.to(tl.float32)
    m = tl.full((GROUP_PAD,), float("-inf"), tl.float32)
    s = tl.zeros((GROUP_PAD,), tl.float32)
    acc = tl.zeros((GROUP_PAD, BLOCK_D), tl.float32)
    for n in range(start, end, BLOCK_N):
        keys = n + offs_n
        n_ok = keys < end
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + keys[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        if GROUP_PAD == 1:
            # One query row: a dot would waste 15 of its 16 rows; multiply-add in fp32 instead.
            scores = tl.sum(q * k.to(tl.float32), axis=1)[None, :]
        elif FP32:
            scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = tl.where(n_ok[None, :], scores * qk_scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        s = s * alpha + tl.sum(p, axis=1)
        if GROUP_PAD == 1:
            acc = acc * alpha[:, None] + tl.sum(p.reshape(BLOCK_N, 1) * v.to(tl.float32), axis=0)[None, :]
        elif FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new

    # A split past the row's end kept s == 0: it reports log-sum-exp -inf and weighs nothing.
    out = acc / tl.where(s > 0, s, 1.0)[:, None]
    if SPLITS == 1:
        tl.store(out_ptr + (row * GROUP * tl.num_programs(1) + heads[:, None]) * HEAD_DIM + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])
    else:
        pair = row * GROUP * tl.num_programs(1) + heads  # (row, query head) index
        tl.store(partial_ptr + (pair[:, None] * SPLITS + split) * HEAD_DIM + offs_d[None, :], out,
                 mask=g_ok[:, None] & d_ok[None, :])
        lse = tl.where(s > 0, m + tl.log2(tl.where(s > 0, s, 1.0)), float("-inf"))
        tl.store(lse_ptr + pair * SPLITS + split, lse, mask=g_ok)


@triton.jit
def _combine_kernel(partial_ptr, lse_ptr, out_ptr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr):
    pair = tl.program_id(0)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < SPLITS
    lse = tl.load(lse_ptr + pair * SPLITS + offs_s, mask=s_ok, other=float("-inf"))
    # Split 0 always holds the row's first block (lengths >= 1), so the max is finite.
    weight = tl.exp2(lse - tl.max(lse, axis=0))
    part = tl.load(partial_ptr + (pair * SPLITS + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                   mask=s_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    out = tl.sum(part * weight[:, None], axis=0) / tl.sum(weight, axis=0)
    tl.store(out_ptr + pair * HEAD_DIM + offs_d, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)
