"""A TensorRT-LLM release's candidates promoted into a long-running deployment, for real through
the local runner on the stand-in NGC worker: the release's tritonserver command (a stand-in that
keeps Triton's repository API) under our supervisor, versions swapped through load and unload,
a rollback, a killed server brought back on the live version, and a stop that leaves nothing.

The gate itself (compare_with_live) streams through gRPC, which the stand-in does not serve; the
twin's tests run it. Here promote gets the verdicts it would have given.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest
from llm_deploy import engine_cache
from llm_deploy.backends.trtllm.deployment_server import shm_prefix
from llm_deploy.backends.trtllm.validation import DEFAULT_PORTS
from llm_deploy.deployment import record
from llm_deploy.deployment.repository_api import RepositoryApi
from llm_deploy.errors import SkipStep
from llm_deploy.processes import group_members
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.build_engine import build_engine
from llm_deploy.steps.build_wheel import build_wheel
from llm_deploy.steps.download_weights import download_weights
from llm_deploy.steps.promote import deployment_dir, promote, rollback, stop_deployment
from llm_deploy.steps.render_model_repo import render_model_repo

from tests.backends.trtllm.standins import make_spec
from tests.conftest import three_free_ports

FIRST = {"verdict": "first", "reason": "no live version", "live_version": 0}


def won(live_version: int) -> dict:
    return {"verdict": "promote", "reason": "2.0% faster", "live_version": live_version, "concurrency": 4,
            "candidate_tok_s": 102.0, "live_tok_s": 100.0, "slowdown_pct": -2.0}


@pytest.fixture
def deploy_spec(worker, tmp_path, tiny_llama_checkpoint):
    deployment = three_free_ports()

    def make(release, **params):
        # 0.5.0's launcher cannot move the qualification server off 8000-8002 (it does not start here).
        qualification = DEFAULT_PORTS if release == "0.5.0" else three_free_ports()
        return make_spec(tmp_path / "engines", tiny_llama_checkpoint, worker, release, **qualification,
                         deployment_http_port=deployment["http_port"], deployment_grpc_port=deployment["grpc_port"],
                         deployment_metrics_port=deployment["metrics_port"], **params)

    return make


def candidate(spec) -> dict:
    weights = download_weights(spec, None).to_xcom()
    build_wheel(spec)  # 0.5.0 builds its wheel; later releases pip-install theirs
    engine = build_engine(spec, weights).to_xcom()
    return render_model_repo(spec, engine, weights).to_xcom()


def server_starts(toolbox) -> list[list[str]]:
    return [call["argv"] for call in toolbox.calls_made() if call["script"] == "tritonserver"]


def ready(http_url: str, model: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"{http_url}/v2/models/{model}/versions/{version}/ready", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("release", ["0.5.0", "1.2.1"])
def test_a_release_deployment_is_promoted_swapped_rolled_back_restarted_and_stopped(release, deploy_spec, worker):
    first = deploy_spec(release, max_batch_size=4)
    directory = deployment_dir(first)
    started = promote(first, candidate(first), FIRST, "manual__1")
    try:
        assert started.action == "started" and started.live_version == 1
        assert ready(started.http_url, "ensemble", 1)
        argv = server_starts(worker)[-1]
        # The release's rank-0 command as a deployment: explicit model control, the live version's
        # models named, loopback admin endpoints, a shared-memory prefix of its own.
        assert "--model-control-mode=explicit" in argv and "--disable-auto-complete-config" in argv
        assert {a for a in argv if a.startswith("--load-model=")} == {
            f"--load-model={name}" for name in [*record.read(directory).live_version().models.values(), "ensemble"]}
        assert f"--http-address={first.server_host}" in argv and f"--http-port={first.deployment_http_port}" in argv
        assert f"--backend-config=python,shm-region-prefix-name={shm_prefix(first)}" in argv
        assert [c["script"] for c in worker.calls_made()][-1] == "tritonserver"  # under mpirun -n 1

        second = deploy_spec(release, max_batch_size=8)
        swapped = promote(second, candidate(second), won(1), "manual__2")
        assert (swapped.action, swapped.live_version, swapped.previous_version) == ("promoted", 2, 1)
        api = RepositoryApi(swapped.http_url, timeout_s=30)
        states = api.states()
        v1, v2 = (record.read(directory).version(n).models.values() for n in (1, 2))
        assert all(states[name] == "READY" for name in v2) and not any(states[name] == "READY" for name in v1)
        assert ready(swapped.http_url, "ensemble", 2) and not ready(swapped.http_url, "ensemble", 1)
        assert len(server_starts(worker)) == 1  # swapped on the running server, not restarted

        back = rollback(second, None, "manual__3")
        assert (back.action, back.live_version) == ("rolled_back", 1)
        assert ready(back.http_url, "ensemble", 1)

        # A killed server comes back under the supervisor, on the version live now (1), not on
        # what it first served or what was promoted last.
        deployment = record.read(directory)
        os.kill(deployment.server_pid, signal.SIGKILL)
        wait_for(lambda: len(server_starts(worker)) == 2 and ready(back.http_url, "ensemble", 1))
        assert any(a == f"--load-model={next(iter(v1))}" for a in server_starts(worker)[-1])
        wait_for(lambda: record.read(directory).restarts == 1)
        api.close()
    finally:
        supervisor = record.read(directory).supervisor
        stopped = stop_deployment(first, "manual__4")
    assert stopped.action == "stopped"
    deployment = record.read(directory)
    assert deployment.state == "stopped"
    assert group_members(supervisor["pgid"]) == []  # the supervisor, mpirun and the server: all gone
    assert not ready(started.http_url, "ensemble", 1)
    for version in deployment.versions:
        if version.engine_dir:
            assert not [lease for lease in engine_cache.live_leases(version.engine_dir)
                        if lease["run_id"] == f"deployment-{deployment.name}"]


@pytest.mark.parametrize(("params", "reason"), [
    ({"world_size": 2}, r"world_size=2: a deployment swaps versions through one tritonserver's repository API"),
    ({"triton_flow": "llmapi"}, r"triton_flow='llmapi' serves its tensorrt_llm model with no ensemble in front"),
])
def test_what_a_deployment_cannot_serve_yet_is_qualified_and_not_promoted_saying_why(deploy_spec, params, reason):
    spec = deploy_spec("1.2.1", **params)
    with pytest.raises(SkipStep, match=r"not promoted: " + reason):
        promote(spec, {"model_repo": "/nowhere"}, FIRST, "manual__1")


def test_every_tritonserver_option_of_the_deployment_is_one_a_real_tritonserver_takes(tmp_path):
    # The stand-in takes only these too; here they are held to a real tritonserver's own --help
    # (the twin's build of it: the options have been Triton's since long before 23.10, 0.5.0's image).
    import subprocess

    from llm_deploy.backends.trtllm.deployment_server import server_argv
    from llm_deploy.server import tritonserver

    paths, env = tritonserver.prepare()
    answer = subprocess.run([str(paths.binary), "--help"], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=60)
    spec = DeploySpec(engines_root=str(tmp_path), backend="trtllm", trtllm_release="1.2.1")
    argv = server_argv(spec, tmp_path / "repository", "/opt/tritonserver/bin/tritonserver")
    options = [a.split("=", 1)[0] for a in argv[argv.index("/opt/tritonserver/bin/tritonserver") + 1:]]
    usage = answer.stdout + answer.stderr
    assert options and [option for option in options if option not in usage] == []
