"""The local source: a checkpoint already on the volume, recorded as is and never written to."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec
from llm_deploy.weights.local import local_weights
from llm_deploy.weights.published import WeightsRecord
from tests.fixtures.hf_hub import tiny_checkpoint


def test_local_checkpoint_is_recorded_not_copied(tmp_path: Path) -> None:
    model = tmp_path / "mine" / "llama"
    tiny_checkpoint(model)
    before = {p: p.stat().st_mtime_ns for p in model.rglob("*")}
    spec = DeploySpec(model_source="local", model_local_dir="mine/llama", engines_root=str(tmp_path))

    record = local_weights(spec)

    assert record == WeightsRecord(
        checkpoint_dir=str(model), source="local", model_id=None, revision=None,
        files=len(before), bytes=sum(p.stat().st_size for p in before), manifest_sha256=None, reused=True,
        files_fingerprint=record.files_fingerprint,
    )
    assert len(record.files_fingerprint) == 64
    assert {p: p.stat().st_mtime_ns for p in model.rglob("*")} == before  # nothing written
    assert not (tmp_path / "models").exists()


def test_an_edited_local_checkpoint_gets_another_identity(tmp_path: Path) -> None:
    # Its identity names the engine: the same identity after an edit would serve a stale engine.
    from llm_deploy.volume import weights_digest

    model = tmp_path / "mine" / "llama"
    tiny_checkpoint(model)
    spec = DeploySpec(model_source="local", model_local_dir="mine/llama", engines_root=str(tmp_path))
    first = local_weights(spec).to_xcom()
    assert weights_digest(local_weights(spec).to_xcom()) == weights_digest(first)

    tiny_checkpoint(model, seed=1)  # new weights, same names and sizes

    assert weights_digest(local_weights(spec).to_xcom()) != weights_digest(first)


def test_a_local_checkpoint_with_our_manifest_is_named_by_it_until_its_files_change(tmp_path: Path) -> None:
    from llm_deploy.volume import weights_digest

    model = tmp_path / "mine" / "llama"
    with volume.publish_dir(model) as scratch:
        tiny_checkpoint(scratch)
    spec = DeploySpec(model_source="local", model_local_dir="mine/llama", engines_root=str(tmp_path))
    record = local_weights(spec)
    assert record.manifest_sha256 == hashlib.sha256((model / volume.MANIFEST).read_bytes()).hexdigest()
    assert weights_digest(record.to_xcom()) == record.manifest_sha256

    (model / "config.json").write_text(json.dumps({"edited": True}))  # the manifest now lies

    edited = local_weights(spec)
    assert edited.manifest_sha256 is None and edited.files_fingerprint
    assert weights_digest(edited.to_xcom()) != weights_digest(record.to_xcom())


def test_local_dir_must_exist(tmp_path: Path) -> None:
    spec = DeploySpec(model_source="local", model_local_dir="nowhere", engines_root=str(tmp_path))
    with pytest.raises(NonRetryableError, match="does not exist on this worker"):
        local_weights(spec)


def test_local_dir_must_hold_config_and_weights(tmp_path: Path) -> None:
    model = tmp_path / "half"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "notes.txt").write_text("weights coming soon")
    spec = DeploySpec(model_source="local", model_local_dir=str(model), engines_root=str(tmp_path))

    with pytest.raises(NonRetryableError, match=r"no weights .*; found: config.json, notes.txt"):
        local_weights(spec)
