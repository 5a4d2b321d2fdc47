"""Tutorial step "create the engine": turn a checkpoint into a serving engine on the volume.

For the torch backend an engine is the checkpoint's weights cast to the serving dtype plus an
``engine_config.json`` with the limits TensorRT-LLM bakes into its engines (dtype, batch and
length limits, parallelism). Like a TensorRT-LLM engine, it is published atomically under a
directory named by the spec's content hash, so identical specs share one engine.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

ENGINE_CONFIG = "engine_config.json"
# Files that describe the model rather than hold weights; copied so the engine dir loads alone.
_MODEL_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class EngineRecord:
    engine_dir: str
    engine_id: str
    backend: str
    dtype: str
    bytes: int
    reused: bool

    def to_xcom(self) -> dict:
        return asdict(self)


def engine_config(spec: DeploySpec, checkpoint: dict) -> dict:
    """The engine's own description; keys follow TensorRT-LLM's builder_config names."""
    return {
        "backend": spec.backend,
        "dtype": spec.dtype,
        "max_batch_size": spec.max_batch_size,
        "max_input_len": spec.max_input_len,
        "max_output_len": spec.max_output_len,
        "world_size": spec.world_size,
        "tensor_parallel": _parallelism(spec)[0],
        "pipeline_parallel": _parallelism(spec)[1],
        "spec_hash": spec.engine_hash,
        "engine_id": volume.engine_id(spec, weights_digest(checkpoint)),
        "spec": spec.engine_inputs(),
        "source_checkpoint": {
            "dir": checkpoint["checkpoint_dir"],
            "manifest_sha256": checkpoint.get("manifest_sha256"),
        },
    }


def build_engine(spec: DeploySpec, checkpoint: dict) -> EngineRecord:
    """Build (or reuse) the engine for ``spec`` from the checkpoint record of download_weights."""
    final = volume.engine_dir(spec, weights_digest(checkpoint))
    if volume.is_published(final):
        problems = volume.check_manifest(final, deep=True)
        if not problems:
            log.info("engine %s already built and intact: reusing %s", final.name, final)
            return _record(spec, final, reused=True)
        # Never served, never reused: out of the way under a trash name, then built again.
        log.warning("engine %s does not match its manifest (%s): rebuilding it", final, "; ".join(problems[:3]))
        from llm_deploy.engine_cache import discard

        discard(final)
    if spec.backend == "trtllm":
        from llm_deploy.backends.trtllm import pipeline
        from llm_deploy.runners import runner_for

        pipeline.build_engine(spec, checkpoint, final, engine_config(spec, checkpoint), runner_for(spec))
        return _record(spec, final, reused=False)
    if spec.world_size != 1:
        raise NonRetryableError(
            f"world_size={spec.world_size}: the torch backend serves one process per engine; "
            "use world_size=1, or backend=trtllm for tensor parallelism"
        )
    source = Path(checkpoint["checkpoint_dir"])
    config = engine_config(spec, checkpoint)
    with volume.publish_dir(final, manifest_extra={"engine_config": config}) as scratch:
        _cast_weights(source, scratch, spec.dtype)
        for name in _MODEL_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, scratch / name)
        _set_config_dtype(scratch / "config.json", spec.dtype)
        (scratch / ENGINE_CONFIG).write_text(json.dumps(config, indent=2))
    return _record(spec, final, reused=False)


def _parallelism(spec: DeploySpec) -> tuple[int, int]:
    if spec.backend == "trtllm":
        from llm_deploy.backends.trtllm.validation import parallelism

        return parallelism(spec)
    return spec.world_size, 1


def weights_digest(checkpoint: dict) -> str | None:
    """Identity of the weights an engine is built from: their manifest's hash, or for a user's
    unmanaged local dir (no intact manifest of ours) its path and files' fingerprint."""
    if checkpoint.get("manifest_sha256"):
        return checkpoint["manifest_sha256"]
    return f"{checkpoint['checkpoint_dir']}:{checkpoint.get('files_fingerprint') or ''}"


def _cast_weights(source: Path, target: Path, dtype_name: str) -> None:
    """Cast every floating tensor to the serving dtype, one shard at a time to bound memory."""
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, dtype_name)
    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise NonRetryableError(f"{source} holds no *.safetensors weights to build an engine from")
    for index, shard in enumerate(shards, 1):
        tensors = load_file(shard)
        cast = {
            name: (t.to(dtype) if t.is_floating_point() else t).contiguous()
            for name, t in tensors.items()
        }
        save_file(cast, target / shard.name, metadata={"format": "pt"})
        log.info("engine weights %d/%d: %s (%d tensors) -> %s", index, len(shards),
                 shard.name, len(cast), dtype_name)
    index_file = source / "model.safetensors.index.json"
    if index_file.exists():
        shutil.copy2(index_file, target / index_file.name)


def _set_config_dtype(config_path: Path, dtype_name: str) -> None:
    config = json.loads(config_path.read_text())
    config["torch_dtype"] = dtype_name
    config["dtype"] = dtype_name
    config_path.write_text(json.dumps(config, indent=2))


def record_for(spec: DeploySpec, directory: Path, *, reused: bool) -> EngineRecord:
    """The build_engine record of an engine already on the volume."""
    return _record(spec, directory, reused=reused)


def _record(spec: DeploySpec, directory: Path, *, reused: bool) -> EngineRecord:
    manifest = volume.read_manifest(directory) or {"files": {}}
    size = sum(meta["bytes"] for meta in manifest["files"].values())
    return EngineRecord(
        engine_dir=str(directory),
        engine_id=directory.name,
        backend=spec.backend,
        dtype=spec.dtype,
        bytes=size,
        reused=reused,
    )
