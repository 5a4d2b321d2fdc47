"""A tiny deployment made by the pipeline's own steps, for the faults to break.

The tiny random Llama (tests/conftest.py) is published on a fresh engines volume as a checkpoint
with our manifest, as download_weights would leave it, then download_weights (local source),
build_engine and render_model_repo run for real. Starting the server is up to each test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_deploy import volume
from llm_deploy.spec import DeploySpec
from tests.faults.processes import server_processes
from tests.fixtures.hf_hub import hf_hub  # noqa: F401 - the fake Hub for the gated/missing-revision cases

TINY_LIMITS = {"max_batch_size": 4, "max_input_len": 64, "max_output_len": 32}


@dataclass(frozen=True)
class Deployment:
    spec: DeploySpec
    weights: dict
    engine: dict
    repo: dict

    @property
    def root(self) -> Path:
        return self.spec.root


def tiny_spec(root: Path, ports: dict[str, int], **params) -> DeploySpec:
    return DeploySpec(engines_root=str(root), model_source="local", model_local_dir="models/tiny-llama",
                      **TINY_LIMITS, benchmark_max_tokens=16, benchmark_hf_baseline=False, **ports, **params)


def publish_checkpoint(source: Path, spec: DeploySpec) -> Path:
    final = spec.local_model_path()
    with volume.publish_dir(final) as scratch:
        for path in source.iterdir():
            shutil.copy2(path, scratch / path.name)
    return final


def deploy(checkpoint: Path, root: Path, ports: dict[str, int], **params) -> Deployment:
    """download_weights, build_engine and render_model_repo for the tiny model under ``root``."""
    from llm_deploy.steps.build_engine import build_engine
    from llm_deploy.steps.download_weights import download_weights
    from llm_deploy.steps.render_model_repo import render_model_repo

    spec = tiny_spec(root, ports, **params)
    publish_checkpoint(checkpoint, spec)
    weights = download_weights(spec, None).to_xcom()
    engine = build_engine(spec, weights).to_xcom()
    repo = render_model_repo(spec, engine, weights).to_xcom()
    return Deployment(spec, weights, engine, repo)


@pytest.fixture
def make_deployment(tiny_llama_checkpoint, tmp_path, free_ports_factory) -> Callable[..., Deployment]:
    def make(root: Path | None = None, **params) -> Deployment:
        return deploy(tiny_llama_checkpoint, root or tmp_path / "engines", free_ports_factory(), **params)

    return make


@pytest.fixture(autouse=True)
def kill_leftover_servers(tmp_path):
    """A failed assertion must not leak a server into the next test or suite (module-scoped
    servers live under another directory and are left to their fixture)."""
    yield
    for proc in server_processes([tmp_path], children=False):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
