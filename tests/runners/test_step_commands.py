"""A step's command as data, and how the docker runner turns it into DockerOperator settings.

No daemon needed here: these read the settings a container *would* get. tests/docker runs them.
"""

from __future__ import annotations

import json

import pytest

from llm_deploy.backends.torch.backend import TORCH_IMAGE_ENV
from llm_deploy.errors import NonRetryableError
from llm_deploy.runners import (
    DockerRunner,
    GpuRequest,
    LocalRunner,
    StepCommand,
    VolumePath,
    runner_for,
    service_runner,
)
from llm_deploy.runners.command import WORKER_GPU_IDS_ENV, Service
from llm_deploy.runners.docker_runner import ULIMITS_ENV, parse_ulimits, resolve_image
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.through_runner import python_step_command

CHECKPOINT = {"checkpoint_dir": "/vol/models/m/builtin", "manifest_sha256": "abc"}


def spec(**params) -> DeploySpec:
    return DeploySpec.from_params({"engines_root": "/vol", **params})


# --- StepCommand ----------------------------------------------------------------------------------


def test_a_secret_in_argv_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="secret HF_TOKEN appears in argv") as refused:
        StepCommand(name="dl", argv=("huggingface-cli", "login", "--token", "hf_abcdefghijkl"),
                    secret_env={"HF_TOKEN": "hf_abcdefghijkl"})
    assert "hf_abcdefghijkl" not in str(refused.value)


def test_describe_names_secrets_but_never_shows_them():
    command = StepCommand(name="dl", argv=("python3", "-m", "x"), secret_env={"HF_TOKEN": "hf_secretvalue123"})
    assert command.describe() == "dl: python3 -m x (secret env: HF_TOKEN)"


def test_argv_must_be_a_list_of_strings():
    with pytest.raises(ValueError, match="argv"):
        StepCommand(name="bad", argv=("python3", 3))  # type: ignore[arg-type]


def test_gpus_are_the_given_ids_or_else_world_size_of_any(monkeypatch):
    monkeypatch.delenv(WORKER_GPU_IDS_ENV, raising=False)
    assert GpuRequest.for_world_size(2) == GpuRequest(count=2)
    assert GpuRequest.for_world_size(2, "4,5") == GpuRequest(device_ids=("4", "5"))
    monkeypatch.setenv(WORKER_GPU_IDS_ENV, "6,7")  # a worker pinned to one GPU set
    assert GpuRequest.for_world_size(2) == GpuRequest(device_ids=("6", "7"))


# --- Python steps as commands ------------------------------------------------------------------


def test_build_engine_reads_the_volume_and_writes_only_where_it_publishes():
    s = spec()
    command = python_step_command("build_engine", s, CHECKPOINT)
    assert command.argv[:4] == ("python3", "-m", "llm_deploy.cli", "build_engine")
    assert json.loads(command.argv[command.argv.index("--inputs-json") + 1]) == [CHECKPOINT]
    assert DeploySpec.model_validate_json(command.argv[command.argv.index("--spec-json") + 1]) == s
    assert command.volume_paths == (
        VolumePath("/vol"),
        VolumePath("/vol/engines/torch/HuggingFaceTB--SmolLM2-135M-Instruct", writable=True),
    )
    assert command.env["HF_HUB_OFFLINE"] == "1" and not command.network_host


def test_verify_engine_writes_only_its_models_engines_and_benchmark_reaches_the_server():
    # The verified marker in the engine's dir; retention of older engines beside it.
    engine = {"engine_dir": "/vol/engines/torch/m/abc"}
    paths = python_step_command("verify_engine", spec(), engine, CHECKPOINT).volume_paths
    assert [p.path for p in paths if p.writable] == ["/vol/engines/torch/m"]
    bench = python_step_command("benchmark", spec(), {"model_repo": "/vol/r"}, run_id="manual__1")
    assert bench.network_host and bench.argv[-2:] == ("--run-id", "manual__1")


def test_only_download_weights_may_reach_the_hub_and_its_token_travels_as_env():
    command = python_step_command("download_weights", spec(model_source="huggingface", model_id="org/m"),
                                  secret_env={"HF_TOKEN": "hf_tokenvalue0000"})
    assert "HF_HUB_OFFLINE" not in command.env and command.secret_env == {"HF_TOKEN": "hf_tokenvalue0000"}
    assert "hf_tokenvalue0000" not in " ".join(command.argv)


def test_gpu_steps_ask_for_world_size_gpus_on_trtllm_and_none_for_the_cpu_twin(monkeypatch):
    monkeypatch.delenv(WORKER_GPU_IDS_ENV, raising=False)
    trtllm = spec(backend="trtllm", world_size=2, dtype="float16")
    assert python_step_command("build_engine", trtllm, CHECKPOINT).gpus == GpuRequest(count=2)
    assert not python_step_command("build_engine", spec(), CHECKPOINT).gpus.wanted
    on_gpu = spec(gpu_device_ids="1")
    assert python_step_command("verify_engine", on_gpu, {"engine_dir": "/vol/engines/torch/m/abc"}, CHECKPOINT).gpus == GpuRequest(device_ids=("1",))
    assert not python_step_command("render_model_repo", trtllm, {}, CHECKPOINT).gpus.wanted


# --- the docker runner's container settings ---------------------------------------------------


def command(**settings) -> StepCommand:
    return StepCommand(name="build_engine", argv=("python3", "-m", "llm_deploy.cli", "build_engine"), **settings)


def test_every_container_gets_the_tutorial_flags_and_runs_as_the_worker(monkeypatch):
    monkeypatch.delenv(ULIMITS_ENV, raising=False)
    monkeypatch.delenv("LLM_DEPLOY_DOCKER_USER", raising=False)
    runner = DockerRunner("img:1", engines_root="/vol")
    settings = runner.settings(command())
    assert settings["shm_size"] == 2 * 1024**3
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in settings["ulimits"]} == {
        ("memlock", -1, -1), ("stack", 67108864, 67108864)}
    assert settings["device_requests"] is None, "no GPU asked, none requested"
    assert settings["network_mode"] is None and settings["image"] == "img:1"
    assert settings["user"] == f"{__import__('os').getuid()}:{__import__('os').getgid()}"
    assert settings["labels"] == {"io.llm-deploy.step": "build_engine"}


def test_gpus_become_one_device_request_by_count_or_by_ids():
    runner = DockerRunner("img:1", engines_root="/vol")
    by_count = runner.settings(command(gpus=GpuRequest(count=4)))["device_requests"]
    assert [(r["Count"], r["DeviceIDs"], r["Capabilities"]) for r in by_count] == [(4, [], [["gpu"]])]
    by_ids = runner.settings(command(gpus=GpuRequest(device_ids=("0", "3"))))["device_requests"]
    assert [(r["Count"], r["DeviceIDs"]) for r in by_ids] == [(0, ["0", "3"])]


def test_volume_paths_become_bind_mounts_path_for_path():
    runner = DockerRunner("img:1", engines_root="/vol")
    mounts = runner.settings(command(volume_paths=(VolumePath("/vol/engines/torch/m", writable=True),
                                                   VolumePath("/vol"))))["mounts"]
    assert [(m["Source"], m["Target"], m["Type"], m["ReadOnly"]) for m in mounts] == [
        ("/vol", "/vol", "bind", True), ("/vol/engines/torch/m", "/vol/engines/torch/m", "bind", False)]


def test_a_named_engines_volume_mounts_whole_writable_only_for_writers():
    runner = DockerRunner("img:1", engines_root="/engines", engines_volume="llm-deploy-engines")
    reader = runner.settings(command(volume_paths=(VolumePath("/engines"),)))["mounts"]
    writer = runner.settings(command(volume_paths=(VolumePath("/engines"), VolumePath("/engines/x", writable=True))))["mounts"]
    assert [(m["Source"], m["Target"], m["Type"], m["ReadOnly"]) for m in reader] == [
        ("llm-deploy-engines", "/engines", "volume", True)]
    assert [m["ReadOnly"] for m in writer] == [False]


def test_paths_off_the_engines_volume_are_refused():
    with pytest.raises(NonRetryableError, match="not on the engines volume"):
        DockerRunner("img:1", engines_root="/vol").settings(command(volume_paths=(VolumePath("/etc"),)))


def test_the_operator_auto_removes_streams_every_line_and_keeps_secrets_private():
    runner = DockerRunner("img:1", engines_root="/vol")
    operator = runner.operator(command(secret_env={"HF_TOKEN": "hf_tokenvalue0000"}, network_host=True))
    assert operator.auto_remove == "force" and operator.xcom_all and not operator.mount_tmp_dir
    assert operator.network_mode == "host"
    assert operator.command == ["python3", "-m", "llm_deploy.cli", "build_engine"]
    assert "HF_TOKEN" not in operator.environment and operator._private_environment == {"HF_TOKEN": "hf_tokenvalue0000"}


def test_ulimits_can_be_capped_for_a_daemon_that_cannot_lift_them(monkeypatch):
    assert parse_ulimits("memlock=8388608:8388608, stack=1") == {"memlock": (8388608, 8388608), "stack": (1, 1)}
    monkeypatch.setenv(ULIMITS_ENV, "memlock=8388608:8388608")
    ulimits = DockerRunner("img:1", engines_root="/vol").settings(command())["ulimits"]
    assert {(u["Name"], u["Hard"]) for u in ulimits} == {("memlock", 8388608), ("stack", 67108864)}


# --- which runner, which image -------------------------------------------------------------------


def test_the_runner_param_picks_the_runner(monkeypatch):
    assert isinstance(runner_for(spec()), LocalRunner)
    docker = runner_for(spec(runner="docker", docker_image="registry.local/llm:1"))
    assert isinstance(docker, DockerRunner) and docker.image == "registry.local/llm:1"
    assert isinstance(service_runner(Service(runner="docker", name="s", container_id="abc")), DockerRunner)
    assert isinstance(service_runner({"runner": "local", "name": "s", "pid": 1}), LocalRunner)


def test_images_come_from_the_param_the_release_table_or_the_workers_setting(monkeypatch):
    from llm_deploy.backends.registry import backend_for
    from llm_deploy.backends.trtllm.releases import RELEASES

    trtllm = spec(backend="trtllm", runner="docker", dtype="float16")
    assert backend_for(trtllm).default_image(trtllm) == RELEASES[trtllm.trtllm_release].container_image
    assert resolve_image(spec(runner="docker", docker_image="registry.local/llm:1"), "ignored") == "registry.local/llm:1"
    torch = spec(runner="docker")
    monkeypatch.delenv(TORCH_IMAGE_ENV, raising=False)
    with pytest.raises(NonRetryableError, match=TORCH_IMAGE_ENV):
        backend_for(torch).default_image(torch)
    with pytest.raises(NonRetryableError, match="docker_image is empty"):
        resolve_image(torch, "")
    monkeypatch.setenv(TORCH_IMAGE_ENV, "llm-deploy-torch:abc")
    assert backend_for(torch).default_image(torch) == "llm-deploy-torch:abc"
