"""Tutorial step "copy inflight_batcher_llm and fill its config.pbtxt files".

The backend writes the repository (the twin from our jinja2 templates, trtllm from upstream's
own, every placeholder filled and every config.pbtxt parsed as Triton's ModelConfig); the step
publishes it atomically under a key of everything the files depend on, so a rerun reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging

from llm_deploy import volume
from llm_deploy.backends.registry import backend_for
from llm_deploy.records import ModelRepoRecord
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

# The trtllm runtime's KV-cache settings (the twin's slot cache has none): part of the key only
# because they are part of trtllm's tensorrt_llm/config.pbtxt.
KV_CACHE_KNOBS = ("kv_cache_free_gpu_mem_fraction", "max_tokens_in_paged_kv_cache", "enable_kv_cache_reuse",
                  "enable_chunked_context")


def repo_settings(spec: DeploySpec, engine_dir: str, tokenizer_dir: str) -> dict:
    """What the rendered files depend on besides the templates themselves."""
    return {
        "engine_dir": engine_dir,
        "tokenizer_dir": tokenizer_dir,
        "backend": spec.backend,
        "max_batch_size": spec.max_batch_size,
        "batch_scheduler_policy": spec.batch_scheduler_policy,
        "max_queue_delay_microseconds": spec.max_queue_delay_microseconds,
        "decoupled": spec.decoupled_mode,
        "exclude_input_in_output": spec.exclude_input_in_output,
        **{knob: getattr(spec, knob) for knob in KV_CACHE_KNOBS},
        "kv_cache_free_gpu_mem_fraction": spec.served_kv_cache_fraction,
    }


def render_model_repo(spec: DeploySpec, engine: dict | None, checkpoint: dict) -> ModelRepoRecord:
    """``engine`` is None in a flow without one: the repository serves the checkpoint."""
    backend = backend_for(spec)
    settings = repo_settings(spec, engine["engine_dir"] if engine else "", checkpoint["checkpoint_dir"])
    if spec.triton_flow != "engine":  # only then: the engine flow's keys stay what they were
        settings["triton_flow"] = spec.triton_flow
    settings["templates"] = backend.model_repo_source(spec)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    # Named after upstream's repository it was copied from.
    kind = "llmapi" if spec.triton_flow == "llmapi" else "inflight_batcher_llm"
    final = volume.model_repo_dir(spec).with_name(f"{kind}-{key}")
    reused = volume.is_published(final)
    if not reused:
        with volume.publish_dir(final, manifest_extra={"settings": settings}) as scratch:
            backend.render_model_repo(spec, engine, checkpoint, scratch)
    models = sorted(p.parent.name for p in final.glob("*/config.pbtxt"))
    log.info("model repository %s (%s): %s", final, "reused" if reused else "rendered", ", ".join(models))
    return ModelRepoRecord(str(final), models, spec.decoupled_mode, reused)
