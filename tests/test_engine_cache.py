"""The engine cache: a verified engine is found again, a corrupt one is rebuilt, retention keeps N
engines and never removes one a live server holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from llm_deploy import engine_cache, volume
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.build_engine import build_engine
from llm_deploy.steps.download_weights import download_weights
from llm_deploy.steps.verify_engine import verify_engine


def make_spec(root: Path, checkpoint: Path, **params) -> DeploySpec:
    local = root / "models" / "tiny-llama"
    if not local.exists():
        # Published with our manifest, as download_weights leaves a checkpoint.
        with volume.publish_dir(local) as scratch:
            for path in checkpoint.iterdir():
                shutil.copy2(path, scratch / path.name)
    return DeploySpec(engines_root=str(root), model_source="local", model_local_dir="models/tiny-llama",
                      max_batch_size=4, max_input_len=64, max_output_len=32, benchmark_max_tokens=16, **params)


def build_and_verify(spec: DeploySpec) -> tuple[dict, dict]:
    weights = download_weights(spec, None).to_xcom()
    engine = build_engine(spec, weights).to_xcom()
    verify_engine(spec, engine, weights)
    return weights, engine


def test_a_verified_engine_is_found_before_any_download(tmp_path, tiny_llama_checkpoint):
    spec = make_spec(tmp_path, tiny_llama_checkpoint)
    assert engine_cache.find_cached(spec, None) is None  # built, but not verified yet: no hit
    weights, engine = build_and_verify(spec)

    hit = engine_cache.find_cached(spec, None)

    assert hit["engine"]["engine_dir"] == engine["engine_dir"] and hit["engine"]["reused"] is True
    assert hit["weights"]["checkpoint_dir"] == weights["checkpoint_dir"]
    assert hit["verified"]["manifest_sha256"] == engine_cache.manifest_digest(Path(engine["engine_dir"]))
    # Other engine inputs, another engine: no hit.
    assert engine_cache.find_cached(spec.model_copy(update={"max_batch_size": 2}), None) is None


def test_a_corrupt_engine_is_no_hit_and_is_rebuilt(tmp_path, tiny_llama_checkpoint):
    spec = make_spec(tmp_path, tiny_llama_checkpoint)
    weights, engine = build_and_verify(spec)
    shard = Path(engine["engine_dir"]) / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit, same size: only the sha256 notices
    shard.write_bytes(bytes(data))

    assert engine_cache.find_cached(spec, None) is None
    rebuilt = build_engine(spec, weights)

    assert rebuilt.engine_dir == engine["engine_dir"] and rebuilt.reused is False
    assert not volume.check_manifest(Path(rebuilt.engine_dir), deep=True)
    assert not (Path(rebuilt.engine_dir) / engine_cache.MARKER).exists(), "a rebuilt engine must be verified again"
    assert not list(Path(rebuilt.engine_dir).parent.glob(".trash-*"))


def fake_verified_engine(parent: Path, name: str, verified_unix: float) -> Path:
    """A published engine dir with a marker, as verify_engine leaves one (only the retention's view)."""
    with volume.publish_dir(parent / name) as scratch:
        (scratch / "model.safetensors").write_bytes(os.urandom(1024))
    engine_cache.mark_verified(parent / name, {})
    marker = json.loads((parent / name / engine_cache.MARKER).read_text())
    (parent / name / engine_cache.MARKER).write_text(json.dumps({**marker, "verified_unix": verified_unix}))
    return parent / name


def test_retention_keeps_the_newest_and_every_engine_a_live_server_holds(tmp_path):
    spec = DeploySpec(engines_root=str(tmp_path), keep_engines=2)
    parent = tmp_path / "engines" / "torch" / "model"
    now = time.time()
    engines = {age: fake_verified_engine(parent, f"engine-{age}", now - age * 3600) for age in range(5)}
    server = subprocess.Popen(["sleep", "60"])  # stands for a tritonserver serving engine-3
    try:
        engine_cache.take_lease(engines[3], run_id="manual__serving", pid=server.pid)
        dead = subprocess.Popen(["true"])
        dead.wait()
        engine_cache.take_lease(engines[4], run_id="manual__crashed", pid=dead.pid)  # its server is gone

        removed = engine_cache.apply_retention(spec, engines[0])
    finally:
        server.kill()
        server.wait()

    assert sorted(removed) == sorted(str(engines[age]) for age in (2, 4))
    assert {p.name for p in parent.iterdir()} == {"engine-0", "engine-1", "engine-3"}


def test_an_engine_being_verified_outlives_another_runs_retention(tmp_path):
    # A reused engine verified long ago is the oldest candidate, and is checked again meanwhile.
    spec = DeploySpec(engines_root=str(tmp_path), keep_engines=1)
    parent = tmp_path / "engines" / "torch" / "model"
    old = fake_verified_engine(parent, "engine-old", time.time() - 3600)
    current = fake_verified_engine(parent, "engine-current", time.time())

    with engine_cache.in_use(old, "verify"):
        assert engine_cache.apply_retention(spec, current) == []
        assert engine_cache.live_leases(old)
    assert not list(old.glob(engine_cache.LEASE_GLOB))
    assert engine_cache.apply_retention(spec, current) == [str(old)]


def test_keep_engines_zero_keeps_everything(tmp_path):
    parent = tmp_path / "engines" / "torch" / "model"
    engines = [fake_verified_engine(parent, f"engine-{i}", time.time() - i) for i in range(4)]
    assert engine_cache.apply_retention(DeploySpec(engines_root=str(tmp_path), keep_engines=0), engines[0]) == []
    assert len(list(parent.iterdir())) == 4


def test_a_server_lease_lives_from_start_to_stop(tmp_path):
    engine = tmp_path / "engine"
    engine.mkdir()
    lease = engine_cache.take_lease(engine, run_id="manual__1", pid=os.getpid())
    assert [entry["run_id"] for entry in engine_cache.live_leases(engine)] == ["manual__1"]
    engine_cache.release_lease(engine, "manual__1")
    assert not lease.exists() and engine_cache.live_leases(engine) == []


@pytest.mark.parametrize("value", [-1, 1001])
def test_keep_engines_is_validated(value):
    from llm_deploy.spec import SpecError

    with pytest.raises(SpecError, match="keep_engines"):
        DeploySpec.from_params({"keep_engines": value})


def test_a_marker_of_another_manifest_is_no_hit(tmp_path, tiny_llama_checkpoint):
    # An engine republished under the same name (or its manifest edited) after it was verified.
    spec = make_spec(tmp_path, tiny_llama_checkpoint)
    _, engine = build_and_verify(spec)
    manifest = Path(engine["engine_dir"]) / volume.MANIFEST
    manifest.write_text(manifest.read_text() + "\n")

    assert engine_cache.find_cached(spec, None) is None


def test_retention_clears_trash_a_crash_left_behind(tmp_path):
    parent = tmp_path / "engines" / "torch" / "model"
    current = fake_verified_engine(parent, "engine-0", time.time())
    crashed = parent / f"{engine_cache.TRASH_PREFIX}engine-9-deadbeef"
    (crashed / "sub").mkdir(parents=True)
    (crashed / "sub" / "rank0.engine").write_bytes(b"half deleted")

    engine_cache.apply_retention(DeploySpec(engines_root=str(tmp_path), keep_engines=3), current)

    assert [p.name for p in parent.iterdir()] == ["engine-0"]
