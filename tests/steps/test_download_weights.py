"""The step picks the weight source by model_source; each source has its tests in tests/weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_deploy.spec import DeploySpec
from llm_deploy.steps import download_weights as step
from llm_deploy.steps.download_weights import WeightsRecord, download_weights, published_weights
from llm_deploy.weights.published import WeightsRecord as SourcesRecord
from tests.fixtures.hf_hub import FakeHub, tiny_checkpoint
from tests.weights.tiny_repo import REPO, hub_files, hub_spec


def test_the_record_is_the_one_every_source_returns() -> None:
    assert WeightsRecord is SourcesRecord


def test_the_hub_source_gets_the_token_the_endpoint_and_the_progress_interval(
    hf_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    calls: list[tuple] = []
    real = step.hub_weights
    monkeypatch.setattr(step, "hub_weights", lambda *a, **k: calls.append((a[1:], k)) or real(*a, **k))

    assert published_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint) is None
    record = download_weights(hub_spec(tmp_path), "hf_someTokenSomeToken", endpoint=hf_hub.endpoint,
                              progress_every_bytes=1024)

    assert calls == [(("hf_someTokenSomeToken",), {"endpoint": hf_hub.endpoint, "progress_every_bytes": 1024})]
    assert (record.source, record.revision) == ("huggingface", commit)
    assert published_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint) == \
        WeightsRecord(**{**record.to_xcom(), "reused": True})


def test_a_local_checkpoint_ignores_the_token(tmp_path: Path) -> None:
    tiny_checkpoint(tmp_path / "mine")
    spec = DeploySpec(model_source="local", model_local_dir="mine", engines_root=str(tmp_path))

    record = download_weights(spec, "hf_unusedTokenUnusedToken")

    assert record.source == "local" and record.checkpoint_dir == str(tmp_path / "mine")
    assert published_weights(spec, "hf_unusedTokenUnusedToken") == record
    assert published_weights(DeploySpec(model_source="local", model_local_dir="nowhere",
                                         engines_root=str(tmp_path)), None) is None


def test_the_builtin_model_is_looked_up_without_converting(tmp_path: Path) -> None:
    assert published_weights(DeploySpec(engines_root=str(tmp_path)), None) is None
    assert not (tmp_path / "models").exists()
