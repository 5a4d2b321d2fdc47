"""Tutorial step "create the engine": turn a checkpoint into a serving engine on the volume.

Whatever the backend builds is published atomically under a directory named by the content hash
of the spec's engine inputs, the exact weights and the build target (runtime, image, GPU type:
``volume.engine_dir``), so identical specs on alike hosts share one engine, a crash mid-build never leaves a half-written engine under that name, and an
engine that no longer matches its manifest is moved aside and built again.
"""

from __future__ import annotations

import logging

from llm_deploy import engine_cache, volume
from llm_deploy.backends.registry import backend_for
from llm_deploy.build_target import BuildTarget
from llm_deploy.errors import SkipStep
from llm_deploy.records import EngineRecord, engine_record
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def engine_config(spec: DeploySpec, checkpoint: dict, target: BuildTarget) -> dict:
    """The engine's own description; keys follow TensorRT-LLM's builder_config names."""
    tensor_parallel, pipeline_parallel = backend_for(spec).parallelism(spec)
    return {
        "backend": spec.backend,
        "dtype": spec.dtype,
        "max_batch_size": spec.max_batch_size,
        "max_input_len": spec.max_input_len,
        "max_output_len": spec.max_output_len,
        "world_size": spec.world_size,
        "tensor_parallel": tensor_parallel,
        "pipeline_parallel": pipeline_parallel,
        "spec_hash": spec.engine_hash,
        "engine_id": volume.engine_id(spec, volume.weights_digest(checkpoint), target),
        "spec": spec.engine_inputs(),
        # What it loads under (start_server holds it to that): runtime, image, GPU type.
        "build_target": target.to_dict(),
        "source_checkpoint": {
            "dir": checkpoint["checkpoint_dir"],
            "manifest_sha256": checkpoint.get("manifest_sha256"),
        },
    }


def build_engine(spec: DeploySpec, checkpoint: dict) -> EngineRecord:
    """Build (or reuse) the engine for ``spec`` from the checkpoint record of download_weights.

    A flow that serves the checkpoint itself (trtllm's llmapi) skips the step, saying why.
    """
    reason = backend_for(spec).engine_free_reason(spec)
    if reason:
        raise SkipStep(reason)
    target = backend_for(spec).build_target(spec, "build_engine")
    final = volume.engine_dir(spec, volume.weights_digest(checkpoint), target)
    if volume.is_published(final):
        problems = volume.check_manifest(final, deep=True)
        if not problems:
            log.info("engine %s already built and intact: reusing %s", final.name, final)
            return engine_record(spec, final, reused=True)
        # Never served, never reused: out of the way under a trash name, then built again.
        log.warning("engine %s does not match its manifest (%s): rebuilding it", final, "; ".join(problems[:3]))
        engine_cache.discard(final)
    config = engine_config(spec, checkpoint, target)  # refuses a parallelism the backend cannot build
    with volume.publish_dir(final, manifest_extra={"engine_config": config}) as scratch:
        backend_for(spec).build_engine(spec, checkpoint, scratch, config)
    return engine_record(spec, final, reused=False)
