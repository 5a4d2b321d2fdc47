"""The Hugging Face token reaches the download and nothing else.

The whole DAG runs against a gated repo on the local fake Hub, with a canary token in the
Airflow connection (as an environment connection, the way docker-compose passes it). Afterwards
every file the run produced — engines volume (checkpoint, engine, model repository, server log,
report), Airflow's home (task logs, the metadata DB with XComs and rendered fields) — and the
command's own output are scanned for the token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.hf_hub import FakeHub

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CANARY = "hf_canaryTokenThatMustNeverLeakAnywhere42"


def files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            hits.append(str(path))
    return hits


def test_the_token_never_leaks(tmp_path, tiny_llama_checkpoint, free_ports):
    hub = FakeHub(token=CANARY).start()
    try:
        files = {p.name: p.read_bytes() for p in tiny_llama_checkpoint.iterdir() if p.is_file()}
        hub.add_repo("acme/tiny-llama", files, gated=True)
        engines, home = tmp_path / "engines", tmp_path / "airflow"
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONN_HUGGINGFACE_DEFAULT": json.dumps({"conn_type": "huggingface", "password": CANARY}),
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        }
        env.pop("HF_TOKEN", None)
        conf = {
            "model_source": "huggingface", "model_id": "acme/tiny-llama", "engines_root": str(engines),
            "max_input_len": 64, "max_output_len": 32, "benchmark_max_tokens": 8,
            "benchmark_requests": 2, "benchmark_concurrency_levels": [2], "benchmark_hf_baseline": False,
            "promote": False,  # a deployment's server would outlive the test
            **free_ports,
        }
        for args in (["db", "migrate"], ["pools", "set", "gpu", "1", "gpu"]):
            subprocess.run([sys.executable, "-m", "airflow", *args], env=env, check=True, capture_output=True)
        run = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "deploy_llm", "--conf", json.dumps(conf)],
                             env=env, capture_output=True, timeout=800)
    finally:
        hub.stop()

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:].decode(errors="replace")
    # The token was really needed and used: the gated repo refused requests without it.
    assert hub.count(contains="/api/models/acme/tiny-llama") >= 1
    assert CANARY.encode() not in output
    assert files_containing(engines, CANARY.encode()) == []
    assert files_containing(home, CANARY.encode()) == []
