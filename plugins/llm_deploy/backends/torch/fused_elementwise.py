"""The element-wise parts of a decoder layer, one kernel each on CUDA through torch.compile.

Eagerly, a graphed Llama-2-7B decode step spends ~1.5 ms of its 9.9 ms (batch 64, H100) in ~17
tiny kernels a layer: RMSNorm is four (cast, normalise, cast back, scale), RoPE five, SiLU*up
two, and each residual add one more. Each of them costs its launch latency and tail even inside
a CUDA graph. Fused, a layer has four: the residual add with the norm that reads it (twice),
RoPE over q and k together, and SiLU*up.

The eager functions here are the arithmetic of record: the CPU path (and CI, which has no GPU and
no C compiler) runs them as they are. On CUDA, ``ElementwiseOps`` hands out ``torch.compile``
versions (inductor writes them as Triton kernels) built to keep eager's bf16 roundings between
ops (``emulate_precision_casts``). Reductions and transcendental functions may still round in
another order than eager's kernels, so a bf16 RMSNorm or SiLU can differ from eager in the last
bit now and then; the residual add and RoPE have no such freedom.

Compilation happens on the first call of each shape family, which GraphedDecode makes in the
warm-up runs before a CUDA-graph capture, never inside one. That first warm-up takes seconds
longer (all shape families of the four ops took ~18 s on an H200, once per process; inductor's
on-disk cache shortens later starts); a server pays it while loading (capture_ahead). If
compiling fails (no working Triton, a GPU it cannot compile for), one warning is logged and the
ops run eagerly from then on.

``LLM_DEPLOY_TORCH_COMPILE=0`` keeps CUDA eager too; it is read when an ``ElementwiseOps`` is
made, so a benchmark can build one engine with it and one without in the same process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F

logger = logging.getLogger(__name__)

COMPILE_ENV = "LLM_DEPLOY_TORCH_COMPILE"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # HF's rounding (normalise in fp32, round to the model dtype, then scale), in 4 kernels, not 8.
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream after adding ``delta``, and its RMSNorm for the block that reads it."""
    x = x + delta  # rounded to the model dtype before the norm reads it, as the unfused steps were
    return x, rms_norm(x, weight, eps)


def rope_qk(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """qk [..., heads, D] rotated by cos/sin broadcast to it (same arithmetic as llama.apply_rope)."""
    half = qk.shape[-1] // 2
    return qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's SiLU(gate) * up, from the fused gate/up projection's output."""
    gate, up = gate_up.chunk(2, -1)
    return F.silu(gate) * up


EAGER_OPS: dict[str, Callable[..., object]] = {
    "rms_norm": rms_norm, "add_rms_norm": add_rms_norm, "rope_qk": rope_qk, "silu_mul": silu_mul,
}


def compile_enabled() -> bool:
    return os.environ.get(COMPILE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _inductor_options() -> dict[str, object]:
    import torch._inductor.config as inductor_config  # imported only where a compile is asked for

    # Without it inductor keeps fused bf16 intermediates in fp32, a rounding eager never makes.
    options = {"emulate_precision_casts": True} if hasattr(inductor_config, "emulate_precision_casts") else {}
    # Compiled in this process: a pool of compile workers would be started from inside
    # tritonserver's python stub, for four small kernels.
    options["compile_threads"] = 1
    return options


def compile_op(fn: Callable[..., object], backend: str | Callable[..., object] = "inductor") -> Callable[..., object]:
    """``fn`` compiled as the CUDA path runs it; tests trace it with ``backend="aot_eager"``."""
    options = _inductor_options() if backend == "inductor" else None
    # dynamic=True: every size is symbolic from the first compile, so one graph serves every
    # decode batch (2..64) and prefill [rows, tokens] bucket instead of a recompile per bucket.
    # Dynamo still specialises sizes of 1 (batch 1, a one-row prefill) and each tensor rank, so
    # an op gets about four graphs (decode and prefill, each with and without a size-1 batch),
    # under dynamo's default recompile limit of 8 per function.
    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=True, options=options)

    def run(*args):
        # Duck sizing would give a bucket size that happens to equal a model dimension (64 tokens
        # and Llama-2-7B's 64 q+k heads, 128 and its head_dim) one symbol with it: a graph more
        # for each such coincidence, enough to reach the recompile limit.
        with fx_config.patch(use_duck_shape=False):
            return compiled(*args)

    return run


class ElementwiseOps:
    """``rms_norm``, ``add_rms_norm``, ``rope_qk`` and ``silu_mul`` for one device.

    On CPU (or with ``LLM_DEPLOY_TORCH_COMPILE=0``) they are this module's eager functions
    themselves; on CUDA, compiled versions that fall back to those for good on a failure.
    """

    rms_norm: Callable[..., torch.Tensor]
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rope_qk: Callable[..., torch.Tensor]
    silu_mul: Callable[..., torch.Tensor]

    def __init__(self, device: torch.device | str) -> None:
        self.compiled = torch.device(device).type == "cuda" and compile_enabled()
        for name, eager in EAGER_OPS.items():
            setattr(self, name, self._guarded(eager) if self.compiled else eager)

    def _guarded(self, eager: Callable[..., object]) -> Callable[..., object]:
        compiled = compile_op(eager)

        def run(*args):
            try:
                return compiled(*args)
            # Broad on purpose: a missing compiler, Triton or GPU support surfaces as errors of
            # many types. Wrong inputs are not hidden by it: the eager rerun raises them again.
            except Exception as exc:
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    raise  # compiling here would break the capture; warm-up should have compiled
                self._fall_back(exc)
                return eager(*args)

        return run

    def _fall_back(self, exc: Exception) -> None:
        if self.compiled:
            logger.warning("torch.compile of the element-wise ops failed (%s: %s); running them eagerly",
                           type(exc).__name__, exc)
        self.compiled = False
        for name, eager in EAGER_OPS.items():
            setattr(self, name, eager)
