"""The TensorRT-LLM production backend.

``releases``: the one table of supported releases. ``commands``: every step's argv lists for a
release. ``model_repo``: upstream's inflight_batcher_llm repository, copied and filled.
``validation``: bad input refused before anything runs. ``pipeline``: the steps, running the
commands through a runner.

This module stays import-light (``llm_deploy.spec`` imports ``releases`` from this package), so
the submodules are imported by name, not re-exported here.
"""

from __future__ import annotations

import os

from llm_deploy.errors import BackendNotAvailable

# What every NGC tritonserver:<yy.mm>-trtllm-python-py3 image has, and what
# launch_triton_server.py runs by default (its --tritonserver).
NGC_TRITONSERVER = "/opt/tritonserver/bin/tritonserver"
# A worker image that keeps it elsewhere says where (also what the tests point at a stand-in).
TRITONSERVER_ENV = "LLM_DEPLOY_NGC_TRITONSERVER"


def worker_is_ngc_image() -> bool:
    """This worker runs inside an NGC Triton TensorRT-LLM image (the ``local`` runner's premise)."""
    return os.path.isfile(os.environ.get(TRITONSERVER_ENV) or NGC_TRITONSERVER)


def require_worker(step: str) -> None:
    """Refuse a ``local``-runner trtllm step on a worker that is not the NGC image, before it
    clones or builds anything: there upstream's scripts would fail one by one, much later."""
    if not worker_is_ngc_image():
        raise BackendNotAvailable(
            f"{step}: backend 'trtllm' with runner 'local' needs a worker inside the NGC Triton "
            f"TensorRT-LLM image (no {os.environ.get(TRITONSERVER_ENV) or NGC_TRITONSERVER} here), "
            "so it is not available on this worker; use runner='docker' (each command in the "
            "release's image), run the task on a GPU worker built from that image, or choose backend='torch'"
        )
