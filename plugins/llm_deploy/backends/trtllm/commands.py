"""The trtllm backend's commands, per tutorial step, as argv lists (never a shell string).

Pure functions of (DeploySpec, TrtllmPaths): nothing here runs, reads or writes anything, so a
runner can execute the lists locally or in a container, and the tests can hold every argv
against the flag sets recorded from each release's real scripts.

Parallelism is decided once (``validation.parallelism``: tp x pp == world_size) and carried into
every command that needs it: build.py's --world_size/--tp_size/--pp_size, convert_checkpoint.py's
--tp_size/--pp_size, trtllm-build's --workers, ``mpirun -n <world_size>`` around run.py, and
launch_triton_server.py --world_size.
"""

from __future__ import annotations

import json

from llm_deploy.backends.trtllm import llmapi_check
from llm_deploy.backends.trtllm.layout import TrtllmPaths
from llm_deploy.backends.trtllm.llm_args import llm_args
from llm_deploy.backends.trtllm.releases import (
    BACKEND_REPO_URL,
    BUILD_WHEEL,
    CONVERT_CHECKPOINT,
    LAUNCH_SERVER,
    LEGACY_BUILD,
    RUN,
    TRTLLM_REPO_URL,
    Release,
)
from llm_deploy.backends.trtllm.validation import parallelism, validate_spec
from llm_deploy.spec import TUTORIAL_PROMPT, DeploySpec

Argv = list[str]

PYTHON = "python3"
TRTLLM_BUILD_EXE = "trtllm-build"  # console script of the installed tensorrt_llm wheel
# The tutorial checks the engine with run.py --max_output_len 100.
RUN_PY_MAX_OUTPUT_LEN = 100
# install_cmake.sh unpacks CMake into /usr/local/cmake and only exports PATH through $BASH_ENV;
# a link into /usr/local/bin (on PATH in the NGC images) gives build_wheel.py the same cmake
# without a shell.
CMAKE_FROM = "/usr/local/cmake/bin/cmake"
CMAKE_LINK = "/usr/local/bin/cmake"


# --- clone: git clone --branch <tag>, submodules, git-lfs ------------------------------------------


def clone_backend(spec: DeploySpec, paths: TrtllmPaths) -> list[Argv]:
    """Tutorial "install": the backend at its release tag, with the TensorRT-LLM submodule."""
    release = validate_spec(spec)
    clone = paths.backend_dir
    return [
        ["git", "clone", "--branch", release.backend_ref, "--", BACKEND_REPO_URL, clone],
        # The table pins commits; a tag that was moved upstream must not change what we build.
        ["git", "-C", clone, "checkout", "--quiet", "--detach", release.backend_commit],
        # Before the submodule checkout, so LFS files arrive as content rather than pointers.
        ["git", "-C", clone, "lfs", "install"],
        ["git", "-C", clone, "submodule", "update", "--init", "--recursive"],
        *_derived_submodule(release, paths),
        ["git", "-C", paths.trtllm_dir, "lfs", "pull"],
    ]


def _derived_submodule(release: Release, paths: TrtllmPaths) -> list[Argv]:
    """A derived release (release_probe) reuses its base row's backend commit, whose submodule pins
    the base's TensorRT-LLM: move the submodule to the new release's tag and commit."""
    if not release.derived:
        return []
    return [
        ["git", "-C", paths.trtllm_dir, "fetch", "--depth", "1", "--", TRTLLM_REPO_URL, f"refs/tags/{release.trtllm_tag}"],
        ["git", "-C", paths.trtllm_dir, "checkout", "--quiet", "--detach", release.trtllm_commit],
        ["git", "-C", paths.trtllm_dir, "submodule", "update", "--init", "--recursive"],
    ]


# --- build_wheel ----------------------------------------------------------------------------------


def install_wheel(spec: DeploySpec, paths: TrtllmPaths) -> list[Argv]:
    """Tutorial "install the TensorRT-LLM python package": build it (0.5.0) or pip-install it."""
    release = validate_spec(spec)
    if release.wheel.kind == "pip":
        return [[PYTHON, "-m", "pip", "install", f"tensorrt_llm=={release.wheel.version}"]]
    docker_common = paths.in_trtllm("docker/common")
    wheel_dir = paths.wheel_output_dir
    return [
        ["bash", f"{docker_common}/install_cmake.sh"],
        ["ln", "-sf", CMAKE_FROM, CMAKE_LINK],
        # "pypi" = the x86_64 branch of the tutorial (aarch64 builds PyTorch from source).
        ["bash", f"{docker_common}/install_pytorch.sh", "pypi"],
        [PYTHON, paths.in_trtllm(release.scripts[BUILD_WHEEL]),
         "--trt_root", release.wheel.trt_root, "--dist_dir", wheel_dir],
        *install_built_wheel(spec, paths),
    ]


def install_built_wheel(spec: DeploySpec, paths: TrtllmPaths) -> list[Argv]:
    """`pip install ./build/tensorrt_llm*.whl`: the wheel from wheel_dir and nothing else (no index;
    pinned, so no other version a find-links dir may also hold), then its requirements. Every later
    step of a built-wheel release repeats it, since each docker container starts from the bare image."""
    release = validate_spec(spec)
    return [
        [PYTHON, "-m", "pip", "install", "--no-index", "--find-links", paths.wheel_output_dir, "--no-deps",
         f"tensorrt_llm=={release.wheel.version}"],
        [PYTHON, "-m", "pip", "install", "-r", paths.in_trtllm("requirements.txt")],
    ]


# --- build_engine ---------------------------------------------------------------------------------


def build_engine(spec: DeploySpec, paths: TrtllmPaths) -> list[Argv]:
    """Tutorial "create the engine" in the release's flow (none in the llmapi flow)."""
    release = validate_spec(spec)
    if spec.triton_flow == "llmapi":
        return []
    if release.engine_flow == "legacy_build_py":
        return [legacy_build(spec, paths, release)]
    return [convert_checkpoint(spec, paths, release), trtllm_build(spec, paths)]


def legacy_build(spec: DeploySpec, paths: TrtllmPaths, release: Release) -> Argv:
    """examples/llama/build.py with the tutorial's flags (in-flight batching needs all three
    of gpt attention plugin, paged KV cache and removed input padding)."""
    tp, pp = parallelism(spec)
    argv = [
        PYTHON, paths.in_trtllm(release.scripts[LEGACY_BUILD]),
        "--model_dir", paths.hf_checkpoint_dir,
        "--dtype", spec.dtype,
        "--use_gpt_attention_plugin", spec.dtype,
        "--use_inflight_batching",
        "--paged_kv_cache",
        "--remove_input_padding",
        "--use_gemm_plugin", spec.dtype,
        "--output_dir", paths.engine_dir,
        "--world_size", str(spec.world_size),
    ]
    # build.py asserts tp_size * pp_size == world_size; both default to 1.
    optional = {
        "--tp_size": tp, "--pp_size": pp,
        "--max_batch_size": spec.max_batch_size,
        "--max_input_len": spec.max_input_len,
        "--max_output_len": spec.max_output_len,
    }
    for flag, value in optional.items():
        # Left out when equal to build.py's default, so the tutorial's command is reproduced as written.
        if release.legacy_build_defaults.get(flag) != value:
            argv += [flag, str(value)]
    return argv


def convert_checkpoint(spec: DeploySpec, paths: TrtllmPaths, release: Release) -> Argv:
    """HF checkpoint -> TensorRT-LLM checkpoint, sharded for tp x pp ranks."""
    tp, pp = parallelism(spec)
    return [
        PYTHON, paths.in_trtllm(release.scripts[CONVERT_CHECKPOINT]),
        "--model_dir", paths.hf_checkpoint_dir,
        "--output_dir", _converted_dir(paths),
        "--dtype", spec.dtype,
        "--tp_size", str(tp),
        "--pp_size", str(pp),
    ]


def trtllm_build(spec: DeploySpec, paths: TrtllmPaths) -> Argv:
    """TensorRT-LLM checkpoint -> engine, with what the tutorial's build.py flags meant then:
    attention and GEMM plugins in the serving dtype, packed inputs, paged KV cache."""
    return [
        TRTLLM_BUILD_EXE,
        "--checkpoint_dir", _converted_dir(paths),
        "--output_dir", paths.engine_dir,
        "--gpt_attention_plugin", spec.dtype,
        "--gemm_plugin", spec.dtype,
        "--remove_input_padding", "enable",
        "--context_fmha", "enable",
        "--kv_cache_type", "paged",
        "--max_batch_size", str(spec.max_batch_size),
        "--max_input_len", str(spec.max_input_len),
        "--max_seq_len", str(spec.max_input_len + spec.max_output_len),
        # One build process per rank; the tp x pp split itself is in the converted checkpoint.
        "--workers", str(spec.world_size),
    ]


# --- verify_engine --------------------------------------------------------------------------------


def verify_engine(spec: DeploySpec, paths: TrtllmPaths) -> list[Argv]:
    """Tutorial "check the engine with run.py" on the tutorial's prompt, on world_size ranks."""
    release = validate_spec(spec)
    if spec.triton_flow == "llmapi":
        return verify_checkpoint(spec, paths)
    argv = [
        PYTHON, paths.in_trtllm(release.scripts[RUN]),
        "--engine_dir", paths.engine_dir,
        "--max_output_len", str(min(RUN_PY_MAX_OUTPUT_LEN, spec.max_output_len)),
        "--tokenizer_dir", paths.hf_checkpoint_dir,
        "--input_text", TUTORIAL_PROMPT,
    ]
    return [mpirun(spec.world_size) + argv]


def verify_checkpoint(spec: DeploySpec, paths: TrtllmPaths) -> list[Argv]:
    """llmapi flow: the LLM API's generate on the tutorial's prompt, with the arguments the
    server's model.yaml gets. One process: the LLM API starts its own tensor-parallel workers."""
    validate_spec(spec)
    max_tokens = min(RUN_PY_MAX_OUTPUT_LEN, spec.max_output_len)
    arguments = json.dumps(llm_args(spec, paths.hf_checkpoint_dir), sort_keys=True)
    return [[PYTHON, "-c", llmapi_check.source(), arguments, TUTORIAL_PROMPT, str(max_tokens)]]


def mpirun(world_size: int) -> Argv:
    """A multi-GPU engine runs one process per rank under MPI, as upstream's READMEs launch it."""
    if world_size == 1:
        return []
    return ["mpirun", "-n", str(world_size), "--allow-run-as-root"]


# --- start_server ---------------------------------------------------------------------------------


def launch_server(spec: DeploySpec, paths: TrtllmPaths) -> list[Argv]:
    """Tutorial "launch Triton": one tritonserver per rank under MPI, serving the model repo."""
    release = validate_spec(spec)
    argv = [
        PYTHON, paths.in_backend(release.scripts[LAUNCH_SERVER]),
        "--world_size", str(spec.world_size),
        "--model_repo", paths.model_repo_dir,
    ]
    if spec.triton_flow == "llmapi":
        # As upstream's llmapi tests launch it: one process without MPI; with more GPUs, rank 0
        # runs tritonserver and the other ranks become the LLM API's workers
        # (trtllm-llmapi-launch), the ranks oversubscribing the CPU slots mpirun counts.
        argv += ["--no-mpi"] if spec.world_size == 1 else ["--trtllm_llmapi_launch", "--oversubscribe"]
    if release.launch_checks_running_servers:
        # The launcher refuses to start while any tritonserver runs on the host, and a deployment's
        # server is meant to be running beside the candidate's; our own check refuses taken ports.
        argv += ["--force"]
    if release.launch_sets_ports:
        argv += [
            "--http_port", str(spec.http_port),
            "--grpc_port", str(spec.grpc_port),
            "--metrics_port", str(spec.metrics_port),
        ]
    return [argv]


def _converted_dir(paths: TrtllmPaths) -> str:
    if not paths.converted_checkpoint_dir:
        raise ValueError("TrtllmPaths.converted_checkpoint_dir is required by the convert_checkpoint + trtllm-build flow")
    return paths.converted_checkpoint_dir


STEPS = {
    "clone_backend": clone_backend,
    "build_wheel": install_wheel,
    "build_engine": build_engine,
    "verify_engine": verify_engine,
    "start_server": launch_server,
}
