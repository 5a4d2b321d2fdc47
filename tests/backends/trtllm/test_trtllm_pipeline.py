"""The trtllm steps, run for real through the local runner on a stand-in NGC worker.

Every command the steps execute reaches a stand-in built from the release's recorded flag set
(standins.py), so an argv the real script would reject fails here; the stand-ins do just enough
of the real job (a wheel pip installs, rank engines with their parallelism, run.py's output
line, a server answering Triton's health endpoints) for the next step to work on real files.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from llm_deploy import volume
from llm_deploy.backends.trtllm import execution, serve
from llm_deploy.backends.trtllm.releases import RELEASES
from llm_deploy.backends.trtllm.validation import DEFAULT_PORTS
from llm_deploy.bench import stream_client
from llm_deploy.bench.text_models import text_model_of
from llm_deploy.errors import BackendNotAvailable, NonRetryableError, SkipStep
from llm_deploy.model_config import parse_model_config
from llm_deploy.runners import LocalRunner
from llm_deploy.server import readiness
from llm_deploy.spec import TUTORIAL_PROMPT, DeploySpec
from llm_deploy.steps.build_engine import build_engine
from llm_deploy.steps.build_wheel import build_wheel
from llm_deploy.steps.download_weights import download_weights
from llm_deploy.steps.render_model_repo import render_model_repo
from llm_deploy.steps.serve import start_server, stop_server
from llm_deploy.steps.verify_engine import verify_engine


def scripts_called(toolbox) -> list[tuple[str, int]]:
    return [(call["script"], call["rank"]) for call in toolbox.calls_made()]


def test_the_tutorial_release_builds_its_wheel_then_an_engine_from_it(spec_for, worker):
    spec = spec_for("0.5.0", **DEFAULT_PORTS)
    weights = download_weights(spec, None).to_xcom()

    backend = build_wheel(spec)
    assert backend.wheel_dir == str(execution.wheel_dir(spec))
    assert volume.is_published(execution.wheel_dir(spec))
    assert [w.name for w in execution.wheel_dir(spec).glob("*.whl")] == ["tensorrt_llm-0.5.0-py3-none-any.whl"]

    engine = build_engine(spec, weights)
    engine_dir = engine.engine_dir
    published = Path(engine_dir)
    # build.py imports tensorrt_llm: it ran after the wheel from the volume was installed.
    assert scripts_called(worker) == [("build_wheel.py", 0), ("build.py", 0)]
    assert volume.is_published(published) and [p.name for p in published.glob("*.engine")] == ["rank0.engine"]
    build_argv = worker.calls_made()[1]["argv"]
    assert build_argv[:2] == ["--model_dir", weights["checkpoint_dir"]]
    assert {"--use_inflight_batching", "--paged_kv_cache", "--remove_input_padding"} <= set(build_argv)
    # Built in a scratch dir, published under the content-addressed name: nothing half-written.
    assert build_argv[build_argv.index("--output_dir") + 1] != engine_dir + "/"
    assert not list(published.parent.glob(".tmp-*"))

    verified = verify_engine(spec, engine.to_xcom(), weights)
    assert verified.output_text == f"stand-in completion of {TUTORIAL_PROMPT}"
    assert verified.tokens > 0

    repo = render_model_repo(spec, engine.to_xcom(), weights)
    config = parse_model_config(Path(repo.model_repo) / "tensorrt_llm" / "config.pbtxt")
    assert config.parameters["gpt_model_type"].string_value == "inflight_fused_batching"
    assert config.parameters["gpt_model_path"].string_value == engine_dir


@pytest.mark.parametrize("release", [name for name, row in RELEASES.items()
                                     if row.engine_flow == "convert_checkpoint_trtllm_build"])
def test_the_current_releases_convert_and_build_for_two_ranks_and_serve(release, spec_for, worker, free_ports):
    spec = spec_for(release, world_size=2, **free_ports)
    weights = download_weights(spec, None).to_xcom()
    assert build_wheel(spec).wheel_dir == ""  # pip-installed, nothing built

    engine = build_engine(spec, weights).to_xcom()
    assert [name for name, _ in scripts_called(worker)] == ["convert_checkpoint.py", "trtllm-build"]
    convert = worker.calls_made()[0]["argv"]
    assert convert[convert.index("--tp_size") + 1] == "2"
    # The converted checkpoint was only a way to the engine: gone once the engine is published.
    assert not list(Path(engine["engine_dir"]).parent.glob(".tmp-converted-*"))
    assert json.loads((Path(engine["engine_dir"]) / "config.json").read_text())[
        "pretrained_config"]["mapping"]["tp_size"] == 2

    verify_engine(spec, engine, weights)
    assert sorted(scripts_called(worker)[-2:]) == [("run.py", 0), ("run.py", 1)]  # under mpirun -n 2

    repo = render_model_repo(spec, engine, weights).to_xcom()
    server = start_server(spec, repo, "manual__1").to_xcom()
    try:
        launch = [c for c in worker.calls_made() if c["script"] == "launch_triton_server.py"][-1]["argv"]
        assert launch[:4] == ["--world_size", "2", "--model_repo", repo["model_repo"]]
        assert launch[launch.index("--http_port") + 1] == str(spec.http_port)
        assert server["http_url"].endswith(f":{spec.http_port}")
        assert server["service"]["runner"] == "local"
    finally:
        assert stop_server(spec, server) is True
    # The launcher's whole group, the server it left running included, is gone.
    assert not LocalRunner().alive(server["service"])
    assert not readiness.is_live(server["http_url"])


def test_a_world_size_the_engine_was_not_built_for_is_refused_before_the_server_starts(spec_for, free_ports):
    spec = spec_for("0.19.0", **free_ports)
    weights = download_weights(spec, None).to_xcom()
    build_wheel(spec)
    engine = build_engine(spec, weights).to_xcom()
    repo = render_model_repo(spec, engine, weights).to_xcom()
    wider = spec.model_copy(update={"world_size": 2})
    with pytest.raises(NonRetryableError, match=r"world_size=2: the engine .* was built for 1 GPUs"):
        start_server(wider, repo, "manual__2")


def test_a_worker_outside_the_ngc_image_is_refused_before_anything_runs(spec_for, worker, monkeypatch, tmp_path):
    spec = spec_for("0.19.0")
    monkeypatch.setenv("LLM_DEPLOY_NGC_TRITONSERVER", str(tmp_path / "absent"))
    with pytest.raises(BackendNotAvailable, match="runner 'local' needs a worker inside the NGC"):
        build_wheel(spec)
    assert worker.calls_made() == []


def test_a_missing_backend_clone_names_the_param(spec_for, worker):
    spec = spec_for("0.19.0").model_copy(update={"backend_repo_dir": "src/nowhere"})
    with pytest.raises(NonRetryableError, match="backend_repo_dir: no complete tensorrtllm_backend v0.19.0 clone"):
        build_wheel(spec)


def test_the_server_supervisor_ends_the_whole_group_on_sigterm(spec_for, worker, free_ports):
    spec = spec_for("0.19.0", **free_ports)
    weights = download_weights(spec, None).to_xcom()
    build_wheel(spec)
    engine = build_engine(spec, weights).to_xcom()
    repo = render_model_repo(spec, engine, weights).to_xcom()
    server = start_server(spec, repo, "manual__3").to_xcom()
    os.killpg(server["pgid"], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while LocalRunner().alive(server["service"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not LocalRunner().alive(server["service"])
    assert stop_server(spec, server) is False


def test_on_the_docker_runner_each_command_runs_in_the_release_image_with_the_tutorials_settings(tmp_path):
    spec = DeploySpec(engines_root=str(tmp_path), backend="trtllm", trtllm_release="0.19.0", world_size=2,
                      runner="docker")
    settings = execution.runner(spec).settings(serve.launch_command(spec, str(tmp_path / "model_repos/r")))
    assert settings["image"] == "nvcr.io/nvidia/tritonserver:25.05-trtllm-python-py3"
    assert settings["device_requests"] == [{"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                            "Options": {}}]
    assert settings["network_mode"] == "host" and settings["shm_size"] == 2 << 30
    assert {u["Name"]: u["Soft"] for u in settings["ulimits"]} == {"memlock": -1, "stack": 67108864}
    assert settings["mounts"] == [{"Target": str(tmp_path), "Source": str(tmp_path), "Type": "bind", "ReadOnly": True}]
    # The supervisor keeps the container up after launch_triton_server.py returns.
    launched = json.loads(settings["command"][-1])
    assert launched[-1][:2] == ["python3", f"{execution.backend_dir(spec)}/scripts/launch_triton_server.py"]


@pytest.mark.parametrize("release", [name for name, row in RELEASES.items() if "llmapi" in row.flows])
def test_the_llmapi_flow_checks_and_serves_the_checkpoint_without_building_an_engine(release, spec_for, worker,
                                                                                   free_ports):
    spec = spec_for(release, triton_flow="llmapi", **free_ports)
    weights = download_weights(spec, None).to_xcom()
    build_wheel(spec)  # the release's wheel: the LLM API the check and the model import
    with pytest.raises(SkipStep, match="serves the Hugging Face checkpoint itself, so no engine is built"):
        build_engine(spec, weights)
    assert not (Path(spec.engines_root) / "engines").exists()

    # The LLM API's generate, in the worker, with the arguments the server gets: the stand-in
    # LLM refuses any argument the release's LLM() does not take.
    verified = verify_engine(spec, None, weights)
    assert verified.engine_dir == weights["checkpoint_dir"]
    assert verified.output_text == f"stand-in LLM API completion of {TUTORIAL_PROMPT}"
    assert verified.tokens == len(verified.output_text.split())

    repo = render_model_repo(spec, None, weights).to_xcom()
    assert repo["models"] == ["tensorrt_llm"] and Path(repo["model_repo"]).name.startswith("llmapi-")
    model_yaml = yaml.safe_load((Path(repo["model_repo"]) / "tensorrt_llm/1/model.yaml").read_text())
    assert model_yaml["model"] == weights["checkpoint_dir"] and model_yaml["backend"] == "pytorch"
    assert model_yaml["triton_config"] == {"max_batch_size": 0, "decoupled": True}

    server = start_server(spec, repo, "manual__llmapi").to_xcom()
    try:
        launch = [c for c in worker.calls_made() if c["script"] == "launch_triton_server.py"][-1]["argv"]
        assert launch[:5] == ["--world_size", "1", "--model_repo", repo["model_repo"], "--no-mpi"]
        assert server["lease"] == ""  # no engine to lease
        # The tutorial's /generate, spelled as the llmapi model takes it.
        text = stream_client.generate(server["http_url"], TUTORIAL_PROMPT, 5, model=text_model_of(spec))
        assert text == "stand-in LLM API completion of"  # five tokens, the prompt not echoed
    finally:
        assert stop_server(spec, server) is True


def test_the_llmapi_flow_is_refused_by_a_release_before_1_0(spec_for, worker):
    with pytest.raises(NonRetryableError, match=r"triton_flow='llmapi' is not offered by trtllm release 0\.21\.0.*"
                                                r"choose a release that has it \(1\.0\.0, 1\.1\.0"):
        build_wheel(spec_for("0.21.0", triton_flow="llmapi"))
    assert worker.calls_made() == []


# --- version safety: an engine is served only where it was built for ----------------------------


def test_the_engine_records_what_it_was_built_for(spec_for, worker, monkeypatch):
    monkeypatch.setenv("STANDIN_GPUS", "NVIDIA H100 80GB HBM3, 9.0")
    spec = spec_for("1.2.1")
    weights = download_weights(spec, None).to_xcom()
    build_wheel(spec)
    engine = build_engine(spec, weights)
    target = volume.read_manifest(Path(engine.engine_dir))["engine_config"]["build_target"]
    # A local worker is its own image (no NGC version variable here), so no image is named.
    assert target == {"runtime": "tensorrt_llm 1.2.1", "image": "", "gpu": "NVIDIA H100 80GB HBM3",
                      "compute_capability": "9.0"}


def test_an_engine_built_for_another_gpu_is_refused_before_tritonserver_starts(spec_for, worker, monkeypatch):
    monkeypatch.setenv("STANDIN_GPUS", "NVIDIA H100 80GB HBM3, 9.0")
    spec = spec_for("1.2.1")
    weights = download_weights(spec, None).to_xcom()
    build_wheel(spec)
    engine = build_engine(spec, weights).to_xcom()
    verify_engine(spec, engine, weights)
    repo = render_model_repo(spec, engine, weights).to_xcom()

    # The serving task lands on a host of another GPU type.
    monkeypatch.setenv("STANDIN_GPUS", "NVIDIA L40S, 8.9")
    worker.calls.unlink(missing_ok=True)
    with pytest.raises(NonRetryableError) as refused:
        start_server(spec, repo, "manual__1")
    message = str(refused.value)
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in message
    assert "NVIDIA L40S (compute capability 8.9)" in message
    assert "another GPU" in message and "Rebuild it for this host" in message
    assert not [c for c in worker.calls_made() if c["script"] == "launch_triton_server.py"]
    assert not list(Path(engine["engine_dir"]).glob("lease-*.json"))

    # On that host the same spec finds no cached engine, and build_engine builds its own beside it.
    from llm_deploy.engine_cache import find_cached

    assert find_cached(spec, None) is None
    own = build_engine(spec, weights).to_xcom()
    assert own["engine_dir"] != engine["engine_dir"]
    assert Path(own["engine_dir"]).parent == Path(engine["engine_dir"]).parent


def test_gpus_of_mixed_types_are_refused_with_the_remedy(spec_for, worker, monkeypatch):
    monkeypatch.setenv("STANDIN_GPUS", "NVIDIA H200, 9.0;NVIDIA L40S, 8.9")
    spec = spec_for("1.2.1", world_size=2)
    weights = download_weights(spec, None).to_xcom()
    build_wheel(spec)
    with pytest.raises(NonRetryableError, match="different types.*set gpu_device_ids"):
        build_engine(spec, weights)


def test_an_image_carrying_another_release_is_refused_naming_both(spec_for, worker):
    # The worker's image has 1.2.0's wheel (build_wheel of 1.2.0 installed it); the spec says 1.2.1.
    older = spec_for("1.2.0")
    build_wheel(older)
    spec = older.model_copy(update={"trtllm_release": "1.2.1"})
    weights = download_weights(spec, None).to_xcom()
    with pytest.raises(NonRetryableError, match=r"carries tensorrt_llm 1\.2\.0, but trtllm_release is 1\.2\.1"):
        build_engine(spec, weights)
    # The cache lookup (before build_wheel could install the right wheel) only finds nothing.
    from llm_deploy.engine_cache import find_cached

    assert find_cached(spec, None) is None


def test_a_local_worker_in_an_ngc_image_names_that_image(spec_for, worker, monkeypatch):
    # Every NGC Triton image sets NVIDIA_TRITON_SERVER_VERSION: an engine built by a local worker
    # in it names the same image a docker-runner build in that image would.
    monkeypatch.setenv("NVIDIA_TRITON_SERVER_VERSION", "26.04")
    spec = spec_for("1.2.1")
    build_wheel(spec)
    from llm_deploy.backends.registry import backend_for

    target = backend_for(spec).build_target(spec, "build_engine")
    assert target.image == RELEASES["1.2.1"].container_image
