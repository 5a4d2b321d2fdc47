"""The links from a run's tasks to their pages in the LLM deployments view."""

from __future__ import annotations

from llm_deploy.airflow import report_links


def test_a_benchmark_report_links_to_its_page_by_its_directory_under_runs():
    path = "/opt/airflow/engines/runs/7c3bce9fd6c24785/manual__2026-12-06T12_10_24.693075_00_00/benchmark.json"
    assert report_links.report_page(path) == \
        "/llm-deploy/reports/7c3bce9fd6c24785/manual__2026-12-06T12_10_24.693075_00_00"

def test_links_start_with_the_api_servers_base_url_when_one_is_set(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team-a/")
    assert report_links.view_url("/matrix/m") == "https://airflow.example.com/team-a/llm-deploy/matrix/m"
