"""Shared by the benchmark scripts: bring up the real deployment the DAG would, without Airflow.

Runs the DAG's steps in order (download_weights → build_engine → render_model_repo →
start_server) for a spec, reusing whatever the engines volume already holds, and stops the
server on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "plugins"))
RESULTS = REPO_ROOT / "benchmarks" / "results"

from llm_deploy.spec import DeploySpec  # noqa: E402


def free_ports() -> dict[str, int]:
    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return dict(zip(("http_port", "grpc_port", "metrics_port"), ports, strict=True))


def bench_spec(**params) -> DeploySpec:
    root = os.environ.get("LLM_DEPLOY_ENGINES_ROOT", str(REPO_ROOT / ".cache" / "test-engines"))
    return DeploySpec(engines_root=root, **free_ports(), **params)


@contextlib.contextmanager
def deployed(spec: DeploySpec, run_id: str) -> Iterator[dict]:
    """The ServerRecord (as XCom carries it) of a running tritonserver for ``spec``."""
    from llm_deploy.steps.build_engine import build_engine
    from llm_deploy.steps.download_weights import download_weights
    from llm_deploy.steps.render_model_repo import render_model_repo
    from llm_deploy.steps.serve import start_server, stop_server

    weights = download_weights(spec, None).to_xcom()
    engine = build_engine(spec, weights).to_xcom()
    repo = render_model_repo(spec, engine, weights).to_xcom()
    server = start_server(spec, repo, run_id).to_xcom()
    try:
        yield server
    finally:
        stop_server(spec, server)


def write_result(name: str, figures: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written: {path}")
    return path
