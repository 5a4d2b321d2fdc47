"""The commands read like the tutorial's shell, for the tutorial's release and the current one."""

from __future__ import annotations

import shlex

import pytest

from llm_deploy.backends.trtllm import commands
from llm_deploy.backends.trtllm.layout import TrtllmPaths, default_backend_dir
from llm_deploy.backends.trtllm.releases import RELEASES
from llm_deploy.spec import DeploySpec

# The tutorial's paths: the backend clone, the weights and the engines mounted into the container.
TUTORIAL_PATHS = TrtllmPaths(
    backend_dir="/tensorrtllm_backend",
    hf_checkpoint_dir="/Llama-2-7b-hf/",
    engine_dir="/engines/1-gpu/",
    model_repo_dir="/opt/tritonserver/inflight_batcher_llm",
)
# Copied from the tutorial (reference/tutorial-llama2-trtllm-triton.zh.md), shell as written there.
TUTORIAL_BUILD = """python /tensorrtllm_backend/tensorrt_llm/examples/llama/build.py --model_dir /Llama-2-7b-hf/ \\
                --dtype bfloat16 \\
                --use_gpt_attention_plugin bfloat16 \\
                --use_inflight_batching \\
                --paged_kv_cache \\
                --remove_input_padding \\
                --use_gemm_plugin bfloat16 \\
                --output_dir /engines/1-gpu/ \\
                --world_size 1"""
TUTORIAL_RUN = ('python3 /tensorrtllm_backend/tensorrt_llm/examples/llama/run.py --engine_dir=/engines/1-gpu/ '
                '--max_output_len 100 --tokenizer_dir /Llama-2-7b-hf --input_text "How do I count to ten in French?"')
TUTORIAL_LAUNCH = ("python3 /tensorrtllm_backend/scripts/launch_triton_server.py --world_size=1 "
                   "--model_repo=/opt/tritonserver/inflight_batcher_llm")


def tutorial_spec(**changes) -> DeploySpec:
    """The tutorial's params; max_* equal to build.py's defaults, which the tutorial leaves alone."""
    params = dict(backend="trtllm", trtllm_release="0.5.0", dtype="bfloat16", world_size=1,
                  max_batch_size=8, max_input_len=2048, max_output_len=512)
    return DeploySpec(**{**params, **changes})


def shell_words(command: str) -> list[str]:
    """The words a shell reads (backslash-newline continues the line)."""
    return shlex.split(command.replace("\\\n", " "))


def words(command: str) -> list[str]:
    """Shell words with --flag=value split like argparse reads them, trailing "/" dropped."""
    out = []
    for word in shell_words(command):
        out += word.split("=", 1) if word.startswith("--") and "=" in word else [word]
    return [word.rstrip("/") for word in out]


def test_the_tutorials_build_py_command_word_for_word():
    (argv,) = commands.build_engine(tutorial_spec(), TUTORIAL_PATHS)
    # python3 where the tutorial types python: the NGC image always has python3.
    assert argv[0] == "python3"
    assert argv[1:] == shell_words(TUTORIAL_BUILD)[1:]


def test_the_tutorials_run_py_and_launch_commands():
    (run,) = commands.verify_engine(tutorial_spec(), TUTORIAL_PATHS)
    (launch,) = commands.launch_server(tutorial_spec(), TUTORIAL_PATHS)
    assert [a.rstrip("/") for a in run] == words(TUTORIAL_RUN)
    assert launch == words(TUTORIAL_LAUNCH)


def test_build_py_sets_only_what_differs_from_its_defaults():
    (argv,) = commands.build_engine(tutorial_spec(max_batch_size=64, max_input_len=1024, max_output_len=256,
                                                  world_size=2), TUTORIAL_PATHS)
    assert argv[argv.index("--world_size"):] == [
        "--world_size", "2", "--tp_size", "2",
        "--max_batch_size", "64", "--max_input_len", "1024", "--max_output_len", "256"]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_tensor_times_pipeline_parallel_is_world_size_in_every_command(world_size):
    paths = TrtllmPaths("/b", "/hf", "/engine", "/repo", converted_checkpoint_dir="/ckpt")
    legacy = commands.build_engine(DeploySpec(backend="trtllm", trtllm_release="0.5.0", world_size=world_size), paths)[0]
    value = lambda argv, flag, default: int(argv[argv.index(flag) + 1]) if flag in argv else default  # noqa: E731
    assert value(legacy, "--tp_size", 1) * value(legacy, "--pp_size", 1) == value(legacy, "--world_size", 1) == world_size

    spec = DeploySpec(backend="trtllm", trtllm_release="0.19.0", world_size=world_size)
    convert, build = commands.build_engine(spec, paths)
    assert int(convert[convert.index("--tp_size") + 1]) * int(convert[convert.index("--pp_size") + 1]) == world_size
    assert build[build.index("--workers") + 1] == str(world_size)
    for release in RELEASES:
        spec = DeploySpec(backend="trtllm", trtllm_release=release, world_size=world_size)
        (run,) = commands.verify_engine(spec, paths)
        (launch,) = commands.launch_server(spec, paths)
        assert (run[:4] == ["mpirun", "-n", str(world_size), "--allow-run-as-root"]) == (world_size > 1)
        assert launch[launch.index("--world_size") + 1] == str(world_size)


def test_clone_pins_the_tag_and_commit_and_fetches_submodules_and_lfs():
    spec = DeploySpec(backend="trtllm", trtllm_release="0.5.0")
    clone = commands.clone_backend(spec, TrtllmPaths("/src/b", "/hf", "/e", "/r"))
    assert clone == [
        ["git", "clone", "--branch", "v0.5.0", "--",
         "https://github.com/triton-inference-server/tensorrtllm_backend.git", "/src/b"],
        ["git", "-C", "/src/b", "checkout", "--quiet", "--detach", "47b609b670d6bb33a5ff113d98ad8a44d961c5c6"],
        ["git", "-C", "/src/b", "lfs", "install"],
        ["git", "-C", "/src/b", "submodule", "update", "--init", "--recursive"],
        ["git", "-C", "/src/b/tensorrt_llm", "lfs", "pull"],
    ]


def test_the_tutorial_builds_the_wheel_the_current_release_pip_installs_it():
    paths = TrtllmPaths("/tensorrtllm_backend", "/hf", "/e", "/r")
    built = commands.install_wheel(DeploySpec(backend="trtllm", trtllm_release="0.5.0"), paths)
    assert built[0] == ["bash", "/tensorrtllm_backend/tensorrt_llm/docker/common/install_cmake.sh"]
    assert ["bash", "/tensorrtllm_backend/tensorrt_llm/docker/common/install_pytorch.sh", "pypi"] in built
    assert built[-2] == ["python3", "-m", "pip", "install", "--no-index", "--find-links",
                         "/tensorrtllm_backend/tensorrt_llm/build", "--no-deps", "tensorrt_llm==0.5.0"]
    assert commands.install_wheel(DeploySpec(backend="trtllm", trtllm_release="0.19.0"), paths) == [
        ["python3", "-m", "pip", "install", "tensorrt_llm==0.19.0"]]


def test_current_release_converts_then_builds_with_trtllm_build():
    spec = DeploySpec(backend="trtllm", trtllm_release="0.19.0", dtype="bfloat16", world_size=2,
                      max_batch_size=64, max_input_len=1024, max_output_len=512)
    paths = TrtllmPaths("/b", "/hf", "/engine", "/repo", converted_checkpoint_dir="/ckpt")
    convert, build = commands.build_engine(spec, paths)
    assert convert == ["python3", "/b/tensorrt_llm/examples/llama/convert_checkpoint.py", "--model_dir", "/hf",
                       "--output_dir", "/ckpt", "--dtype", "bfloat16", "--tp_size", "2", "--pp_size", "1"]
    assert build == ["trtllm-build", "--checkpoint_dir", "/ckpt", "--output_dir", "/engine",
                     "--gpt_attention_plugin", "bfloat16", "--gemm_plugin", "bfloat16",
                     "--remove_input_padding", "enable", "--context_fmha", "enable", "--kv_cache_type", "paged",
                     "--max_batch_size", "64", "--max_input_len", "1024", "--max_seq_len", "1536", "--workers", "2"]


def test_current_release_launch_passes_the_specs_ports():
    spec = DeploySpec(backend="trtllm", trtllm_release="0.19.0", http_port=8100, grpc_port=8101, metrics_port=8102)
    (launch,) = commands.launch_server(spec, TrtllmPaths("/b", "/hf", "/e", "/repo"))
    # --force: the launcher would refuse to start beside the deployment's running tritonserver.
    assert launch == ["python3", "/b/scripts/launch_triton_server.py", "--world_size", "1", "--model_repo", "/repo",
                      "--force", "--http_port", "8100", "--grpc_port", "8101", "--metrics_port", "8102"]


def test_convert_flow_needs_a_converted_checkpoint_dir():
    with pytest.raises(ValueError, match="converted_checkpoint_dir"):
        commands.build_engine(DeploySpec(backend="trtllm", trtllm_release="0.19.0"), TrtllmPaths("/b", "/hf", "/e", "/r"))


def test_default_backend_dir_is_per_release_on_the_volume(tmp_path):
    spec = DeploySpec(backend="trtllm", trtllm_release="0.5.0", engines_root=str(tmp_path))
    assert default_backend_dir(spec) == str(tmp_path / "src" / "tensorrtllm_backend-0.5.0")
    custom = DeploySpec(backend="trtllm", engines_root=str(tmp_path), backend_repo_dir="clones/backend")
    assert default_backend_dir(custom) == str(tmp_path / "clones" / "backend")
