"""What the report view reads from the engines volume, and what it refuses to read."""

from __future__ import annotations

import os

import pytest

from llm_deploy.ui import catalog
from tests.ui.conftest import ENGINE_KEY, read_json


def test_reports_are_listed_newest_first_with_their_headline_and_verdict(engines_volume):
    reports = catalog.reports(engines_volume.root)

    assert [r.key for r in reports] == [engines_volume.second, engines_volume.first]
    newest, oldest = reports
    assert newest.output_token_throughput_per_s == 60.0 and newest.concurrency == 4
    assert newest.regressions >= 1, "half the throughput of the run before: a regression"
    assert oldest.regressions is None, "the first run of its load has nothing to compare with"
    assert newest.engine_key == ENGINE_KEY
    assert newest.airflow == {"dag_id": "deploy_llm", "task_id": "benchmark", "run_id": newest.run_id}


def test_a_report_page_has_its_plots_the_previous_run_and_the_log_tail(engines_volume):
    page = catalog.report(engines_volume.root, engines_volume.second)

    assert [p.rsplit("/", 1)[1] for p in page.plots] == ["benchmark_throughput.png", "benchmark_ttft.png",
                                                          "benchmark_itl.png"]
    assert all((engines_volume.root / p).is_file() for p in page.plots)
    assert page.previous_key == engines_volume.first
    assert page.log_tail.splitlines()[-1] == "I1206 line 199" and len(page.log_tail.splitlines()) == catalog.LOG_TAIL_LINES
    assert page.log_path == f"runs/{engines_volume.second}/tritonserver.log"


def test_an_engine_shows_its_build_its_verification_its_server_and_its_runs(engines_volume):
    (engine,) = catalog.engines(engines_volume.root)

    assert engine.key == ENGINE_KEY and engine.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (engine.runtime, engine.gpu, engine.dtype, engine.max_batch_size) == ("torch 2.13.0+cpu", "cpu", "float32", 8)
    assert engine.verified_unix is not None
    assert engine.held_by == ["manual__2026-12-06T12:00:00+00:00"], "this test process holds the lease"
    assert [r.key for r in engine.served_in] == [engines_volume.second, engines_volume.first]
    assert engine.deployed_as == ["smollm2 v1"]
    assert engine.size_bytes >= 4096


def test_reading_the_volume_changes_nothing_on_it(engines_volume, tmp_path):
    lease = tmp_path / "engine"
    lease.mkdir()
    (lease / "lease-gone.json").write_text('{"host": "%s", "pid": 999999999, "run_id": "gone"}' % catalog.engine_cache.hosts.this_host())
    assert catalog.engine_cache.holders(lease) == []
    assert (lease / "lease-gone.json").exists(), "a stale lease is the steps' to remove, not the view's"

    before = sorted((p, p.stat().st_mtime_ns) for p in engines_volume.root.rglob("*"))
    catalog.engines(engines_volume.root), catalog.matrices(engines_volume.root), catalog.deployments(engines_volume.root)
    assert sorted((p, p.stat().st_mtime_ns) for p in engines_volume.root.rglob("*")) == before


def test_a_deployment_shows_its_live_version_and_engine(engines_volume):
    (deployment,) = catalog.deployments(engines_volume.root)
    assert (deployment.name, deployment.state, deployment.live) == ("smollm2", "serving", 1)
    assert deployment.live_engine_id == engines_volume.engine_dir.name
    assert deployment.url == "http://127.0.0.1:8000"


def test_an_unreadable_deployment_record_is_shown_as_such(tmp_path):
    (tmp_path / "deployments" / "broken").mkdir(parents=True)
    (tmp_path / "deployments" / "broken" / "deployment.json").write_text("{not json")
    (broken,) = catalog.deployments(tmp_path)
    assert broken.state == "unreadable" and "move it aside" in broken.problem


def test_a_matrix_comparison_has_its_rows_their_reports_and_its_plot(engines_volume):
    (comparison,) = catalog.matrices(engines_volume.root)

    assert comparison.key == engines_volume.matrix
    assert [r["report_key"] for r in comparison.rows] == [engines_volume.first, engines_volume.second]
    assert comparison.best["index"] == 0 and comparison.plot.endswith("/comparison.png")
    assert read_json(engines_volume.root / "runs" / comparison.key / "comparison.json")["run_id"] == comparison.run_id


def test_half_written_and_foreign_files_are_skipped(tmp_path):
    (tmp_path / "runs" / "h" / "run").mkdir(parents=True)
    (tmp_path / "runs" / "h" / "run" / "benchmark.json").write_text('{"schema_version": 3')
    (tmp_path / "engines" / "torch" / "m" / ".tmp-abc-123").mkdir(parents=True)
    (tmp_path / "runs" / "matrix-x").mkdir()
    assert catalog.reports(tmp_path) == [] and catalog.engines(tmp_path) == [] and catalog.matrices(tmp_path) == []


@pytest.mark.parametrize("relative", ["../etc/passwd", "runs/../../etc/passwd", "/etc/passwd", "runs/..",
                                      "runs\\..\\..\\x", "", "a\x00b"])
def test_paths_that_leave_the_volume_are_refused(engines_volume, relative):
    with pytest.raises(catalog.OutsideVolume):
        catalog.inside(engines_volume.root, relative)


def test_a_symlink_out_of_the_volume_is_refused(tmp_path):
    (tmp_path / "volume" / "runs").mkdir(parents=True)
    os.symlink("/etc", tmp_path / "volume" / "runs" / "out")
    with pytest.raises(catalog.OutsideVolume, match="leads out of the engines volume"):
        catalog.inside(tmp_path / "volume", "runs/out/hostname")
    assert catalog.inside(tmp_path / "volume", "runs/x.png") == (tmp_path / "volume" / "runs" / "x.png").resolve()


def test_keys_are_single_names(engines_volume):
    with pytest.raises(catalog.OutsideVolume):
        catalog.report(engines_volume.root, "../x")
    with pytest.raises(catalog.OutsideVolume):
        catalog.matrix(engines_volume.root, "..")
    assert catalog.report(engines_volume.root, "h/none") is None
