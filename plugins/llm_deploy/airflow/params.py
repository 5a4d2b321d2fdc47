"""Airflow Params generated from DeploySpec, so the trigger form and the steps cannot drift apart.

Each field becomes a Param with its default, description and JSON-schema bounds (enum, minimum,
maximum, pattern), which Airflow validates when a run is triggered and renders as a form,
grouped into sections. Cross-field rules (ports distinct, paths inside the volume) are checked
by DeploySpec itself at the start of every task.

The form marks a param required unless its JSON-schema type admits null, and a required field
that is empty blocks the Trigger button. So a field whose empty value means "chosen at run
time" (DeploySpec.optional_fields) becomes ``type: [<type>, "null"]`` with a null default: the
form shows it as optional, sends null when it is left empty, and DeploySpec reads null as unset.
"""

from __future__ import annotations

from typing import Any

from llm_deploy.backends.trtllm.releases import RELEASE_NAME
from llm_deploy.spec import SUPPORTED_TRTLLM_RELEASES, DeploySpec

SECTIONS = {
    "Model": ("model_source", "model_id", "model_revision", "model_local_dir", "hf_conn_id",
              "hf_allow_patterns"),
    "Engine": ("backend", "trtllm_release", "triton_flow", "dtype", "world_size", "max_batch_size",
               "max_input_len", "max_output_len", "engines_root", "keep_engines"),
    "Runner": ("runner", "docker_image", "gpu_device_ids", "backend_repo_dir"),
    "Server": ("server_host", "triton_admin_conn_id", "http_port", "grpc_port", "metrics_port", "server_start_timeout_s",
               "batch_scheduler_policy", "max_queue_delay_microseconds", "decoupled_mode",
               "exclude_input_in_output", "kv_cache_free_gpu_mem_fraction", "max_tokens_in_paged_kv_cache",
               "enable_kv_cache_reuse", "enable_chunked_context"),
    "Deployment": ("promote", "deployment_name", "deployment_http_port", "deployment_grpc_port",
                   "deployment_metrics_port", "promotion_max_slowdown_pct"),
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
    optional = DeploySpec.optional_fields()
    schemas = {}
    for name, prop in properties.items():
        field = DeploySpec.model_fields[name]
        schema = {key: prop[key] for key in _SCHEMA_KEYS if key in prop}
        if name == "trtllm_release":
            # The table's releases as proposals, not an enum: a release the watch derived onto the
            # volume (release_probe) arrives in the trigger's conf, and Airflow validates conf
            # against this schema before any task runs. DeploySpec refuses a name with no row.
            schema["examples"] = list(SUPPORTED_TRTLLM_RELEASES)
            schema["pattern"] = RELEASE_NAME.pattern
        if schema.get("type") == "array" and "enum" in schema.get("items", {}):
            # The form renders an array with top-level examples as a multi-select of them.
            schema["examples"] = list(schema["items"]["enum"])
        if name in optional:
            schema["type"] = [schema["type"], "null"]
            schema["default"] = None
        else:
            schema["default"] = field.get_default(call_default_factory=True)
        # Labelled with the param's own name, the one --conf, the REST API and the docs use,
        # unless the field sets a title of its own.
        if field.title:
            schema["title"] = field.title
        schema["description"] = prop["description"]
        schema["section"] = section_of[name]
        schemas[name] = schema
    return schemas


def required_in_form(schema: dict[str, Any]) -> bool:
    """The Airflow UI's rule: a typed param is required unless its type admits null.

    A required field whose value is empty is flagged in the form and keeps Trigger disabled.
    """
    kind = schema.get("type")
    return bool(kind) and not (isinstance(kind, list) and "null" in kind)


def deploy_params() -> dict[str, Any]:
    from airflow.sdk import Param

    return {name: Param(**schema) for name, schema in param_schemas().items()}
