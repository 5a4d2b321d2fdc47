"""The tiny model repo the weights tests put on the fake Hub, and views of the volume afterwards."""

from __future__ import annotations

from pathlib import Path

from llm_deploy.spec import DeploySpec
from tests.fixtures.hf_hub import tiny_model_files

REPO = "acme/tiny-llama"
SELECTED = {  # what the default hf_allow_patterns pick out of tiny_model_files() + extras
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json",
}


def hub_spec(root: Path, **overrides: object) -> DeploySpec:
    fields = {"model_source": "huggingface", "model_id": REPO, "engines_root": str(root)}
    return DeploySpec(**{**fields, **overrides})


def hub_files() -> dict[str, bytes]:
    """A tiny model plus files the default allow_patterns must leave on the Hub."""
    return {**tiny_model_files(), "pytorch_model.bin": b"\0" * 2048, "onnx/model.onnx": b"onnx"}


def on_disk(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))
