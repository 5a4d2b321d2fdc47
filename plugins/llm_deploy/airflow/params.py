"""Airflow Params generated from DeploySpec, so the trigger form and the steps cannot drift apart.

Each field becomes a Param with its default, description and JSON-schema bounds (enum, minimum,
maximum, pattern), which Airflow validates when a run is triggered and renders as a form,
grouped into sections. Cross-field rules (ports distinct, paths inside the volume) are checked
by DeploySpec itself at the start of every task.
"""

from __future__ import annotations

from typing import Any

from llm_deploy.spec import SUPPORTED_TRTLLM_RELEASES, DeploySpec

SECTIONS = {
    "Model": ("model_source", "model_id", "model_revision", "model_local_dir", "hf_conn_id",
              "hf_allow_patterns"),
    "Engine": ("backend", "trtllm_release", "dtype", "world_size", "max_batch_size",
               "max_input_len", "max_output_len", "engines_root", "keep_engines"),
    "Runner": ("runner", "docker_image", "gpu_device_ids", "backend_repo_dir"),
    "Server": ("server_host", "http_port", "grpc_port", "metrics_port", "server_start_timeout_s",
               "batch_scheduler_policy", "max_queue_delay_microseconds"),
    "Benchmark": ("benchmark_prompt", "benchmark_concurrency_levels", "benchmark_requests",
                  "benchmark_duration_s", "benchmark_warmup_requests", "benchmark_max_tokens",
                  "benchmark_input_len_mean", "benchmark_input_len_spread",
                  "benchmark_output_len_spread", "benchmark_seed", "benchmark_targets",
                  "benchmark_hf_baseline", "benchmark_regression_threshold_pct",
                  "benchmark_fail_on_regression"),
}
_SCHEMA_KEYS = ("type", "enum", "minimum", "maximum", "pattern", "minLength", "maxLength", "items")


def param_schemas() -> dict[str, dict[str, Any]]:
    """Plain JSON-schema dicts per param (what Param receives), testable without Airflow."""
    properties = DeploySpec.model_json_schema()["properties"]
    section_of = {name: section for section, names in SECTIONS.items() for name in names}
    missing = set(properties) - set(section_of)
    if missing:
        raise RuntimeError(f"DeploySpec fields without a form section: {sorted(missing)}")
    schemas = {}
    for name, prop in properties.items():
        schema = {key: prop[key] for key in _SCHEMA_KEYS if key in prop}
        if name == "trtllm_release":
            schema["enum"] = list(SUPPORTED_TRTLLM_RELEASES)
        schema["default"] = DeploySpec.model_fields[name].get_default(call_default_factory=True)
        schema["title"] = prop.get("title", name)
        schema["description"] = prop["description"]
        schema["section"] = section_of[name]
        schemas[name] = schema
    return schemas


def deploy_params() -> dict[str, Any]:
    from airflow.sdk import Param

    return {name: Param(**schema) for name, schema in param_schemas().items()}
