"""Fault: bytes flipped in a published engine or a downloaded weights file.

Same size, so a size check still passes (and build_engine would reuse the engine); the hash check
of start_server must refuse to serve, naming the file, before any server process exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError
from llm_deploy.steps.serve import start_server
from tests.faults.processes import assert_no_server_processes


def flip_bytes(path: Path, offset: int, count: int = 4) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("artifact", ["engine", "weights"])
def test_a_corrupt_file_is_detected_before_serving(make_deployment, tmp_path, artifact):
    deployment = make_deployment()
    directory = Path(deployment.engine["engine_dir"] if artifact == "engine" else deployment.weights["checkpoint_dir"])
    corrupt = directory / "model.safetensors"
    flip_bytes(corrupt, corrupt.stat().st_size // 2)
    assert volume.is_published(directory), "same size: only a hash can tell"

    with pytest.raises(NonRetryableError) as failure:
        start_server(deployment.spec, deployment.repo, "corrupt-run")

    message = str(failure.value)
    assert message.startswith(f"refusing to serve: {directory} does not match its manifest")
    assert "model.safetensors: sha256 differs from the manifest" in message
    assert "delete that directory and rerun the step that produced it" in message
    assert list((deployment.root / "runs").rglob("tritonserver.log")) == []
    assert_no_server_processes([tmp_path])
