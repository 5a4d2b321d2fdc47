"""The Hugging Face connection type reaches Airflow through pyproject.toml's provider entry point.

The venv's own install of this project may predate the entry point (scripts/bootstrap.sh
reinstalls when pyproject.toml changes), so the test installs what ``pip install -e .`` writes,
a dist-info with pyproject's entry points, ahead of it on sys.path, and asks fresh managers.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow._shared import module_loading
from airflow.providers_manager import ProvidersManager
from airflow.sdk._shared import module_loading as sdk_module_loading
from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

from llm_deploy.airflow.hf_hook import HuggingFaceTokenHook
from llm_deploy.airflow.provider import get_provider_info

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
HOOK = f"{HuggingFaceTokenHook.__module__}.{HuggingFaceTokenHook.__qualname__}"


def clear_entry_point_caches() -> None:
    module_loading._get_grouped_entry_points.cache_clear()
    sdk_module_loading._get_grouped_entry_points.cache_clear()


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    dist_info = tmp_path / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project["entry-points"].items()
    )
    (dist_info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))
    for manager in (ProvidersManager, ProvidersManagerTaskRuntime):
        monkeypatch.setattr(manager, "_instance", None)
        monkeypatch.setattr(manager, "_initialized", False)
    clear_entry_point_caches()
    yield
    clear_entry_point_caches()  # monkeypatch puts the old managers back; the cache must not outlive tmp_path


def test_the_provider_info_names_this_distribution_and_the_hook() -> None:
    info = get_provider_info()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert info["package-name"] == project["name"]
    (conn,) = info["connection-types"]
    assert (conn["connection-type"], conn["hook-class-name"], conn["hook-name"]) == (
        HuggingFaceTokenHook.conn_type, HOOK, HuggingFaceTokenHook.hook_name)


@pytest.mark.usefixtures("installed")
def test_airflow_lists_the_connection_type_with_its_form() -> None:
    manager = ProvidersManager()

    assert manager.providers[get_provider_info()["package-name"]].data == {**get_provider_info(), "documentation-url": None}
    assert manager.field_behaviours["huggingface"] == {
        "hidden_fields": ["host", "schema", "login", "port"],
        "relabeling": {"password": "Hugging Face token (read access)"},
        "placeholders": {},
    }
    hook = ProvidersManagerTaskRuntime().hooks["huggingface"]
    assert (hook.hook_class_name, hook.connection_id_attribute_name, hook.hook_name) == (HOOK, "hf_conn_id", "Hugging Face")


@pytest.mark.usefixtures("installed")
def test_the_ui_shows_only_the_token_field() -> None:
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "huggingface"]

    assert (meta.hook_class_name, meta.hook_name) == (HOOK, "Hugging Face")
    fields = meta.standard_fields
    assert all(field.hidden for field in (fields.host, fields.port, fields.login, fields.url_schema))
    assert not fields.password.hidden and fields.password.title == "Hugging Face token (read access)"
