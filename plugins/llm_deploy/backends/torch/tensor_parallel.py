"""Tensor parallelism for the twin: a Llama's weights split over ranks as Megatron-LM splits them.

Each rank holds

- attention: a contiguous run of KV heads and the query heads that read them (q/k/v split by
  output rows, "column parallel"), and the matching input columns of o_proj ("row parallel");
- MLP: a contiguous slice of the intermediate dimension (gate/up by rows, down_proj by columns);
- the embedding, the norms and lm_head whole.

After o_proj and again after down_proj, every rank holds a partial sum of the hidden state; one
all-reduce per block makes it whole on every rank, so each rank's next layer starts from the same
input. Heads need not divide evenly: SmolLM2-135M has 9 query heads over 3 KV heads, so at
world_size 2 rank 0 takes KV heads 0-1 (query heads 0-5) and rank 1 KV head 2 (query heads 6-8).
TensorRT-LLM asks for an even split; we only ask each rank for at least one KV head.

Like TensorRT-LLM's engines, a sharded engine directory holds one ``rank<r>/`` per rank with that
rank's weights, beside the model's config (``ENGINE_CONFIG`` records the plan).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import torch


class Shapes(Protocol):
    """What the split reads of a model's architecture (llama.LlamaArch, a frozen dataclass)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int


Arch = TypeVar("Arch", bound=Shapes)


@dataclass(frozen=True)
class RankShard:
    """What one rank of ``world_size`` holds: [start, end) ranges."""

    rank: int
    world_size: int
    kv_heads: tuple[int, int]
    q_heads: tuple[int, int]
    intermediate: tuple[int, int]

    def to_dict(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "kv_heads": list(self.kv_heads),
                "q_heads": list(self.q_heads), "intermediate": list(self.intermediate)}

    @classmethod
    def from_dict(cls, data: dict) -> RankShard:
        return cls(rank=int(data["rank"]), world_size=int(data["world_size"]), kv_heads=tuple(data["kv_heads"]),
                   q_heads=tuple(data["q_heads"]), intermediate=tuple(data["intermediate"]))


SHARD = "shard.json"  # in each rank's directory: its RankShard


def rank_dir_name(rank: int) -> str:
    return f"rank{rank}"


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """``total`` items in ``parts`` contiguous runs, the first ones one longer when uneven."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for part in range(parts):
        end = start + base + (part < extra)
        bounds.append((start, end))
        start = end
    return bounds


def plan(arch: Shapes, world_size: int) -> list[RankShard]:
    """The split of ``arch`` over ``world_size`` ranks; ValueError if it cannot be split that far."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if arch.num_kv_heads < world_size:
        raise ValueError(
            f"world_size={world_size} exceeds the model's {arch.num_kv_heads} KV heads: each rank of the "
            f"torch backend's tensor parallelism needs at least one; use world_size <= {arch.num_kv_heads}")
    group = arch.num_heads // arch.num_kv_heads  # query heads per KV head
    return [RankShard(rank=rank, world_size=world_size, kv_heads=kv, q_heads=(kv[0] * group, kv[1] * group),
                      intermediate=mlp)
            for rank, (kv, mlp) in enumerate(zip(_split(arch.num_kv_heads, world_size),
                                                 _split(arch.intermediate_size, world_size), strict=True))]


def local_arch(arch: Arch, shard: RankShard) -> Arch:
    """The shapes one rank computes with: its heads and its slice of the intermediate dimension."""
    return replace(arch, num_heads=shard.q_heads[1] - shard.q_heads[0],
                   num_kv_heads=shard.kv_heads[1] - shard.kv_heads[0],
                   intermediate_size=shard.intermediate[1] - shard.intermediate[0])


def shard_weights(tensors: dict[str, torch.Tensor], arch: Shapes, shard: RankShard) -> dict[str, torch.Tensor]:
    """One rank's tensors out of a whole checkpoint's (HF names kept, shapes cut to the shard)."""
    d = arch.head_dim
    q0, q1 = shard.q_heads[0] * d, shard.q_heads[1] * d
    kv0, kv1 = shard.kv_heads[0] * d, shard.kv_heads[1] * d
    m0, m1 = shard.intermediate
    rows = {"self_attn.q_proj.weight": (q0, q1), "self_attn.k_proj.weight": (kv0, kv1),
            "self_attn.v_proj.weight": (kv0, kv1), "mlp.gate_proj.weight": (m0, m1), "mlp.up_proj.weight": (m0, m1)}
    columns = {"self_attn.o_proj.weight": (q0, q1), "mlp.down_proj.weight": (m0, m1)}
    out = {}
    for name, tensor in tensors.items():
        suffix = name.split(".", 3)[-1] if name.startswith("model.layers.") else ""
        if suffix in rows:
            start, end = rows[suffix]
            tensor = tensor[start:end]
        elif suffix in columns:
            start, end = columns[suffix]
            tensor = tensor[:, start:end]
        out[name] = tensor.contiguous()
    return out
