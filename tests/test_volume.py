"""Artifacts appear on the volume complete or not at all."""

import os

import pytest

from llm_deploy import volume
from llm_deploy.build_target import BuildTarget
from llm_deploy.spec import DeploySpec


def test_publish_is_atomic_and_writes_a_manifest(tmp_path):
    final = tmp_path / "engines" / "abc"
    with volume.publish_dir(final, manifest_extra={"note": "x"}) as scratch:
        (scratch / "rank0.safetensors").write_bytes(b"w" * 10)
        assert not final.exists(), "nothing is visible under the final name while writing"
    assert volume.is_published(final)
    manifest = volume.read_manifest(final)
    assert manifest["files"]["rank0.safetensors"]["bytes"] == 10
    assert manifest["note"] == "x"
    assert not list(final.parent.glob(".tmp-*"))


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    final = tmp_path / "e"
    with pytest.raises(RuntimeError):
        with volume.publish_dir(final) as scratch:
            (scratch / "half").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not final.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_scratch_of_a_dead_attempt_is_removed_by_the_next(tmp_path):
    final = tmp_path / "e"
    dead = tmp_path / ".tmp-e-deadbeef"
    dead.mkdir()
    (dead / ".owner").write_text(f"{os.uname().nodename} 999999999")
    with volume.publish_dir(final) as scratch:
        (scratch / "f").write_text("ok")
    assert not dead.exists()


def test_corruption_is_detected_by_the_manifest(tmp_path):
    final = tmp_path / "e"
    with volume.publish_dir(final) as scratch:
        (scratch / "w.bin").write_bytes(b"0123456789")
    (final / "w.bin").write_bytes(b"0123456780")
    assert volume.check_manifest(final) == []  # same size: only a deep check sees it
    assert volume.check_manifest(final, deep=True) == ["w.bin: sha256 differs from the manifest"]
    (final / "w.bin").write_bytes(b"short")
    assert not volume.is_published(final)


H200 = BuildTarget("tensorrt_llm 1.2.1", "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3", "NVIDIA H200", "9.0")


def test_layout_is_named_by_model_and_engine_hash():
    spec = DeploySpec.from_params({"engines_root": "/vol", "dtype": "bfloat16"})
    assert str(volume.engine_dir(spec, "w1", H200)) == (
        f"/vol/engines/torch/HuggingFaceTB--SmolLM2-135M-Instruct/{volume.engine_id(spec, 'w1', H200)}")
    assert volume.engine_id(spec, "w1", H200) != volume.engine_id(spec, "w2", H200)


@pytest.mark.parametrize("other", [
    BuildTarget("tensorrt_llm 1.2.1", H200.image, "NVIDIA L40S", "8.9"),  # another GPU type
    BuildTarget("tensorrt_llm 1.2.0", H200.image, "NVIDIA H200", "9.0"),  # another release
    BuildTarget("tensorrt_llm 1.2.1", "my-registry/triton:26.04", "NVIDIA H200", "9.0"),  # another image
])
def test_an_engine_for_another_target_is_another_engine(other):
    # Hosts of different GPU types (or images) keep an engine each instead of taking one another's.
    spec = DeploySpec.from_params({"engines_root": "/vol"})
    assert volume.engine_dir(spec, "w1", other) != volume.engine_dir(spec, "w1", H200)
    assert volume.engine_dir(spec, "w1", other).parent == volume.model_engines_dir(spec)
    assert str(volume.checkpoint_dir(spec)) == "/vol/models/HuggingFaceTB--SmolLM2-135M-Instruct/builtin"
