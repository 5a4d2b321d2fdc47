"""trtllm's "create the engine": upstream's convert/build commands for the release."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from llm_deploy.backends.trtllm import commands, validation
from llm_deploy.backends.trtllm.execution import backend_dir, paths_for, preflight, run_commands, runner, wheel_prefix
from llm_deploy.errors import StepError
from llm_deploy.spec import DeploySpec

ENGINE_TIMEOUT_S = 4 * 3600  # only stops a hung build


def build_engine(spec: DeploySpec, checkpoint: dict, out_dir: Path) -> None:
    """Build the engine for ``spec`` from ``checkpoint`` into ``out_dir``, one *.engine per rank."""
    on = runner(spec)
    preflight(spec, on, "build_engine")
    validation.require_backend_clone(backend_dir(spec), validation.release_of(spec))
    prefix = wheel_prefix(spec)
    # Releases that convert first write the converted checkpoint beside the engine, never in it.
    converted = out_dir.parent / f".tmp-converted-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        paths = paths_for(spec, hf_checkpoint_dir=checkpoint["checkpoint_dir"], engine_dir=f"{out_dir}/",
                          converted_checkpoint_dir=str(converted))
        run_commands(on, spec, "build_engine", prefix + commands.build_engine(spec, paths),
                     writes=[out_dir.parent], timeout_s=ENGINE_TIMEOUT_S, gpu=True)
        engines = sorted(out_dir.glob("*.engine"))
        if len(engines) != spec.world_size:
            raise StepError(f"the build wrote {len(engines)} *.engine files into {out_dir}, "
                            f"expected one per rank ({spec.world_size})")
        validation.check_engine_world_size(spec, out_dir)
    finally:
        if converted.exists():
            shutil.rmtree(converted, ignore_errors=True)
