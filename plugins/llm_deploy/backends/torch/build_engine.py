"""The torch backend's "create the engine": the checkpoint's weights cast to the serving dtype.

Beside the weights go the model's own config files (so the engine directory loads alone) and an
``engine_config.json`` with the limits TensorRT-LLM bakes into its engines, which the twin's
server reads back.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

ENGINE_CONFIG = "engine_config.json"
# Files that describe the model rather than hold weights.
_MODEL_FILES = ("config.json", "generation_config.json")


def parallelism(spec: DeploySpec) -> tuple[int, int]:
    """Tensor parallel over every rank (tensor_parallel.py); no pipeline parallelism."""
    return spec.world_size, 1


def build_engine(spec: DeploySpec, checkpoint: dict, out_dir: Path, config: dict) -> None:
    source = Path(checkpoint["checkpoint_dir"])
    if config.get("tensor_parallel", 1) > 1:
        config["shards"] = write_shards(source, out_dir, spec.dtype, config["tensor_parallel"])
    else:
        _cast_weights(source, out_dir, spec.dtype)
    for name in _MODEL_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, out_dir / name)
    _set_config_dtype(out_dir / "config.json", spec.dtype)
    (out_dir / ENGINE_CONFIG).write_text(json.dumps(config, indent=2))


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


def write_shards(source: Path, target: Path, dtype_name: str, world_size: int) -> list[dict]:
    """One ``rank<r>/`` per rank: its slice of the weights (tensor_parallel.py) in the serving
    dtype and its ``shard.json``, as TensorRT-LLM writes rank<r>.engine; the plan, rank by rank."""
    import torch
    from safetensors.torch import load_file, save_file

    from llm_deploy.backends.torch import tensor_parallel
    from llm_deploy.backends.torch.llama import LlamaArch

    try:
        arch = LlamaArch.from_config(json.loads((source / "config.json").read_text()))
        shards = tensor_parallel.plan(arch, world_size)
    except ValueError as exc:
        raise NonRetryableError(f"cannot split {source} over {world_size} ranks: {exc}") from None
    dtype = getattr(torch, dtype_name)
    tensors = {}
    for shard_file in sorted(source.glob("*.safetensors")):
        tensors.update({name: t.to(dtype) if t.is_floating_point() else t for name, t in load_file(shard_file).items()})
    if not tensors:
        raise NonRetryableError(f"{source} holds no *.safetensors weights to build an engine from")
    for shard in shards:
        rank_dir = target / tensor_parallel.rank_dir_name(shard.rank)
        rank_dir.mkdir()
        save_file(tensor_parallel.shard_weights(tensors, arch, shard), rank_dir / "model.safetensors",
                  metadata={"format": "pt"})
        (rank_dir / tensor_parallel.SHARD).write_text(json.dumps(shard.to_dict(), indent=2))
        log.info("engine rank %d/%d: KV heads %s, query heads %s, MLP columns %s -> %s", shard.rank, world_size,
                 shard.kv_heads, shard.q_heads, shard.intermediate, rank_dir.name)
    return [shard.to_dict() for shard in shards]


def _set_config_dtype(config_path: Path, dtype_name: str) -> None:
    config = json.loads(config_path.read_text())
    config["torch_dtype"] = dtype_name
    config["dtype"] = dtype_name
    config_path.write_text(json.dumps(config, indent=2))
