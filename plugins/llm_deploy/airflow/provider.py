"""This project as an Airflow provider, for one thing: the Hugging Face connection type.

Airflow 3's connection form is built from provider metadata, not from hook classes (a hook's
get_ui_field_behaviour is deprecated since 3.2 and the UI no longer reads it), and providers
are found through the ``apache_airflow_provider`` entry point that pyproject.toml declares. Any
distribution may declare one; only names starting with ``apache-airflow`` must keep their
classes under ``airflow.providers``. Plain data on purpose: every Airflow process reads this,
and the hook is imported only when a connection of its type is used.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "llm-deploy",  # must equal the distribution's name (pyproject.toml)
        "name": "LLM deploy",
        "description": "Builds, verifies, serves and benchmarks LLMs with TensorRT-LLM and Triton.",
        "connection-types": [
            {
                "connection-type": "huggingface",
                "hook-class-name": "llm_deploy.airflow.hf_hook.HuggingFaceTokenHook",
                "hook-name": "Hugging Face",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "login", "port"],
                    "relabeling": {"password": "Hugging Face token (read access)"},
                },
            }
        ],
    }
