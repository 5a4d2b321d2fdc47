"""A deployment's whole life on the real tritonserver with the twin: first promotion, a swap to
another engine under streaming load, a refused slower candidate, rollback, a killed server that
its supervisor restarts, and a stop that leaves nothing behind.

The tests run in file order on one deployment (each step starts from where the last left it),
as a person would drive it.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from llm_deploy import processes
from llm_deploy.backends.torch import deployment_server
from llm_deploy.backends.torch.inflight import STEP_DELAY_ENV
from llm_deploy.backends.torch.model_repo import render_repository
from llm_deploy.bench import stream_client
from llm_deploy.bench.steady_load import StreamingLoad
from llm_deploy.deployment import comparison, lifecycle, record, server
from llm_deploy.deployment.lifecycle import Settings
from llm_deploy.deployment.repository_api import RepositoryApi, RepositoryApiError
from llm_deploy.server import tritonserver
from llm_deploy.spec import DeploySpec

pytestmark = pytest.mark.e2e

PROMPT = "How do I count to ten in French?"


@pytest.fixture(scope="module")
def world(tiny_engine_dir, tiny_llama_checkpoint, tmp_path_factory, free_ports_factory):
    root = tmp_path_factory.mktemp("deployment")
    ports = free_ports_factory()
    directory = record.deployment_dir(root, "tiny")
    deployed = DeploySpec(engines_root=str(root), deployment_http_port=ports["http_port"],
                          deployment_grpc_port=ports["grpc_port"], deployment_metrics_port=ports["metrics_port"])
    settings = Settings(backend="torch", host="127.0.0.1", http_port=ports["http_port"], grpc_port=ports["grpc_port"],
                        metrics_port=ports["metrics_port"], load_timeout_s=180,
                        launch=deployment_server.launch(deployed, server.repository_dir(directory)))
    yield {"root": root, "settings": settings, "directory": directory, "engine": tiny_engine_dir,
           "tokenizer": tiny_llama_checkpoint}
    deployment = record.read(directory)
    if deployment is not None and deployment.supervisor:  # a failed test must not leave it running
        server.stop(deployment)


def candidate(world, name: str, *, max_batch_size: int) -> Path:
    spec = DeploySpec(engines_root=str(world["root"]), max_batch_size=max_batch_size, max_input_len=64,
                      max_output_len=32, benchmark_max_tokens=16)
    repo = world["root"] / "candidates" / name
    render_repository(spec, engine_dir=world["engine"], tokenizer_dir=world["tokenizer"], out_dir=repo)
    return repo


def generate(deployment) -> str:
    return stream_client.generate(deployment.http_url, PROMPT, 8)


def served_version(deployment) -> list[str]:
    with urllib.request.urlopen(f"{deployment.http_url}/v2/models/{deployment.ensemble}") as response:
        return json.load(response)["versions"]


def test_a_first_promotion_starts_a_server_that_outlives_the_call(world):
    result = lifecycle.promote(world["directory"], world["settings"], candidate(world, "a", max_batch_size=4),
                               run_id="run-1", qualification={})

    deployment = record.read(world["directory"])
    assert (result.action, result.live_version) == ("started", 1)
    assert deployment.state == "serving" and server.running(deployment)
    assert generate(deployment)  # answers /generate after promote() has returned
    assert served_version(deployment) == ["1"]


def test_a_second_promotion_swaps_versions_with_no_failed_request(world):
    before = record.read(world["directory"])
    with StreamingLoad(before.grpc_url, concurrency=2) as load:
        time.sleep(2)  # requests in flight before the swap begins
        result = lifecycle.promote(world["directory"], world["settings"], candidate(world, "b", max_batch_size=2),
                                   run_id="run-2", qualification={})
        time.sleep(2)
    outcome = load.outcome()
    print(f"swap under load: {outcome}")

    deployment = record.read(world["directory"])
    assert (result.action, result.live_version, result.previous_version) == ("promoted", 2, 1)
    assert outcome.failed == 0, outcome.errors
    assert outcome.sent > 4
    assert served_version(deployment) == ["2"]
    assert deployment.live_version().max_batch_size == 2
    assert deployment.server_pid == before.server_pid  # the same server: no restart, no downtime


def test_a_candidate_that_fails_to_load_leaves_the_live_version_serving(world):
    repo = candidate(world, "broken", max_batch_size=2)
    model = repo / "tensorrt_llm" / "1" / "model.py"
    model.write_text(model.read_text() + '\nraise RuntimeError("broken on purpose")\n')

    with pytest.raises(RepositoryApiError, match="refused to load tensorrt_llm_v3: .*broken on purpose"):
        lifecycle.promote(world["directory"], world["settings"], repo, run_id="run-broken", qualification={})

    deployment = record.read(world["directory"])
    assert deployment.live == 2 and [v.version for v in deployment.versions] == [1, 2]
    assert served_version(deployment) == ["2"] and generate(deployment)
    states = RepositoryApi(deployment.http_url).states()
    assert states.get("preprocessing_v3") != "READY"  # what loaded of it was unloaded again
    assert not (world["directory"] / "repository" / "tensorrt_llm_v3").exists()
    assert deployment.history[-1]["action"] == "not_promoted"


def test_a_slower_candidate_is_refused_and_the_live_version_stays(world, monkeypatch, free_ports):
    deployment = record.read(world["directory"])
    repo = candidate(world, "slow", max_batch_size=2)
    spec = DeploySpec(engines_root=str(world["root"]), max_batch_size=2, max_input_len=64, max_output_len=32,
                      benchmark_max_tokens=16, benchmark_requests=8, benchmark_warmup_requests=2,
                      benchmark_concurrency_levels=[2], promotion_max_slowdown_pct=10)
    monkeypatch.setenv(STEP_DELAY_ENV, "40")  # only the candidate's server is started with it
    slow = tritonserver.start(repo, log_path=world["root"] / "slow.log", timeout_s=180, **free_ports)
    monkeypatch.delenv(STEP_DELAY_ENV)
    try:
        verdict = comparison.compare(
            spec, {"grpc_url": slow.grpc_url, "http_url": slow.http_url, "log_path": slow.log_path,
                   "model_repo": str(repo)},
            {"grpc_url": deployment.grpc_url, "http_url": deployment.http_url, "log_path": ""},
            deployment="tiny", live_version=deployment.live)
    finally:
        tritonserver.stop(slow)
    print(f"gate: {verdict.reason}")

    assert verdict.verdict == "refuse"
    assert verdict.slowdown_pct > 10
    assert "promotion_max_slowdown_pct=10" in verdict.reason
    assert served_version(record.read(world["directory"])) == ["2"]


def test_rollback_serves_the_previous_version_again(world):
    result = lifecycle.rollback(world["directory"], None, run_id="rollback-1")

    deployment = record.read(world["directory"])
    assert (result.live_version, result.previous_version) == (1, 2)
    assert served_version(deployment) == ["1"]
    assert deployment.live_version().max_batch_size == 4
    assert generate(deployment)
    assert [e["action"] for e in deployment.history][-1] == "rolled_back"


def test_a_killed_server_is_restarted_by_its_supervisor_with_the_live_version(world):
    before = record.read(world["directory"])
    os.kill(before.server_pid, signal.SIGKILL)

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        deployment = record.read(world["directory"])
        if any(e["action"] == "server_ready" and e["pid"] != before.server_pid for e in deployment.history):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the server was not restarted; log:\n{server.read_log_tail(world['directory'])}")
    assert deployment.restarts == before.restarts + 1
    exited = [e for e in deployment.history if e["action"] == "server_exited"][-1]
    assert exited["pid"] == before.server_pid and exited["exit_code"] == -signal.SIGKILL
    assert served_version(deployment) == ["1"]  # what was live, not what was first started
    assert generate(deployment)


def test_stop_leaves_no_process_and_releases_the_engine_leases(world):
    deployment = record.read(world["directory"])
    group = deployment.supervisor["pgid"]

    result = lifecycle.stop(world["directory"], run_id="stop-1")

    assert result.action == "stopped"
    assert not processes.group_alive(group)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(world["directory"]) in " ".join(p.info["cmdline"] or [])]
    assert not list(Path(world["engine"]).glob("lease-*.json"))
    assert record.read(world["directory"]).state == "stopped"
