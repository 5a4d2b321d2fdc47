"""Upstream's llmapi model repository, copied from a backend clone and set from the spec.

all_models/llmapi holds one Python-backend model, tensorrt_llm, whose model.py reads
``1/model.yaml``: the LLM API's arguments plus a ``triton_config`` block. Its config.pbtxt has no
``${placeholder}``s; model.yaml is plain YAML. So where the engine flow fills placeholders, this
flow writes model.yaml's keys (``llm_args``) over the template's, keeping any key we do not set.

One thing the template leaves out: launch_triton_server.py always passes
``--disable-auto-complete-config``, so Triton never calls model.py's auto_complete_config, which
is what would have applied model.yaml's ``triton_config.decoupled``. Without the transaction
policy in config.pbtxt itself Triton treats the model as non-decoupled and rejects the streamed
responses (upstream's own llmapi tests add it for this reason), so it is written there too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from llm_deploy.backends.trtllm.llm_args import llm_args, triton_config
from llm_deploy.backends.trtllm.model_repo import fill_text
from llm_deploy.backends.trtllm.releases import Release
from llm_deploy.model_config import CONFIG, ModelRepoError, parse_model_config
from llm_deploy.spec import DeploySpec

MODEL = "tensorrt_llm"
MODEL_YAML = Path("1") / "model.yaml"
_POLICY = re.compile(r"^model_transaction_policy\s*\{[^}]*\}", re.MULTILINE)
_HEADER = ("# Written by llm-deploy from upstream's template: every key but triton_config is an\n"
           "# argument of tensorrt_llm.LLM(); see the deployment's params for where each came from.\n")


def llmapi_template_dir(backend_dir: str | Path, release: Release) -> Path:
    """The release's all_models/llmapi in a backend clone."""
    if not release.llmapi_templates:
        raise ModelRepoError(f"trtllm release {release.name} has no llmapi model repository")
    return Path(backend_dir) / release.llmapi_templates


def render_llmapi_repository(spec: DeploySpec, *, source: str | Path, out_dir: str | Path,
                             checkpoint_dir: str) -> Path:
    """cp -R <clone>/.../all_models/llmapi <out_dir>, then model.yaml and the transaction policy
    from the spec; returns the model's config.pbtxt, parsed as Triton's ModelConfig."""
    source, out_dir = Path(source), Path(out_dir)
    model_yaml = source / MODEL / MODEL_YAML
    if not (source / MODEL / CONFIG).is_file() or not model_yaml.is_file():
        raise ModelRepoError(f"{source} is not upstream's llmapi repository (no {MODEL}/{CONFIG} and {MODEL}/{MODEL_YAML})")
    shutil.copytree(source, out_dir, dirs_exist_ok=True)
    write_model_yaml(out_dir / MODEL / MODEL_YAML, spec, checkpoint_dir)
    config_path = out_dir / MODEL / CONFIG
    config_path.write_text(with_transaction_policy(
        fill_text(config_path.read_text(), {}, where=str(config_path)), decoupled=spec.decoupled_mode))
    config = parse_model_config(config_path)
    if config.backend != "python" or config.model_transaction_policy.decoupled != spec.decoupled_mode:
        raise ModelRepoError(f"{config_path}: backend {config.backend!r}, decoupled "
                             f"{config.model_transaction_policy.decoupled}: not the llmapi model the spec asks for")
    return config_path


def write_model_yaml(path: Path, spec: DeploySpec, checkpoint_dir: str) -> dict:
    try:
        template = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ModelRepoError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(template, dict) or "triton_config" not in template:
        raise ModelRepoError(f"{path} has no triton_config: not upstream's llmapi model.yaml")
    values = {**template, **llm_args(spec, checkpoint_dir),
              "triton_config": {**(template.get("triton_config") or {}), **triton_config(spec)}}
    path.write_text(_HEADER + yaml.safe_dump(values, sort_keys=False))
    return values


def with_transaction_policy(text: str, *, decoupled: bool) -> str:
    policy = f"model_transaction_policy {{\n  decoupled: {'true' if decoupled else 'false'}\n}}"
    if _POLICY.search(text):
        return _POLICY.sub(policy, text, count=1)
    return text.rstrip("\n") + "\n\n" + policy + "\n"
