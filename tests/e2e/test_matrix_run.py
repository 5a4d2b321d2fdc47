"""A config matrix end to end: build_llm_engines under ``airflow dags test``, then the benchmark
DAG's logic on the Asset event it recorded, with real tritonservers serving the tiny Llama.

``dags test`` runs one DAG and does not start the DAGs scheduled on its assets, so the consumer's
part is called here with the event's extra, read back from Airflow's metadata DB, exactly as the
benchmark DAG's tasks call it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_deploy import matrix
from llm_deploy.spec import DeploySpec

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

MATRIX = [{"max_batch_size": 2}, {"max_batch_size": 4, "dtype": "bfloat16"}]


def airflow(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True,
                          **kwargs)


def asset_event_extras(env: dict) -> list[dict]:
    code = (
        "import json; from airflow.models.asset import AssetEvent, AssetModel;"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    rows = s.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)"
        ".filter(AssetModel.uri == 'x-llm-deploy://engines').order_by(AssetEvent.timestamp)\n"
        "    print(json.dumps([r.extra for r in rows]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_configs_are_built_announced_benchmarked_and_compared(tmp_path, tiny_llama_checkpoint, free_ports):
    engines_root = tmp_path / "engines"
    shutil.copytree(tiny_llama_checkpoint, engines_root / "mine" / "tiny")
    conf = {
        "engines_root": str(engines_root), "model_source": "local", "model_local_dir": "mine/tiny",
        "max_input_len": 64, "max_output_len": 32, **free_ports,
        "benchmark_requests": 4, "benchmark_concurrency_levels": [2], "benchmark_max_tokens": 8,
        "benchmark_warmup_requests": 1, "benchmark_hf_baseline": False, "benchmark_duration_s": 0,
        "matrix": MATRIX,
    }
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    airflow(["db", "migrate"], env, check=True)
    airflow(["pools", "set", "gpu", "1", "gpu"], env, check=True)

    run = airflow(["dags", "test", "build_llm_engines", "--conf", json.dumps(conf)], env, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]

    extras = asset_event_extras(env)
    assert len(extras) == 1, "one Asset event per build run, however many configs"
    engines = matrix.engines_from_events(extras)
    assert [e["overrides"] for e in engines] == MATRIX
    assert len({e["engine"]["engine_id"] for e in engines}) == 2
    for entry in engines:
        assert Path(entry["engine"]["engine_dir"]).is_dir()
        assert entry["engine"]["dtype"] == entry["params"]["dtype"]

    # What benchmark_llm_engines does with that event: one engine at a time, then the comparison.
    results = []
    for entry in engines:
        spec = DeploySpec.from_params(entry["params"])
        result = matrix.serve_and_benchmark(spec, entry, "asset_triggered__test")
        assert result["errors"] == 0 and result["requests"] == 4
        results.append(result)
    summary = matrix.comparison_report(results, str(engines_root), "asset_triggered__test")

    table = Path(summary["table_path"]).read_text()
    for entry in engines:
        assert f"`{entry['engine']['engine_id']}`" in table
    assert "max_batch_size=4, dtype=bfloat16" in table or "dtype=bfloat16, max_batch_size=4" in table
    assert Path(summary["plot_path"]).read_bytes().startswith(b"\x89PNG")
    assert summary["configs"] == 2 and summary["errors"] == 0


def test_a_duplicate_entry_fails_the_plan_before_anything_is_built(tmp_path):
    engines_root = tmp_path / "engines"
    conf = {"engines_root": str(engines_root), "matrix": [{"max_batch_size": 4}, {"dtype": "float16"},
                                                          {"max_batch_size": 4, "benchmark_requests": 2}]}
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    airflow(["db", "migrate"], env, check=True)
    airflow(["pools", "set", "gpu", "1", "gpu"], env, check=True)

    run = airflow(["dags", "test", "build_llm_engines", "--conf", json.dumps(conf)], env, timeout=300)
    output = run.stdout + run.stderr
    assert "matrix[0] and matrix[2] describe the same engine" in output, output[-6000:]
    assert asset_event_extras(env) == []
    assert not (engines_root / "models").exists() and not (engines_root / "engines").exists()
