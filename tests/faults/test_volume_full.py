"""Fault: the engines volume fills up during a build (a real 24 MiB tmpfs as engines_root).

The build must fail with a readable "volume is full" error that names the path and the space, not
be retried (rewriting the same bytes onto the same full volume fails the same way; only freeing
space helps, by hand or by retention), leave no scratch behind, and leave the engine that was
already published there intact.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.build_engine import build_engine
from llm_deploy.steps.download_weights import download_weights
from tests.support.engines import engine_dir_here

VOLUME_MB = 24
SHARDS, SHARD_FLOATS = 3, 1024 * 1024  # 12 MiB of float32: fits once, not twice next to the rest


@pytest.fixture
def small_volume(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "engines"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME_MB}m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def big_checkpoint(spec: DeploySpec) -> dict:
    import torch
    from safetensors.torch import save_file

    with volume.publish_dir(spec.local_model_path()) as scratch:
        (scratch / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
        for index in range(SHARDS):
            save_file({f"w{index}": torch.rand(SHARD_FLOATS)}, scratch / f"model-{index}.safetensors")
    return download_weights(spec, None).to_xcom()


def test_a_full_volume_fails_the_build_clearly_and_keeps_the_previous_engine(make_deployment, small_volume):
    previous = make_deployment(root=small_volume)
    previous_engine = previous.engine["engine_dir"]
    spec = DeploySpec(engines_root=str(small_volume), model_source="local", model_local_dir="models/big")
    weights = big_checkpoint(spec)
    final = engine_dir_here(spec, weights["manifest_sha256"])

    with pytest.raises(NonRetryableError) as failure:
        build_engine(spec, weights)

    message = str(failure.value)
    assert message.startswith(f"the engines volume is full: no space left on device while writing {final} ")
    assert "needs more than " in message and " MiB free of 24.0 MiB" in message
    assert "Free space" in message and "grow the volume" in message
    assert "No space left on device" in str(failure.value.__cause__)  # the original error is chained
    assert not final.exists()
    assert [p.name for p in final.parent.iterdir() if p.name.startswith(".tmp-")] == []
    assert volume.check_manifest(Path(previous_engine), deep=True) == []
