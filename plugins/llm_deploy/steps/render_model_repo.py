"""Tutorial step "copy inflight_batcher_llm and fill its config.pbtxt files".

Instead of sed over upstream's templates, our jinja2 templates render the repository from the
spec with every value required, and every config.pbtxt is parsed as Triton's ModelConfig before
the repository is published (atomically, like an engine).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_deploy import volume
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRepoRecord:
    model_repo: str
    models: list[str]
    decoupled: bool
    reused: bool

    def to_xcom(self) -> dict:
        return asdict(self)


def repo_settings(spec: DeploySpec, engine_dir: str, tokenizer_dir: str) -> dict:
    """What the rendered files depend on besides the templates themselves."""
    return {
        "engine_dir": engine_dir,
        "tokenizer_dir": tokenizer_dir,
        "backend": spec.backend,
        "max_batch_size": spec.max_batch_size,
        "batch_scheduler_policy": spec.batch_scheduler_policy,
        "max_queue_delay_microseconds": spec.max_queue_delay_microseconds,
        "decoupled": True,
        "exclude_input_in_output": True,
    }


def _templates(spec: DeploySpec, ours) -> str:
    """What the files are rendered from: our templates' hash, or upstream's pinned commit."""
    if spec.backend == "trtllm":
        from llm_deploy.backends.trtllm.releases import RELEASES

        return f"tensorrtllm_backend@{RELEASES[spec.trtllm_release].backend_commit}"
    return ours()


def render_model_repo(spec: DeploySpec, engine: dict, checkpoint: dict) -> ModelRepoRecord:
    from llm_deploy.model_repo import render_repository, templates_fingerprint

    settings = repo_settings(spec, engine["engine_dir"], checkpoint["checkpoint_dir"])
    settings["templates"] = _templates(spec, templates_fingerprint)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    final = volume.model_repo_dir(spec).with_name(f"inflight_batcher_llm-{key}")
    reused = volume.is_published(final)
    if not reused:
        with volume.publish_dir(final, manifest_extra={"settings": settings}) as scratch:
            if spec.backend == "trtllm":
                # Upstream's own repository from the backend clone, every placeholder filled.
                from llm_deploy.backends.trtllm import pipeline

                pipeline.render_model_repo(spec, engine, checkpoint, scratch)
            else:
                render_repository(
                    spec,
                    engine_dir=Path(engine["engine_dir"]),
                    tokenizer_dir=Path(checkpoint["checkpoint_dir"]),
                    out_dir=scratch,
                    decoupled=True,
                    # Clients want the completion, not the prompt echoed back (0.5.0 echoed it;
                    # later releases added this switch and recommend it on).
                    exclude_input_in_output=True,
                )
    models = sorted(p.parent.name for p in final.glob("*/config.pbtxt"))
    log.info("model repository %s (%s): %s", final, "reused" if reused else "rendered", ", ".join(models))
    return ModelRepoRecord(str(final), models, True, reused)
