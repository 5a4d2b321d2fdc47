"""The report view's pages, over HTTP against a volume the steps' writers filled."""

from __future__ import annotations

import re

import pytest
from fastapi import Depends, HTTPException
from fastapi.testclient import TestClient

from llm_deploy.ui.app import create_app

HTML = {"accept": "text/html"}


@pytest.fixture(scope="module")
def client(engines_volume):
    return TestClient(create_app(lambda: engines_volume.root))


def test_the_overview_lists_deployments_engines_reports_and_comparisons(client, engines_volume):
    page = client.get("/").text

    assert "smollm2" in page and "serving" in page
    assert engines_volume.engine_dir.name in page and "torch 2.13.0+cpu" in page
    assert f'href="/reports/{engines_volume.second}"' in page and f'href="/reports/{engines_volume.first}"' in page
    assert f'href="/matrix/{engines_volume.matrix}"' in page
    assert "regressed" in page and "first of its load" in page


def test_a_run_id_filters_the_reports_to_that_run(client, engines_volume):
    page = client.get("/", params={"run_id": "manual__2026-12-06T11:00:00+00:00"}).text
    assert f'href="/reports/{engines_volume.first}"' in page
    assert f'href="/reports/{engines_volume.second}"' not in page.split('id="reports"')[1].split('id="matrices"')[0]


def test_a_report_page_has_every_level_its_plots_baseline_verdict_log_and_airflow_run(client, engines_volume):
    page = client.get(f"/reports/{engines_volume.second}").text

    assert re.findall(r'<tr data-concurrency="(\d+)">', page) == ["4"]
    plots = re.findall(r'<img src="([^"]+)"', page)
    assert len(plots) == 3
    for src in plots:
        image = client.get(src)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG")
    assert "static_batch_8" in page and "0.60x" in page  # served 60 tok/s against HF's 100
    assert f'href="/reports/{engines_volume.first}">the previous run</a>' in page
    assert "I1206 line 199" in page
    assert 'href="/dags/deploy_llm/runs/manual__2026-12-06T12%3A00%3A00%2B00%3A00"' in page


def test_a_matrix_page_has_its_table_and_plot(client, engines_volume):
    page = client.get(f"/matrix/{engines_volume.matrix}").text
    assert len(re.findall(r"<tr(?: class=\"best\")?>\s*<td class=\"n\">\d+</td>", page)) == 2
    assert f'href="/reports/{engines_volume.first}">report</a>' in page
    (plot,) = re.findall(r'<img src="([^"]+)"', page)
    assert client.get(plot).headers["content-type"] == "image/png"


@pytest.mark.parametrize("path", ["/files/..%2F..%2Fetc%2Fhosts.json", "/files/%2e%2e/%2e%2e/etc/hosts.json",
                                  "/files/runs/%2E%2E/%2E%2E/%2E%2E/etc/hosts.json", "/reports/%2e%2e/x",
                                  "/matrix/%2e%2e"])
def test_traversal_plain_or_encoded_is_refused(client, path):
    response = client.get(path)
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("refused: ")


def test_a_file_outside_the_volume_through_a_symlink_is_refused(client, engines_volume):
    link = engines_volume.root / "runs" / "escape"
    link.symlink_to("/etc")
    try:
        response = client.get("/files/runs/escape/hosts.json")
        assert response.status_code == 400 and "leads out of the engines volume" in response.json()["detail"]
    finally:
        link.unlink()


def test_weights_and_other_kinds_are_not_served(client, engines_volume):
    response = client.get(f"/files/engines/{'/'.join(engines_volume.engine_dir.parts[-3:])}/model.safetensors")
    assert response.status_code == 404 and "plots, reports and logs only" in response.json()["detail"]


def test_a_missing_report_says_so_to_a_person(client):
    response = client.get("/reports/h/none", headers=HTML)
    assert response.status_code == 404 and "no benchmark report runs/h/none" in response.text
    assert "<html" in response.text


def test_the_dependencies_given_guard_every_page(engines_volume):
    def nobody():
        raise HTTPException(401, "Not authenticated")

    guarded = TestClient(create_app(lambda: engines_volume.root, dependencies=[Depends(nobody)]))
    for path in ("/", f"/reports/{engines_volume.second}", f"/matrix/{engines_volume.matrix}",
                 f"/files/runs/{engines_volume.second}/benchmark.json"):
        assert guarded.get(path).status_code == 401
    assert "Sign in to Airflow" in guarded.get("/", headers=HTML).text
