"""The plugin that puts the report view into Airflow: found through its entry point, mounted in
the api-server, listed in the UI's navigation. (Its pages, authentication included, are checked
against a real api-server in tests/deployment/test_trigger_forms.py.)"""

from __future__ import annotations

from llm_deploy.airflow import report_view


def test_airflow_finds_the_plugin_through_its_entry_point():
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()
    (app,) = [a for a in apps if a["url_prefix"] == "/llm-deploy"]
    assert app["app"] is report_view.LlmDeploymentsPlugin.fastapi_apps[0]["app"]
    views = [v for p in plugins_manager._get_plugins()[0] for v in p.external_views]
    assert {"name": "LLM deployments", "href": "/llm-deploy/", "url_route": "llm-deployments",
            "destination": "nav", "nav_top_level": True} in views


def test_every_page_requires_airflows_user():
    app = report_view.LlmDeploymentsPlugin.fastapi_apps[0]["app"]
    assert [d.dependency for d in app.router.dependencies] == [report_view.may_read_dag_runs]


def test_the_volume_is_the_api_servers_default_engines_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_DEPLOY_ENGINES_ROOT", str(tmp_path))
    assert report_view.engines_root() == tmp_path
