"""Where an engine of a spec lands on the volume, for tests that look at it directly.

The build target is this machine's, read by the spec's backend as build_engine reads it.
"""

from __future__ import annotations

from pathlib import Path

from llm_deploy import volume
from llm_deploy.backends.registry import backend_for
from llm_deploy.spec import DeploySpec


def engine_dir_here(spec: DeploySpec, weights_digest: str | None) -> Path:
    return volume.engine_dir(spec, weights_digest, backend_for(spec).build_target(spec, "test"))
