"""An engines volume as the steps leave it, written by the steps' own writers: an engine verified
and leased by a running server, two benchmark runs of the same load (the second compared with
the first), a deployment serving the engine, and a config-matrix comparison."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_deploy import engine_cache, matrix, volume
from llm_deploy.bench import report
from llm_deploy.deployment import record as deployment_record
from tests.test_matrix import synthetic_report

ENGINE_KEY = "torch/HuggingFaceTB--SmolLM2-135M-Instruct/0123456789abcdef"
SPEC_HASH = "7c3bce9fd6c24785"


@dataclass
class Volume:
    root: Path
    engine_dir: Path
    first: str  # keys of the two reports: <spec hash>/<run directory>
    second: str
    matrix: str  # the comparison's directory under runs/


def write_benchmark(root: Path, run_id: str, *, tok_s: float, created: float, engine_dir: Path,
                    airflow: dict | None) -> str:
    benchmark = synthetic_report(tok_s, ttft_ms=40.0)
    benchmark.update(run_id=run_id, created_unix=created, engine_hash=SPEC_HASH,
                     spec={"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "backend": "torch", "dtype": "float32",
                           "max_batch_size": 8, "world_size": 1},
                     host={"machine": "x86_64", "python": "3.11.7", "cpus": 2},
                     baseline={"runs": {"static_batch_8": {"output_token_throughput_per_s": 100.0}}},
                     generate={"endpoint": "/v2/models/ensemble/generate", "text_output": "Un, deux, trois",
                               "latency_s": 0.5, "error": None})
    out_dir = root / "runs" / SPEC_HASH / run_id.replace(":", "_").replace("+", "_")
    out_dir.mkdir(parents=True)
    (out_dir / "tritonserver.log").write_text("".join(f"I1206 line {i}\n" for i in range(200)))
    benchmark["served"] = {"model_repo": str(root / "model_repos" / "x"), "engine_dir": str(engine_dir),
                           "log_path": str(out_dir / "tritonserver.log")}
    benchmark["airflow"] = airflow
    benchmark["regression"] = report.against_previous_run(benchmark, out_dir.parent, current=out_dir / report.REPORT_NAME,
                                                          threshold_pct=10.0)
    report.add_artifacts(benchmark, out_dir)
    report.write_report(benchmark, out_dir)
    return f"{SPEC_HASH}/{out_dir.name}"


@pytest.fixture(scope="session")
def engines_volume(tmp_path_factory) -> Volume:
    root = tmp_path_factory.mktemp("engines")
    engine_dir = root / "engines" / ENGINE_KEY
    config = {"backend": "torch", "dtype": "float32", "max_batch_size": 8, "world_size": 1, "spec_hash": SPEC_HASH,
              "spec": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
              "build_target": {"runtime": "torch 2.13.0+cpu", "gpu": "cpu", "image": "", "compute_capability": ""}}
    with volume.publish_dir(engine_dir, {"engine_config": config}) as scratch:
        (scratch / "model.safetensors").write_bytes(b"\0" * 4096)
    engine_cache.mark_verified(engine_dir, {"prompt": "p", "output_text": "o"})
    engine_cache.take_lease(engine_dir, run_id="manual__2026-12-06T12:00:00+00:00", pid=os.getpid())

    first = write_benchmark(root, "manual__2026-12-06T11:00:00+00:00", tok_s=120.0, created=1796550000.0,
                            engine_dir=engine_dir, airflow=None)
    second = write_benchmark(root, "manual__2026-12-06T12:00:00+00:00", tok_s=60.0, created=1796553600.0,
                             engine_dir=engine_dir, airflow={"dag_id": "deploy_llm", "task_id": "benchmark",
                                                             "run_id": "manual__2026-12-06T12:00:00+00:00"})
    deployment = deployment_record.Deployment(
        name="smollm2", backend="torch", host="127.0.0.1", http_port=8000, grpc_port=8001, metrics_port=8002,
        live=1, live_since_unix=1796553700.0, live_run_id="manual__2026-12-06T12:00:00+00:00", state="serving",
        versions=[deployment_record.Version(
            version=1, models={}, engine_dir=str(engine_dir), engine_id=engine_dir.name, source_repo="",
            run_id="manual__2026-12-06T12:00:00+00:00", promoted_unix=1796553700.0, max_batch_size=8)])
    deployment_record.write(root / "deployments" / "smollm2", deployment)

    results = []
    for index, (tok_s, key) in enumerate(((120.0, first), (310.5, second))):
        results.append({"index": index, "overrides": {"max_batch_size": 4 * (index + 1)}, "engine_id": f"engine{index}",
                        "report_path": str(root / "runs" / key / report.REPORT_NAME)})
    summary = matrix.comparison_report(results, root, "asset_triggered__2026-12-06T13:00:00+00:00")
    return Volume(root=root, engine_dir=engine_dir, first=first, second=second,
                  matrix=Path(summary["table_path"]).parent.name)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
