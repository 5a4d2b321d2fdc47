"""The torch backend's steps for real through the docker runner: one container per step.

download_weights (a local checkpoint on the volume), build_engine and verify_engine each run as
``python -m llm_deploy.cli`` in the local torch image, through DockerOperator, with the engines
volume bind-mounted (read-only, plus the one directory a step publishes into). The records they
return chain exactly as XCom would chain them, and the published engine is checked from outside.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from llm_deploy import volume
from llm_deploy.backends.torch.build_engine import ENGINE_CONFIG
from llm_deploy.errors import NonRetryableError
from llm_deploy.runners import DockerRunner, runner_for
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.through_runner import run_python_step
from llm_deploy.volume import weights_digest
from tests.support.engines import engine_dir_here

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture
def docker_spec(tmp_path, tiny_llama_checkpoint, torch_image) -> DeploySpec:
    root = tmp_path / "engines"
    shutil.copytree(tiny_llama_checkpoint, root / "models" / "tiny")
    return DeploySpec.from_params({
        "engines_root": str(root), "runner": "docker", "docker_image": torch_image,
        "model_source": "local", "model_local_dir": "models/tiny",
        "max_batch_size": 4, "max_input_len": 64, "max_output_len": 32, "benchmark_max_tokens": 16,
    })


def test_build_and_verify_engine_run_in_containers_and_publish_an_intact_engine(docker_spec, leftover_containers):
    runner = runner_for(docker_spec)
    assert isinstance(runner, DockerRunner) and runner.image == docker_spec.docker_image

    weights = run_python_step(runner, "download_weights", docker_spec)
    engine = run_python_step(runner, "build_engine", docker_spec, weights)
    verified = run_python_step(runner, "verify_engine", docker_spec, engine, weights)

    engine_dir = engine_dir_here(docker_spec, weights_digest(weights))
    assert engine["engine_dir"] == str(engine_dir) and not engine["reused"]
    assert volume.check_manifest(engine_dir, deep=True) == []
    config = json.loads((engine_dir / ENGINE_CONFIG).read_text())
    assert config["backend"] == "torch" and config["dtype"] == "float32"
    assert (config["max_batch_size"], config["max_input_len"], config["max_output_len"]) == (4, 64, 32)
    assert config["world_size"] == 1 and config["spec_hash"] == docker_spec.engine_hash
    assert config["source_checkpoint"]["dir"] == weights["checkpoint_dir"]
    # verify_engine ran the engine in its container and matched transformers token for token.
    assert verified["engine_dir"] == str(engine_dir) and verified["tokens"] > 0
    # Containers ran as the worker's user: what they published stays the worker's to manage.
    assert engine_dir.stat().st_uid == os.getuid()
    assert leftover_containers("build_engine") == [] and leftover_containers("verify_engine") == []

    again = run_python_step(runner, "build_engine", docker_spec, weights)
    assert again["reused"] and again["engine_dir"] == str(engine_dir)


def test_a_step_error_in_the_container_comes_back_as_the_same_exception(docker_spec):
    runner = runner_for(docker_spec)
    empty = docker_spec.root / "models" / "empty"
    empty.mkdir(parents=True)
    with pytest.raises(NonRetryableError, match="holds no \\*.safetensors"):
        run_python_step(runner, "build_engine", docker_spec, {"checkpoint_dir": str(empty), "manifest_sha256": "x"})


def test_render_model_repo_runs_in_a_container_too(docker_spec):
    runner = runner_for(docker_spec)
    weights = run_python_step(runner, "download_weights", docker_spec)
    engine = run_python_step(runner, "build_engine", docker_spec, weights)
    repo = run_python_step(runner, "render_model_repo", docker_spec, engine, weights)
    assert repo["models"] == ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm"]
    assert volume.check_manifest(Path(repo["model_repo"]), deep=True) == []
