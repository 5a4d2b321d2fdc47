"""The TensorRT-LLM production backend.

``releases``: the one table of supported releases. ``commands``: every step's argv lists for a
release. ``upstream_repo``: upstream's inflight_batcher_llm repository, copied and filled.
``validation``: bad input refused before anything runs. None of them runs anything.

This module stays import-light (``llm_deploy.spec`` imports ``releases`` from this package), so
the submodules are imported by name, not re-exported here.
"""

from __future__ import annotations

import importlib.util
import shutil

from llm_deploy.errors import BackendNotAvailable


def worker_has_trtllm() -> bool:
    """TensorRT-LLM is installed on this worker (the wheel's trtllm-build or its package)."""
    return shutil.which("trtllm-build") is not None or importlib.util.find_spec("tensorrt_llm") is not None


def require_worker(step: str) -> None:
    """Refuse to run a trtllm step where TensorRT-LLM is not installed.

    Until the steps execute ``commands`` through a runner, a worker that has TensorRT-LLM is
    refused too, rather than falling through into the torch backend's code.
    """
    if not worker_has_trtllm():
        raise BackendNotAvailable(
            f"{step}: backend 'trtllm' is not available on this worker (no tensorrt_llm "
            "package, no trtllm-build); run it on a GPU worker in the NGC Triton TensorRT-LLM "
            "image, or choose backend='torch'"
        )
    raise BackendNotAvailable(
        f"{step}: the trtllm runner for this step is not wired into this version yet; "
        "choose backend='torch'"
    )
