"""One Llama decoder layer's weights, named after HF's tensors.

Its own module because two readers share it: llama.py loads the weights and runs the eager
forward over them, cuda_graphs.py runs them as static-shape steps. Both multiply by the fused
stacks: one matrix product for q/k/v and one for gate/up instead of five.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    q_proj: torch.Tensor
    k_proj: torch.Tensor
    v_proj: torch.Tensor
    o_proj: torch.Tensor
    post_attention_norm: torch.Tensor
    gate_proj: torch.Tensor
    up_proj: torch.Tensor
    down_proj: torch.Tensor


@dataclass
class FusedLayer:
    qkv: torch.Tensor      # [(heads + 2 kv_heads) * head_dim, hidden]
    gate_up: torch.Tensor  # [2 * intermediate, hidden]


def fuse_projections(layers: list[LayerWeights]) -> list[FusedLayer]:
    """Stack q/k/v and gate/up per layer; the layer's own weights become views into the stacks."""
    fused = []
    for w in layers:
        qkv = torch.cat([w.q_proj, w.k_proj, w.v_proj])
        gate_up = torch.cat([w.gate_proj, w.up_proj])
        w.q_proj, w.k_proj, w.v_proj = qkv.split([w.q_proj.shape[0], w.k_proj.shape[0], w.v_proj.shape[0]])
        w.gate_proj, w.up_proj = gate_up.split([w.gate_proj.shape[0], w.up_proj.shape[0]])
        fused.append(FusedLayer(qkv, gate_up))
    return fused
