"""The whole DAG, as README command 1 runs it: real Airflow, real Triton, real SmolLM2.

Runs ``airflow dags test`` twice on the test AIRFLOW_HOME: the first run converts the built-in
checkpoint, builds, verifies, serves and benchmarks; the second finds the verified engine in the
cache, skips download, build and verify, and serves it with another batcher queue delay. The served text (streamed through the ensemble, and from /generate) must equal
transformers' greedy output for the same prompt, token for token. The first run's promotion
starts the deployment, which still answers after the run; the second is compared with it and
swapped in; stop_llm_deployment then leaves no process behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from llm_deploy.bench import stream_client

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


def dags_test(conf: dict, airflow_home: Path, dag_id: str = "deploy_llm") -> subprocess.CompletedProcess:
    env = {**os.environ, "AIRFLOW_HOME": str(airflow_home)}
    if not (airflow_home / "airflow.db").exists():  # once per home, as a user sets it up
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "airflow", "pools", "set", "gpu", "1", "gpu"], env=env,
                       check=True, capture_output=True)
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id, "--conf", json.dumps(conf)],
        env=env, capture_output=True, text=True, timeout=1100,
    )


def xcoms(airflow_home: Path, dag_id: str = "deploy_llm") -> dict[str, dict]:
    """task_id -> return value of the newest run, read back from Airflow's metadata DB."""
    code = (
        "import json; from airflow.models.dagrun import DagRun; from airflow.models.xcom import XComModel;"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    run = max(s.query(DagRun).filter(DagRun.dag_id == '" + dag_id + "'), key=lambda r: r.start_date)\n"
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
    http, grpc, metrics, live_http, live_grpc, live_metrics = free_ports(6)
    conf = {
        "engines_root": str(engines),
        "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
        "deployment_http_port": live_http, "deployment_grpc_port": live_grpc, "deployment_metrics_port": live_metrics,
        # Identical engines on 2 shared cores: the gate's refusal is tested on a slowed server.
        "promotion_max_slowdown_pct": 60,
        "benchmark_requests": 6, "benchmark_concurrency_levels": [3], "benchmark_max_tokens": MAX_TOKENS,
        "benchmark_warmup_requests": 1,
    }
    try:
        whole_dag_twice(conf, airflow_home, live_http)
    finally:
        stopped = dags_test({"engines_root": str(engines)}, airflow_home, "stop_llm_deployment")
    assert stopped.returncode == 0, stopped.stdout[-4000:] + stopped.stderr[-4000:]
    assert xcoms(airflow_home, "stop_llm_deployment")["stop_deployment"]["action"] == "stopped"
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if str(engines) in " ".join(p.info["cmdline"] or [])]


def whole_dag_twice(conf: dict, airflow_home: Path, live_http: int) -> None:

    first = dags_test(conf, airflow_home)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-6000:]
    values = xcoms(airflow_home)
    assert values["find_cached_engine"] == {}  # a miss: nothing verified on the fresh volume
    assert set(values) >= {"download_weights", "build_engine", "verify_engine", "render_model_repo",
                           "start_server", "benchmark", "stop_server"}
    assert "build_wheel" not in values, "build_wheel is skipped on the torch backend, not faked"
    assert values["stop_server"] is True
    # The run is over and its candidate server stopped; the deployment it promoted serves on.
    assert values["compare_with_live"]["verdict"] == "first"
    assert values["promote"]["action"] == "started" and values["promote"]["live_version"] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{live_http}/v2/health/ready") as ready:
        assert ready.status == 200

    report = json.loads(Path(values["benchmark"]["report_path"]).read_text())
    assert report["streaming"]["errors"] == 0 and report["streaming"]["completed"] == 6
    assert report["streaming"]["time_to_first_token_ms"]["p50"] > 0
    expected = hf_greedy_text(Path(values["download_weights"]["checkpoint_dir"]), report["load"]["prompt"], MAX_TOKENS)
    assert report["generate"]["text_output"].strip() == expected.strip()
    assert report["sample_output"].strip() == expected.strip()

    # A server setting outside the engine: the same engine from the cache, a new model repository,
    # and so a new candidate for the deployment.
    second = dags_test({**conf, "max_queue_delay_microseconds": 100}, airflow_home)
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-6000:]
    again = xcoms(airflow_home)
    # The engine is verified and intact: the second run skips download, build and verify and
    # serves the very same engine.
    hit = again["find_cached_engine"]
    assert hit["engine"]["engine_dir"] == values["build_engine"]["engine_dir"]
    assert hit["weights"]["checkpoint_dir"] == values["download_weights"]["checkpoint_dir"]
    assert not {"download_weights", "build_engine", "verify_engine"} & set(again), sorted(again)
    assert f"cache hit, engine {hit['engine']['engine_id']}" in second.stdout + second.stderr
    assert again["render_model_repo"]["model_repo"] != values["render_model_repo"]["model_repo"]
    assert again["benchmark"]["errors"] == 0 and again["stop_server"] is True
    # Gated on the live version 1, measured in this run, and swapped in on the running server.
    assert again["compare_with_live"]["verdict"] == "promote", again["compare_with_live"]["reason"]
    assert again["compare_with_live"]["live_version"] == 1
    assert (again["promote"]["action"], again["promote"]["live_version"]) == ("promoted", 2)
    answer = stream_client.generate(f"http://127.0.0.1:{live_http}", report["load"]["prompt"], MAX_TOKENS)
    assert answer.strip() == expected.strip()
