"""Bad input for the trtllm backend, refused before any container starts.

Each check raises NonRetryableError whose message names the param and what is allowed, since
no retry can fix a release we have no row for or an engine built for other GPUs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llm_deploy.backends.trtllm.layout import TRTLLM_SUBMODULE
from llm_deploy.backends.trtllm import releases
from llm_deploy.backends.trtllm.releases import LAUNCH_SERVER, RELEASES, TUNING_PARAMS, Release
from llm_deploy.errors import NonRetryableError
from llm_deploy.server.admin_guard import is_loopback
from llm_deploy.spec import DeploySpec

# tritonserver's ports when launch_triton_server.py cannot set them.
DEFAULT_PORTS = {"http_port": 8000, "grpc_port": 8001, "metrics_port": 8002}
ENGINE_CONFIG = "config.json"


def release_row(name: str, engines_root: str | os.PathLike | None = None) -> Release:
    """The table's row, or the row the release watch derived onto the engines volume."""
    try:
        row = releases.find(name, engines_root)
    except releases.DerivedReleaseError as exc:
        raise NonRetryableError(f"trtllm_release={name!r}: {exc}") from None
    if row is None:
        raise NonRetryableError(
            f"trtllm_release={name!r} is not in the trtllm release table; "
            f"allowed: {', '.join(RELEASES)}"
            + (f", or a release watch_trtllm_releases derived into {Path(engines_root) / releases.DERIVED_DIR}"
               f" (none named {name!r} there)" if engines_root is not None else "")
        )
    return row


def release_of(spec: DeploySpec) -> Release:
    return release_row(spec.trtllm_release, spec.engines_root)


def parallelism(spec: DeploySpec) -> tuple[int, int]:
    """(tensor parallel, pipeline parallel) sizes; their product is always spec.world_size.

    Pipeline parallelism is 1 unless the spec carries a ``pipeline_parallel_size`` param.
    """
    pp = int(getattr(spec, "pipeline_parallel_size", 1) or 1)
    if pp < 1 or spec.world_size % pp:
        raise NonRetryableError(
            f"pipeline_parallel_size={pp} does not divide world_size={spec.world_size}; "
            f"allowed: a divisor of {spec.world_size}"
        )
    return spec.world_size // pp, pp


def validate_spec(spec: DeploySpec) -> Release:
    """Everything about the spec itself that the release table can refuse; returns the row."""
    release = release_of(spec)
    if spec.dtype not in release.dtypes:
        raise NonRetryableError(
            f"dtype={spec.dtype!r} is not supported by trtllm release {release.name}; "
            f"allowed: {', '.join(release.dtypes)}"
        )
    parallelism(spec)
    if spec.triton_flow not in release.flows:
        raise NonRetryableError(
            f"triton_flow={spec.triton_flow!r} is not offered by trtllm release {release.name} "
            f"(it serves {', '.join(repr(f) for f in release.flows)}); choose a release that has it "
            f"({', '.join(name for name, row in RELEASES.items() if spec.triton_flow in row.flows)})"
        )
    for param in sorted(TUNING_PARAMS - release.tuning_params):
        default = DeploySpec.model_fields[param].default
        if getattr(spec, param) != default:
            raise NonRetryableError(
                f"{param}={getattr(spec, param)!r}: the templates of trtllm release {release.name} have "
                f"no {param}; leave it at {default!r} or choose a release that has it "
                f"({', '.join(name for name, row in RELEASES.items() if param in row.tuning_params)})"
            )
    if not is_loopback(spec.server_host):
        # A server other hosts reach must restrict its admin APIs by key, and no release's
        # launch_triton_server.py (tests/data/upstream/*/launch_triton_server.py.json) passes
        # tritonserver an address or --http-restricted-api/--grpc-restricted-protocol.
        raise NonRetryableError(
            f"server_host={spec.server_host}: the trtllm backend serves through launch_triton_server.py, "
            f"which in release {release.name} takes no option for tritonserver's address or its "
            "restricted admin APIs, so it cannot guard a server other hosts reach; use server_host=127.0.0.1 "
            "and put an authenticating proxy in front of it")
    if not release.launch_sets_ports:
        for param, port in DEFAULT_PORTS.items():
            if getattr(spec, param) != port:
                raise NonRetryableError(
                    f"{param}={getattr(spec, param)}: launch_triton_server.py of release "
                    f"{release.name} cannot set ports, so tritonserver listens on its defaults; "
                    f"allowed: {param}={port}"
                )
    return release


def require_backend_clone(backend_dir: str | os.PathLike, release: Release, *, need_trtllm: bool = True,
                          flow: str = "engine") -> None:
    """The tensorrtllm_backend clone (and its TensorRT-LLM submodule) must be where we expect it."""
    root = Path(backend_dir)
    templates = release.llmapi_templates if flow == "llmapi" else release.templates
    expected = [root / release.scripts[LAUNCH_SERVER], root / templates]
    if need_trtllm:
        expected += [root / TRTLLM_SUBMODULE / path for key, path in release.scripts.items() if key != LAUNCH_SERVER]
    missing = [str(path) for path in expected if not path.exists()]
    if missing:
        raise NonRetryableError(
            f"backend_repo_dir: no complete tensorrtllm_backend {release.backend_ref} clone at {root} "
            f"(missing {', '.join(missing)}); clone it first (with its submodule), or set "
            "backend_repo_dir to an existing clone on the engines volume"
        )


def engine_parallelism(engine_dir: str | os.PathLike) -> tuple[int, int]:
    """(tp, pp) an engine was built for, from its config.json (0.5.0 and current layouts)."""
    path = Path(engine_dir) / ENGINE_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NonRetryableError(f"engine_dir: cannot read the engine's {path}: {exc}") from None
    mapping = (config.get("pretrained_config") or {}).get("mapping")
    if mapping:  # convert_checkpoint + trtllm-build engines
        return int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    builder = config.get("builder_config")
    if builder:  # legacy build.py engines (0.5-era)
        return int(builder.get("tensor_parallel", 1)), int(builder.get("pipeline_parallel", 1))
    raise NonRetryableError(f"engine_dir: {path} names no parallelism (no pretrained_config.mapping or builder_config)")


def check_engine_world_size(spec: DeploySpec, engine_dir: str | os.PathLike) -> None:
    """Serve only with the world size the engine was built for (checked at serve time)."""
    tp, pp = engine_parallelism(engine_dir)
    if tp * pp != spec.world_size:
        raise NonRetryableError(
            f"world_size={spec.world_size}: the engine in {engine_dir} was built for "
            f"{tp * pp} GPUs (tensor parallel {tp} x pipeline parallel {pp}); "
            f"allowed: world_size={tp * pp}, or rebuild the engine"
        )
