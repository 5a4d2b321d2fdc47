"""The torch twin's ``inflight_batcher_llm`` Triton model repository, rendered from a DeploySpec.

Upstream fills its config.pbtxt files with ``tools/fill_template.py`` (string.Template
``safe_substitute``), which silently leaves a forgotten ``${var}`` in the file for the server to
choke on. Here the templates (include/templates/inflight_batcher_llm) are jinja2 with
StrictUndefined, so a missing value fails at render time naming the variable and the template,
and every rendered file is parsed into Triton's ModelConfig protobuf (``llm_deploy.model_config``)
before anybody starts a server on it. Each model's python-backend code comes from
``llm_deploy/triton_models``. The trtllm backend fills upstream's own repository instead
(``backends/trtllm/model_repo.py``).

Kept free of torch/transformers imports: the Airflow scheduler imports it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from llm_deploy.model_config import CONFIG, ModelRepoError, parse_model_config
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

# Ensemble last: it references the other three, and Triton checks that on load.
MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble")
TEMPLATE_SET = "inflight_batcher_llm"
VERSION = "1"

_PACKAGE_DIR = Path(__file__).resolve().parents[2]  # plugins/llm_deploy
_PLUGINS_DIR = _PACKAGE_DIR.parent
_TRITON_MODELS = _PACKAGE_DIR / "triton_models"
# Our python-backend implementation of each model. pre/postprocessing serve both backends (they
# only need transformers, which the NGC Triton TensorRT-LLM image has); tensorrt_llm only the twin.
_MODEL_SOURCES = {
    "preprocessing": "preprocessing.py",
    "postprocessing": "postprocessing.py",
    "tensorrt_llm": "tensorrt_llm_torch.py",
}
# Helper modules copied next to the model.py of the models that import them (Triton's python
# backend puts the model's version directory on sys.path).
_MODEL_HELPERS = {
    "preprocessing": ("tokenizer_loading.py",),
    "postprocessing": ("tokenizer_loading.py",),
    "tensorrt_llm": ("tensorrt_llm_tensors.py",),
}
# Triton backends our templates render for: the twin's python model, or TensorRT-LLM's own.
TRITON_BACKENDS = ("python", "tensorrtllm")


def templates_dir() -> Path:
    """include/templates/inflight_batcher_llm, next to plugins/ (or under $LLM_DEPLOY_TEMPLATES_DIR)."""
    override = os.environ.get("LLM_DEPLOY_TEMPLATES_DIR")
    candidates = [Path(override) / TEMPLATE_SET] if override else []
    candidates.append(_PLUGINS_DIR.parent / "include" / "templates" / TEMPLATE_SET)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ModelRepoError(f"template directory not found; looked in {', '.join(map(str, candidates))}")


def templates_fingerprint() -> str:
    """sha256 over the templates and the model.py sources: a rendered repo is stale when it changes."""
    digest = hashlib.sha256()
    files = sorted(templates_dir().glob(f"*/{CONFIG}.j2")) + sorted(_TRITON_MODELS.glob("*.py"))
    for path in files:
        digest.update(f"{path.parent.name}/{path.name}".encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def template_context(
    spec: DeploySpec,
    *,
    triton_backend: str = "python",
    engine_dir: Path,
    tokenizer_dir: Path,
    decoupled: bool = True,
    tokenizer_type: str = "auto",
    exclude_input_in_output: bool = False,
) -> dict[str, Any]:
    """Every value the four templates use; the keys are upstream's fill_template.py variable names."""
    return {
        "backend": triton_backend,
        "triton_max_batch_size": spec.max_batch_size,
        "decoupled_mode": decoupled,
        "max_queue_delay_microseconds": spec.max_queue_delay_microseconds,
        "tokenizer_dir": str(tokenizer_dir),
        "tokenizer_type": tokenizer_type,
        "engine_dir": str(engine_dir),
        "max_beam_width": 1,
        "gpt_model_type": "inflight_fused_batching",
        "batch_scheduler_policy": spec.batch_scheduler_policy,
        "max_num_sequences": spec.max_batch_size,
        # Left to the TensorRT-LLM runtime's defaults (the tutorial does not set them).
        "max_tokens_in_paged_kv_cache": None,
        "kv_cache_free_gpu_mem_fraction": None,
        "enable_trt_overlap": False,
        "exclude_input_in_output": exclude_input_in_output,
        # Twin only: where Triton's embedded interpreter finds llm_deploy if it is not installed.
        "llm_deploy_path": str(_PLUGINS_DIR),
        "device": "auto",
    }


def render_repository(
    spec: DeploySpec,
    *,
    triton_backend: str = "python",
    engine_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    decoupled: bool = True,
    tokenizer_type: str = "auto",
    exclude_input_in_output: bool = False,
) -> list[Path]:
    """Write out_dir/<model>/config.pbtxt (+ 1/model.py) for the four models; return the configs.

    Every rendered config is parsed as Triton's ModelConfig, so a bad file fails here, not in the
    server's log.
    """
    if triton_backend not in TRITON_BACKENDS:
        raise ModelRepoError(f"Triton backend {triton_backend!r}: the templates render for {', '.join(TRITON_BACKENDS)}")
    context = template_context(
        spec,
        triton_backend=triton_backend,
        engine_dir=engine_dir,
        tokenizer_dir=tokenizer_dir,
        decoupled=decoupled,
        tokenizer_type=tokenizer_type,
        exclude_input_in_output=exclude_input_in_output,
    )
    configs = [_write_model(model, context, Path(out_dir), triton_backend) for model in MODELS]
    for path in configs:
        parse_model_config(path)
    log.info("rendered %s model repository (Triton %s backend) in %s", TEMPLATE_SET, triton_backend, out_dir)
    return configs


def render_template(name: str, context: Mapping[str, Any]) -> str:
    """Render ``<name>/config.pbtxt.j2``; an unset variable raises ModelRepoError naming it."""
    template_name = f"{name}/{CONFIG}.j2"
    try:
        return _environment().get_template(template_name).render(**context)
    except jinja2.UndefinedError as exc:
        raise ModelRepoError(f"template {template_name}: {exc.message} (no value for it)") from None
    except jinja2.TemplateError as exc:
        raise ModelRepoError(f"template {template_name}: {exc}") from None
    except ModelRepoError as exc:  # from a filter: say which template used it
        raise ModelRepoError(f"template {template_name}: {exc}") from None


def _write_model(model: str, context: Mapping[str, Any], out_dir: Path, backend: str) -> Path:
    model_dir = out_dir / model
    version_dir = model_dir / VERSION
    # Triton needs a version directory even for the ensemble and the C++ tensorrtllm backend.
    version_dir.mkdir(parents=True, exist_ok=True)
    config = model_dir / CONFIG
    config.write_text(render_template(model, context))
    copy_model_code(model, version_dir, backend)
    log.debug("rendered %s", config)
    return config


def copy_model_code(model: str, version_dir: Path, triton_backend: str = "python") -> None:
    """Copy ``model``'s python-backend code into its version directory: model.py and the helper
    modules it imports. Nothing for the ensemble, or for tensorrt_llm on TensorRT-LLM's own backend."""
    source = _model_source(model, triton_backend)
    if source is None:
        return
    shutil.copyfile(source, version_dir / "model.py")
    for helper in _MODEL_HELPERS.get(model, ()):
        shutil.copyfile(_TRITON_MODELS / helper, version_dir / helper)


def _model_source(model: str, triton_backend: str) -> Path | None:
    # TensorRT-LLM's backend is a shared library: only the twin's tensorrt_llm has a model.py.
    if model == "ensemble" or (model == "tensorrt_llm" and triton_backend != "python"):
        return None
    return _TRITON_MODELS / _MODEL_SOURCES[model]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - protobuf text, not HTML; pbstr does the escaping
    )
    env.filters["pbstr"] = _pb_string
    env.filters["pbbool"] = _pb_bool
    return env


def _pb_string(value: Any) -> str:
    """Escape a value for a double-quoted protobuf text string (paths may hold quotes or '\\')."""
    _require_defined(value)
    text = _pb_bool(value) if isinstance(value, bool) else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _pb_bool(value: Any) -> str:
    _require_defined(value)
    if not isinstance(value, bool):
        raise ModelRepoError(f"expected a boolean, got {value!r}")
    return "true" if value else "false"


def _require_defined(value: Any) -> None:
    # Filters see StrictUndefined as a value; str() makes it raise UndefinedError naming the variable.
    if isinstance(value, jinja2.Undefined):
        str(value)
