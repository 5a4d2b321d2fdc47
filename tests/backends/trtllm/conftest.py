"""A worker inside the NGC image, made of stand-ins (``standins``), for the trtllm steps' tests."""

from __future__ import annotations

import pytest
from llm_deploy.backends.trtllm import commands

from tests.backends.trtllm.standins import make_spec, make_toolbox


@pytest.fixture(scope="module")
def toolbox(tmp_path_factory):
    return make_toolbox(tmp_path_factory.mktemp("ngc-worker"))


@pytest.fixture
def worker(toolbox, monkeypatch, tmp_path):
    """This process (and the local runner's subprocesses) as a worker inside the NGC image."""
    for key, value in toolbox.env().items():
        monkeypatch.setenv(key, value)
    # install_cmake.sh's link goes into the image's /usr/local/bin; here into a scratch dir.
    monkeypatch.setattr(commands, "CMAKE_LINK", str(tmp_path / "cmake-link"))
    toolbox.calls.unlink(missing_ok=True)
    return toolbox


@pytest.fixture
def spec_for(worker, tmp_path, tiny_llama_checkpoint):
    def make(release, **params):
        return make_spec(tmp_path / "engines", tiny_llama_checkpoint, worker, release, **params)

    return make
