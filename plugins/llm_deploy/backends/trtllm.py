"""The TensorRT-LLM production backend.

Its per-release commands (build_wheel.py, build.py / convert_checkpoint.py + trtllm-build, run.py,
launch_triton_server.py) need an NGC TensorRT-LLM container on a GPU worker. Until a step has
such a runner, it stops here with a clear message instead of pretending to have built anything.
"""

from __future__ import annotations

import shutil

from llm_deploy.errors import BackendNotAvailable


def require_worker(step: str) -> None:
    """Refuse to run a trtllm step where TensorRT-LLM is not installed."""
    if shutil.which("trtllm-build") is None and not _importable("tensorrt_llm"):
        raise BackendNotAvailable(
            f"{step}: backend 'trtllm' is not available on this worker (no tensorrt_llm "
            "package, no trtllm-build); run it on a GPU worker in the NGC Triton TensorRT-LLM "
            "image, or choose backend='torch'"
        )
    raise BackendNotAvailable(
        f"{step}: the trtllm runner for this step is not wired into this version yet; "
        "choose backend='torch'"
    )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
