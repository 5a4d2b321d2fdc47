"""The whole DAG, as README command 1 runs it: real Airflow, real Triton, real SmolLM2.

Runs ``airflow dags test`` twice on the test AIRFLOW_HOME: the first run converts the built-in
checkpoint, builds, verifies, serves and benchmarks; the second finds the verified engine in the
cache, skips download, build and verify, and serves it. The served text (streamed through the ensemble, and from /generate) must equal
transformers' greedy output for the same prompt, token for token.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

MAX_TOKENS = 24


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def dags_test(conf: dict, airflow_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIRFLOW_HOME": str(airflow_home)}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "airflow", "pools", "set", "gpu", "1", "gpu"], env=env,
                   check=True, capture_output=True)
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "deploy_llm", "--conf", json.dumps(conf)],
        env=env, capture_output=True, text=True, timeout=1100,
    )


def xcoms(airflow_home: Path) -> dict[str, dict]:
    """task_id -> return value of the newest run, read back from Airflow's metadata DB."""
    code = (
        "import json; from airflow.models.dagrun import DagRun; from airflow.models.xcom import XComModel;"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    run = max(s.query(DagRun).filter(DagRun.dag_id == 'deploy_llm'), key=lambda r: r.start_date)\n"
        "    rows = s.query(XComModel).filter(XComModel.run_id == run.run_id, XComModel.key == 'return_value')\n"
        "    print(json.dumps({r.task_id: r.value for r in rows}, default=str))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(airflow_home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    values = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: json.loads(v) if isinstance(v, str) else v for k, v in values.items()}


def hf_greedy_text(checkpoint: Path, prompt: str, max_new: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, do_sample=False, max_new_tokens=max_new, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_whole_dag_twice_on_cpu(tmp_path):
    # A volume of its own: the first run must build, whatever earlier tests left on the suite's.
    engines = tmp_path / "engines"
    airflow_home = tmp_path / "airflow"
    http, grpc, metrics = free_ports(3)
    conf = {
        "engines_root": str(engines),
        "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
        "benchmark_requests": 6, "benchmark_concurrency_levels": [3], "benchmark_max_tokens": MAX_TOKENS,
    }

    first = dags_test(conf, airflow_home)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-6000:]
    values = xcoms(airflow_home)
    assert values["find_cached_engine"] == {}  # a miss: nothing verified on the fresh volume
    assert set(values) >= {"download_weights", "build_engine", "verify_engine", "render_model_repo",
                           "start_server", "benchmark", "stop_server"}
    assert "build_wheel" not in values, "build_wheel is skipped on the torch backend, not faked"
    assert values["stop_server"] is True

    report = json.loads(Path(values["benchmark"]["report_path"]).read_text())
    assert report["streaming"]["errors"] == 0 and report["streaming"]["completed"] == 6
    assert report["streaming"]["time_to_first_token_ms"]["p50"] > 0
    expected = hf_greedy_text(Path(values["download_weights"]["checkpoint_dir"]), report["load"]["prompt"], MAX_TOKENS)
    assert report["generate"]["text_output"].strip() == expected.strip()
    assert report["sample_output"].strip() == expected.strip()

    second = dags_test(conf, airflow_home)
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-6000:]
    again = xcoms(airflow_home)
    # The engine is verified and intact: the second run skips download, build and verify and
    # serves the very same engine.
    hit = again["find_cached_engine"]
    assert hit["engine"]["engine_dir"] == values["build_engine"]["engine_dir"]
    assert hit["weights"]["checkpoint_dir"] == values["download_weights"]["checkpoint_dir"]
    assert not {"download_weights", "build_engine", "verify_engine"} & set(again), sorted(again)
    assert f"cache hit, engine {hit['engine']['engine_id']}" in second.stdout + second.stderr
    assert again["render_model_repo"]["model_repo"] == values["render_model_repo"]["model_repo"]
    assert again["benchmark"]["errors"] == 0 and again["stop_server"] is True
