"""trtllm's "install the TensorRT-LLM python package" (the tutorial's scripts/build_wheel.py).

Clone tensorrtllm_backend at the release's pinned commit onto the engines volume (once per
release), then build the wheel there (0.5.0) or pip-install the release's wheel.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llm_deploy import volume
from llm_deploy.backends.trtllm import commands, validation
from llm_deploy.backends.trtllm.execution import backend_dir, paths_for, preflight, run_commands, runner, wheel_dir
from llm_deploy.errors import StepError
from llm_deploy.records import WheelRecord
from llm_deploy.runners.command import Runner
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

# Cloning with LFS and building the C++ runtime take long; these only stop a hung command.
CLONE_TIMEOUT_S = 3600
WHEEL_TIMEOUT_S = 4 * 3600


def build_wheel(spec: DeploySpec) -> WheelRecord:
    """Clone the backend (unless a clone is published already) and make tensorrt_llm installable."""
    on = runner(spec)
    release = preflight(spec, on, "build_wheel")
    clone = backend_dir(spec)
    reused = _ensure_clone(spec, on, clone)
    validation.require_backend_clone(clone, release)
    if release.wheel.kind == "pip":
        run_commands(on, spec, "build_wheel", commands.install_wheel(spec, paths_for(spec)),
                     writes=[], timeout_s=WHEEL_TIMEOUT_S, gpu=False)
        return WheelRecord(str(clone), "", release.name, reused)
    final = wheel_dir(spec)
    if volume.is_published(final) and any(final.glob("tensorrt_llm-*.whl")):
        log.info("tensorrt_llm %s wheel already built: %s", release.name, final)
        return WheelRecord(str(clone), str(final), release.name, reused)
    with volume.publish_dir(final, manifest_extra={"release": release.name}) as scratch:
        argvs = commands.install_wheel(spec, paths_for(spec, wheel_dir=str(scratch)))
        # build_wheel.py builds the C++ runtime under the clone's cpp/build: the clone is written too.
        run_commands(on, spec, "build_wheel", argvs, writes=[clone, final.parent], timeout_s=WHEEL_TIMEOUT_S,
                     gpu=False)
        if not any(scratch.glob("tensorrt_llm-*.whl")):
            raise StepError(f"build_wheel.py finished but wrote no tensorrt_llm wheel into {scratch}")
    return WheelRecord(str(clone), str(final), release.name, reused)


def _ensure_clone(spec: DeploySpec, on: Runner, clone: Path) -> bool:
    if spec.backend_repo_dir:
        # The user's own clone: used as it is, never replaced (and never fetched over).
        validation.require_backend_clone(clone, validation.release_of(spec))
        return True
    if volume.is_published(clone):
        log.info("tensorrtllm_backend %s already cloned: %s", spec.trtllm_release, clone)
        return True
    with volume.publish_dir(clone, manifest_extra={"release": spec.trtllm_release}) as scratch:
        # git clone wants to create its target itself.
        scratch.rmdir()
        run_commands(on, spec, "clone_backend", commands.clone_backend(spec, paths_for(spec, backend_dir=str(scratch))),
                     writes=[clone.parent], timeout_s=CLONE_TIMEOUT_S, gpu=False)
    return False
