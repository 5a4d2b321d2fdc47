"""Fault: the build_engine step's process is SIGKILLed while it writes the engine.

The step runs as runners do it, ``python -m llm_deploy.cli build_engine`` in a child process, on a
checkpoint of several shards so that the kill lands between the first shard and the manifest.
Nothing may appear under the engine's final name, and the retry must publish a complete engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_deploy import volume
from llm_deploy.cli import parse_outcome
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.download_weights import download_weights
from tests.support.engines import engine_dir_here

pytestmark = pytest.mark.timeout(300)

SHARDS = 8
SHARD_FLOATS = 4 * 1024 * 1024  # 16 MiB of float32 per shard: the cast takes a while, not forever
REPO_ROOT = Path(__file__).resolve().parents[2]


def sharded_checkpoint(spec: DeploySpec) -> None:
    """A checkpoint of SHARDS safetensors files, published with our manifest like a download."""
    import torch
    from safetensors.torch import save_file

    with volume.publish_dir(spec.local_model_path()) as scratch:
        (scratch / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
        for index in range(SHARDS):
            save_file({f"layer{index}.weight": torch.full((SHARD_FLOATS,), float(index))},
                      scratch / f"model-{index + 1:05d}-of-{SHARDS:05d}.safetensors")


def build_in_child(spec: DeploySpec, weights: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'plugins'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-m", "llm_deploy.cli", "build_engine", "--spec-json", spec.model_dump_json(),
         "--inputs-json", json.dumps([weights])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def scratch_dirs(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f".tmp-{final.name}-*")) if final.parent.exists() else []


def test_a_build_killed_midway_leaves_no_engine_and_the_retry_publishes_a_complete_one(tmp_path):
    spec = DeploySpec(engines_root=str(tmp_path), model_source="local", model_local_dir="models/sharded",
                      dtype="float16")
    sharded_checkpoint(spec)
    weights = download_weights(spec, None).to_xcom()
    final = engine_dir_here(spec, weights["manifest_sha256"])

    child = build_in_child(spec, weights)
    deadline = time.monotonic() + 120
    seen_writing = None
    while time.monotonic() < deadline and child.poll() is None:
        assert not final.exists(), "a half-built engine appeared under its final name"
        writing = [d for d in scratch_dirs(final) if any(d.glob("*.safetensors"))]
        if writing:
            seen_writing = writing[0]
            break
        time.sleep(0.005)
    assert seen_writing is not None, f"the build never started writing: {child.communicate()}"
    child.send_signal(signal.SIGKILL)
    child.communicate()

    assert child.returncode == -signal.SIGKILL
    assert not final.exists()
    [leftover] = scratch_dirs(final)  # the killed attempt's scratch, midway: no manifest yet
    assert not (leftover / volume.MANIFEST).exists()
    assert len(list(leftover.glob("*.safetensors"))) < SHARDS

    retry = build_in_child(spec, weights)
    out, err = retry.communicate(timeout=240)

    outcome = parse_outcome(out.splitlines())
    assert retry.returncode == 0 and outcome["status"] == "ok", err[-2000:]
    assert outcome["result"]["engine_dir"] == str(final) and outcome["result"]["reused"] is False
    assert volume.check_manifest(final, deep=True) == []
    assert len(volume.read_manifest(final)["files"]) == SHARDS + 2  # shards, config.json, engine_config.json
    assert scratch_dirs(final) == [], "the retry removed the killed attempt's scratch"
    assert f"removing scratch {leftover}" in err
