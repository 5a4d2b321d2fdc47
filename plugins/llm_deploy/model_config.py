"""Triton model configurations (config.pbtxt), as both backends' model repositories need them.

Each backend writes its own repository (``backends/torch/model_repo.py`` renders ours from jinja2
templates, ``backends/trtllm/model_repo.py`` fills upstream's); both parse every config.pbtxt
they write into Triton's ModelConfig protobuf here, before anybody starts a server on it.

Kept free of torch/transformers imports: the Airflow scheduler imports it.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.pbtxt"


class ModelRepoError(ValueError):
    """A model repository could not be written, or holds an invalid model configuration."""


def parse_model_config(path: Path):
    """Parse a config.pbtxt as tritonclient's ModelConfig; errors name the file and the line."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(path)
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as exc:
        raise ModelRepoError(f"{path} is not a valid Triton model config: {exc}") from None
    if config.name != path.parent.name:
        # Triton refuses a model whose config name differs from its directory.
        raise ModelRepoError(f"{path}: name {config.name!r} differs from its directory {path.parent.name!r}")
    return config
