"""The benchmark step against a real tritonserver serving the tiny Llama: a short sweep over all
four targets, the report on the volume, and the comparison with the previous run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_deploy.backends.torch.model_repo import render_repository
from llm_deploy.bench import report
from llm_deploy.errors import StepError
from llm_deploy.server import tritonserver
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.benchmark import benchmark

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TARGETS = ["grpc_ensemble", "grpc_tensorrt_llm", "http_generate_stream", "http_generate"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-volume")


@pytest.fixture(scope="module")
def ports(free_ports_factory) -> dict[str, int]:
    return free_ports_factory()


def bench_spec(root: Path, ports: dict[str, int], **overrides) -> DeploySpec:
    params = dict(engines_root=str(root), max_batch_size=4, max_input_len=64, max_output_len=32,
                  max_queue_delay_microseconds=100, benchmark_max_tokens=8,
                  benchmark_concurrency_levels=[1, 3], benchmark_requests=4, benchmark_warmup_requests=2,
                  benchmark_input_len_mean=12, benchmark_input_len_spread=3, benchmark_output_len_spread=2,
                  benchmark_targets=TARGETS, **ports)
    return DeploySpec(**{**params, **overrides})


@pytest.fixture(scope="module")
def server(tiny_engine_dir, tiny_llama_checkpoint, root, ports) -> dict:
    repo = root / "inflight_batcher_llm"
    render_repository(bench_spec(root, ports), engine_dir=tiny_engine_dir, tokenizer_dir=tiny_llama_checkpoint,
                      out_dir=repo)
    handle = tritonserver.start(repo, log_path=root / "tritonserver.log", timeout_s=180, **ports)
    try:
        yield {"grpc_url": handle.grpc_url, "http_url": handle.http_url, "log_path": handle.log_path,
               "model_repo": str(repo)}
    finally:
        tritonserver.stop(handle)


@pytest.fixture(scope="module")
def first_run(server, root, ports) -> dict:
    summary = benchmark(bench_spec(root, ports), server, run_id="first").to_xcom()
    return {"xcom": summary, "report": json.loads(Path(summary["report_path"]).read_text())}


def test_every_target_and_level_is_measured_without_errors(first_run):
    first = first_run["report"]
    assert report.schema_errors(first) == []
    assert list(first["sweep"]) == TARGETS
    for target, levels in first["sweep"].items():
        assert [e["concurrency"] for e in levels] == [1, 3], target
        for entry in levels:
            assert entry["errors"] == 0 and entry["completed"] == 4, (target, entry["error_messages"])
            assert entry["time_to_first_token_ms"]["p50"] > 0 and entry["output_token_throughput_per_s"] > 0
            if target != "http_generate":  # streamed: one response per token
                assert entry["inter_token_latency_ms"]["p50"] > 0
                assert entry["inter_chunk_latency_ms"]["p50"] > 0
            else:  # one response per request: nothing to divide, as genai-perf
                assert entry["inter_token_latency_ms"] is None and entry["responses"] == entry["completed"]
    assert first["streaming"] == first["sweep"]["grpc_ensemble"][-1]
    assert first["generate"]["text_output"] and first["sample_output"]
    assert first["regression"] is None  # nothing to compare with yet


def test_report_plots_summary_and_baseline_lie_beside_the_report(first_run):
    first, xcom = first_run["report"], first_run["xcom"]
    run_dir = Path(xcom["report_path"]).parent
    assert Path(xcom["summary_path"]) == run_dir / "benchmark.md"
    assert "## grpc_tensorrt_llm" in Path(xcom["summary_path"]).read_text()
    assert {Path(p).name for p in first["artifacts"]["plots"]} == {
        "benchmark_throughput.png", "benchmark_ttft.png", "benchmark_itl.png"}
    assert set(first["baseline"]["runs"]) == {"batch_1", "static_batch_4"}
    assert len(json.dumps(xcom)) < 1000, "XCom carries headline figures and paths, not the report"


def test_the_report_names_what_was_served_and_which_airflow_task_measured(first_run, server, root, ports,
                                                                          monkeypatch):
    # A repository rendered outside the steps (no manifest naming an engine): no engine to name.
    assert first_run["report"]["served"] == {"model_repo": server["model_repo"], "engine_dir": "",
                                             "log_path": str(server["log_path"])}
    assert first_run["report"]["airflow"] is None, "not run by Airflow"
    task = {"AIRFLOW_CTX_DAG_ID": "deploy_llm", "AIRFLOW_CTX_DAG_RUN_ID": "manual__1", "AIRFLOW_CTX_TASK_ID": "benchmark"}
    for name, value in task.items():
        monkeypatch.setenv(name, value)
    summary = benchmark(bench_spec(root, ports, benchmark_requests=1, benchmark_concurrency_levels=[1],
                                   benchmark_targets=["grpc_ensemble"], benchmark_hf_baseline=False),
                        server, run_id="by-airflow").to_xcom()
    assert json.loads(Path(summary["report_path"]).read_text())["airflow"] == {
        "dag_id": "deploy_llm", "run_id": "manual__1", "task_id": "benchmark"}


def test_second_run_is_compared_and_a_regression_fails_when_asked(first_run, server, root, ports):
    # Pretend the first run was 100x faster: every throughput figure of this run now regressed.
    first_path = Path(first_run["xcom"]["report_path"])
    inflated = json.loads(first_path.read_text())
    for levels in inflated["sweep"].values():
        for entry in levels:
            entry["output_token_throughput_per_s"] *= 100
    # Without its yardsticks the figures are compared as they are: this test is about the step
    # failing on a regression, not about how the machine's speed is divided out (test_report).
    inflated["baseline"] = inflated["machine"] = None
    first_path.write_text(json.dumps(inflated))
    spec = bench_spec(root, ports, benchmark_hf_baseline=False, benchmark_fail_on_regression=True)
    with pytest.raises(StepError, match="regressed beyond 10.0%"):
        benchmark(spec, server, run_id="second")
    second = json.loads((first_path.parent.parent / "second" / "benchmark.json").read_text())
    assert second["regression"]["previous_report"] == str(first_path)
    assert {r["metric"] for r in second["regression"]["regressions"]} >= {"output_token_throughput_per_s"}
