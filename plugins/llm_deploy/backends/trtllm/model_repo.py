"""Upstream's inflight_batcher_llm model repository, copied from a backend clone and filled.

Upstream fills ``${placeholder}``s with tools/fill_template.py (string.Template.safe_substitute),
which leaves any name it was not given in the file. Here every placeholder of every
config.pbtxt must get a value from the spec, or the fill fails naming the placeholder and the
file; then each config is parsed as Triton's ModelConfig before anybody serves it.

Upstream's own docs leave the optional tuning knobs as literal ``${name}``; its backend parses
each with stoi/stof/bool inside try/catch and falls back to the runtime default on failure,
and compares path-like ones against both "" and "${name}". An empty string is that same
"not set" answer, given explicitly: ``NOT_SET`` below.
"""

from __future__ import annotations

import shutil
import string
from collections.abc import Mapping
from pathlib import Path

from llm_deploy.backends.trtllm.flag_extractor import PLACEHOLDER
from llm_deploy.backends.trtllm.releases import Release
from llm_deploy.model_config import CONFIG, ModelRepoError, parse_model_config
from llm_deploy.spec import DeploySpec

BATCHING_STRATEGY = "inflight_fused_batching"
NOT_SET = ""


class _PbtxtTemplate(string.Template):
    # Only the ${name} form is a placeholder, as in upstream's templates; any other "$" (there is
    # none today) is left as it stands rather than read as "$$" escape or "$word" placeholder.
    pattern = r"""
    \$(?:
      (?P<escaped>(?!)) |
      {(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)} |
      (?P<named>(?!)) |
      (?P<invalid>(?!))
    )
    """


_PLACEHOLDER = PLACEHOLDER  # the release probe reads new templates' placeholders with the same pattern


def fill_values(
    spec: DeploySpec,
    *,
    engine_dir: str,
    tokenizer_dir: str,
    tokenizer_type: str = "auto",
) -> dict[str, str]:
    """A value for every placeholder of every release's inflight_batcher_llm configs.

    Keys are upstream's fill_template.py names. What the spec decides comes from the spec; what
    the tutorial leaves to the runtime is NOT_SET.
    """
    values = {
        # --- what the tutorial fills ---------------------------------------------------------------
        "tokenizer_dir": tokenizer_dir,
        "tokenizer_type": tokenizer_type,  # 0.5.0 pre/postprocessing
        "decoupled_mode": _bool(spec.decoupled_mode),
        "engine_dir": engine_dir,
        "batching_strategy": BATCHING_STRATEGY,  # becomes gpt_model_type (0.19.0)
        # --- batch and queue settings --------------------------------------------------------------
        "triton_backend": "tensorrtllm",
        "triton_max_batch_size": str(spec.max_batch_size),
        "max_num_sequences": str(spec.max_batch_size),  # 0.5.0: requests the batcher keeps in flight
        "batch_scheduler_policy": spec.batch_scheduler_policy,
        "max_queue_delay_microseconds": str(spec.max_queue_delay_microseconds),
        "max_queue_size": "0",  # 0 = unbounded queue, upstream's README value
        "max_beam_width": "1",
        "exclude_input_in_output": _bool(spec.exclude_input_in_output),
        # --- the KV cache: the runtime sizes it unless the spec says otherwise -------------------------
        "kv_cache_free_gpu_mem_fraction": str(spec.served_kv_cache_fraction or NOT_SET),
        "max_tokens_in_paged_kv_cache": str(spec.max_tokens_in_paged_kv_cache or NOT_SET),
        "enable_kv_cache_reuse": _bool(spec.enable_kv_cache_reuse),
        "enable_chunked_context": _bool(spec.enable_chunked_context),
        "preprocessing_instance_count": "1",
        "postprocessing_instance_count": "1",
        "bls_instance_count": "1",
        "accumulate_tokens": "false",
        "tensorrt_llm_model_name": "tensorrt_llm",
        "logits_datatype": "TYPE_FP32",
        "encoder_input_features_data_type": "TYPE_FP16",  # upstream's README value; unused by decoder-only models
        # From 0.20 (was TYPE_FP16 in the template): prompt tuning's table, unused without one.
        "prompt_embedding_table_data_type": "TYPE_FP16",
    }
    # Left to the runtime's defaults, as the tutorial leaves them.
    for name in (
        "enable_trt_overlap",
        "enable_context_fmha_fp32_acc",
        "add_special_tokens", "skip_special_tokens", "max_num_images", "multimodal_model_path", "hf_model_path",
        "multimodal_encoders_name", "tensorrt_llm_draft_model_name", "encoder_engine_dir",
        "cancellation_check_period_ms", "cross_kv_cache_fraction", "cuda_graph_cache_size",
        "cuda_graph_mode", "decoding_mode", "eagle_choices", "gpu_device_ids", "gpu_weights_percent", "guided_decoding_backend",
        "iter_stats_max_iterations", "kv_cache_host_memory_bytes", "kv_cache_onboard_blocks",
        "lookahead_ngram_size", "lookahead_verification_set_size", "lookahead_window_size",
        "lora_cache_gpu_memory_fraction", "lora_cache_host_memory_bytes", "lora_cache_max_adapter_size",
        "lora_cache_optimal_adapter_size", "lora_prefetch_dir", "max_attention_window_size",
        "medusa_choices", "multi_block_mode", "normalize_log_probs", "num_nodes", "participant_ids",
        "request_stats_max_iterations", "sink_token_length", "speculative_decoding_fast_logits",
        "stats_check_period_ms", "xgrammar_tokenizer_info_path",
    ):
        values[name] = NOT_SET
    return values


def template_dir(backend_dir: str | Path, release: Release) -> Path:
    """The release's inflight_batcher_llm templates in a backend clone."""
    return Path(backend_dir) / release.templates


def copy_template_repo(source: str | Path, out_dir: str | Path) -> Path:
    """cp -R <clone>/all_models/inflight_batcher_llm <out_dir> (models, version dirs, model.py)."""
    source, out_dir = Path(source), Path(out_dir)
    if not (source / "tensorrt_llm" / CONFIG).is_file():
        raise ModelRepoError(f"{source} is not upstream's inflight_batcher_llm (no tensorrt_llm/{CONFIG})")
    shutil.copytree(source, out_dir, dirs_exist_ok=True)
    return out_dir


def fill_text(text: str, values: Mapping[str, str], *, where: str) -> str:
    """Substitute every ${name}; any name without a value fails here, named with the file."""
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise ModelRepoError(f"{where}: no value for placeholder(s) {', '.join('${' + n + '}' for n in missing)}")
    return _PbtxtTemplate(text).substitute({name: _pb_escape(value, name) for name, value in values.items()})


def fill_repository(repo_dir: str | Path, values: Mapping[str, str]) -> list[Path]:
    """Fill every config.pbtxt under repo_dir in place; return them, each parsed as ModelConfig."""
    configs = sorted(Path(repo_dir).glob(f"*/{CONFIG}"))
    if not configs:
        raise ModelRepoError(f"{repo_dir} holds no */{CONFIG}")
    for path in configs:
        path.write_text(fill_text(path.read_text(), values, where=str(path)))
    for path in configs:
        parse_model_config(path)
    _require_inflight_batching(Path(repo_dir) / "tensorrt_llm" / CONFIG)
    return configs


def render_upstream_repository(
    spec: DeploySpec,
    *,
    source: str | Path,
    out_dir: str | Path,
    engine_dir: str,
    tokenizer_dir: str,
    tokenizer_type: str = "auto",
) -> list[Path]:
    """Copy upstream's repository (``template_dir(clone)``) to out_dir and fill it from the spec."""
    copy_template_repo(source, out_dir)
    values = fill_values(spec, engine_dir=engine_dir, tokenizer_dir=tokenizer_dir, tokenizer_type=tokenizer_type)
    return fill_repository(out_dir, values)


def _require_inflight_batching(path: Path) -> None:
    config = parse_model_config(path)
    model_type = config.parameters["gpt_model_type"].string_value if "gpt_model_type" in config.parameters else None
    if model_type != BATCHING_STRATEGY:
        raise ModelRepoError(f"{path}: gpt_model_type is {model_type!r}, the tutorial needs {BATCHING_STRATEGY!r}")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _pb_escape(value: str, name: str) -> str:
    # Values land inside "..." strings or as bare numbers/enums; neither may carry a line break,
    # and in a string a quote or backslash must be escaped (paths may hold either).
    if any(ord(ch) < 32 for ch in value):
        raise ModelRepoError(f"value of ${{{name}}} must not contain control characters: {value!r}")
    return value.replace("\\", "\\\\").replace('"', '\\"')
