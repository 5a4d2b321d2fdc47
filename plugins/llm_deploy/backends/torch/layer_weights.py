"""One Llama decoder layer's weights, named after HF's tensors.

Its own module because two readers share it: llama.py loads the weights and runs the eager
forward over them, cuda_graphs.py fuses and runs them as static-shape steps.
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
