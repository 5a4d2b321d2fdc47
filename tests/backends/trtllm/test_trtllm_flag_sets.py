"""Every argv we generate, for every release x world size x dtype, against the real scripts' flags."""

from __future__ import annotations

import pytest

from llm_deploy.backends.trtllm import commands
from llm_deploy.backends.trtllm.layout import TRTLLM_SUBMODULE, TrtllmPaths
from llm_deploy.backends.trtllm.releases import (
    BUILD_WHEEL,
    LAUNCH_SERVER,
    LEGACY_BUILD,
    RELEASES,
    RUN,
    TRTLLM_BUILD,
)
from llm_deploy.spec import DeploySpec
from tests.backends.trtllm.flagcheck import check_commands, load_flag_set, problems, script_of

PATHS = TrtllmPaths(
    backend_dir="/engines/src/tensorrtllm_backend",
    hf_checkpoint_dir="/engines/models/meta-llama--Llama-2-7b-hf/main",
    engine_dir="/engines/engines/trtllm/llama/abc123",
    model_repo_dir="/engines/model_repos/abc123/inflight_batcher_llm",
    converted_checkpoint_dir="/engines/engines/trtllm/llama/abc123.ckpt",
)
CASES = [
    (release, world_size, dtype)
    for release, row in RELEASES.items()
    for world_size in (1, 2, 4)
    for dtype in row.dtypes
]


def trtllm_spec(release: str, world_size: int = 1, dtype: str = "float16", **extra) -> DeploySpec:
    return DeploySpec(backend="trtllm", trtllm_release=release, world_size=world_size, dtype=dtype, **extra)


def all_commands(spec: DeploySpec) -> list[list[str]]:
    return [argv for step in commands.STEPS.values() for argv in step(spec, PATHS)]


@pytest.mark.parametrize(("release", "world_size", "dtype"), CASES)
def test_every_generated_argv_is_accepted_by_the_release_scripts(release, world_size, dtype):
    spec = trtllm_spec(release, world_size, dtype, max_batch_size=64, max_input_len=1024, max_output_len=512)
    assert check_commands(all_commands(spec), release) == []


@pytest.mark.parametrize("release", RELEASES)
def test_every_recorded_script_is_called_by_some_command(release):
    called = {script_of(argv, RELEASES[release])[0] for argv in all_commands(trtllm_spec(release))
              if script_of(argv, RELEASES[release])}
    assert called == set(RELEASES[release].flag_sets)


@pytest.mark.parametrize("release", RELEASES)
def test_argv_are_lists_of_strings_never_shell_strings(release):
    for argv in all_commands(trtllm_spec(release, 2)):
        assert isinstance(argv, list) and argv and all(isinstance(arg, str) for arg in argv), argv
        assert not any(arg in ("&&", "|", ";", ">") for arg in argv), argv


@pytest.mark.parametrize("release", RELEASES)
def test_flag_sets_name_the_repository_tag_and_commit_of_the_release(release):
    row = RELEASES[release]
    for script in row.flag_sets:
        record = load_flag_set(release, script).record
        path = row.scripts.get(script, "")
        in_backend_repo = script == LAUNCH_SERVER and not path.startswith(f"{TRTLLM_SUBMODULE}/")
        if in_backend_repo:
            expected = ("triton-inference-server/tensorrtllm_backend", row.backend_ref, row.backend_commit)
        else:  # from 0.20 the launch script is TensorRT-LLM's own, in the submodule
            expected = ("NVIDIA/TensorRT-LLM", row.trtllm_tag, row.trtllm_commit)
            path = path.removeprefix(f"{TRTLLM_SUBMODULE}/")
        assert (record["repo"], record["tag"], record["commit"]) == expected
        assert record["release"] == release and record["script"] == script
        if path:
            assert record["path"] == path
        assert record["flags"], script
        assert record["exact"] or record["source"], "an inexact record must say where it came from"


def test_legacy_build_defaults_in_the_table_are_build_py_s_own():
    row = RELEASES["0.5.0"]
    recorded = load_flag_set("0.5.0", LEGACY_BUILD).by_name
    assert {flag: recorded[flag]["default"] for flag in row.legacy_build_defaults} == row.legacy_build_defaults


# --- the checker itself fails where the real script would ------------------------------------------


def test_a_flag_the_release_does_not_accept_fails():
    build_py = load_flag_set("0.5.0", LEGACY_BUILD)
    assert problems(["--model_dir", "/m", "--checkpoint_dir", "/c"], build_py) == [
        "--checkpoint_dir: not a flag of build.py"]
    # ...and the legacy flags are gone from the current flow's trtllm-build.
    trtllm_build = load_flag_set("0.19.0", TRTLLM_BUILD)
    assert problems(["--use_inflight_batching"], trtllm_build) == ["--use_inflight_batching: not a flag of trtllm-build"]


def test_a_missing_required_flag_fails():
    run_py = load_flag_set("0.5.0", RUN)
    assert problems(["--engine_dir", "/e", "--tokenizer_dir", "/t"], run_py) == [
        "--max_output_len: required by run.py, missing"]


def test_a_value_given_to_a_store_true_flag_fails():
    build_py = load_flag_set("0.5.0", LEGACY_BUILD)
    assert problems(["--use_inflight_batching=true"], build_py) == [
        "--use_inflight_batching: takes no value (store_true), got 'true'"]
    assert problems(["--paged_kv_cache", "enable"], build_py) == [
        "stray positional 'enable' (the script takes no positional arguments here)"]


def test_a_choices_violation_fails():
    build_py = load_flag_set("0.5.0", LEGACY_BUILD)
    assert problems(["--dtype", "float8"], build_py) == [
        "--dtype: 'float8' is not one of ['float32', 'bfloat16', 'float16']"]
    trtllm_build = load_flag_set("0.19.0", TRTLLM_BUILD)
    assert problems(["--remove_input_padding", "yes"], trtllm_build) == [
        "--remove_input_padding: 'yes' is not one of ['enable', 'disable']"]


def test_a_prefix_or_repeated_flag_fails_although_argparse_might_take_it():
    launch = load_flag_set("0.5.0", LAUNCH_SERVER)
    assert problems(["--world", "2"], launch) == ["--world: not a flag of launch_triton_server.py"]
    assert problems(["--world_size", "1", "--world_size", "2"], launch) == ["--world_size: given twice"]


def test_a_generated_command_with_one_bad_flag_fails():
    spec = trtllm_spec("0.5.0")
    (argv,) = commands.build_engine(spec, PATHS)
    assert check_commands([argv + ["--max_seq_len", "10"]], "0.5.0") == ["build.py: --max_seq_len: not a flag of build.py"]


# --- what the recording cannot pin down --------------------------------------------------------------


def test_kv_cache_type_value_is_one_trtllm_build_documents():
    # choices come from enum_type(KVCacheType) at run time (see the record's "unresolved"); the
    # script's help text names continuous, paged and disabled.
    record = load_flag_set("0.19.0", TRTLLM_BUILD).record
    assert any(note.startswith("--kv_cache_type:") for note in record["unresolved"])
    argv = commands.trtllm_build(trtllm_spec("0.19.0"), PATHS)
    assert argv[argv.index("--kv_cache_type") + 1] in ("continuous", "paged", "disabled")


def test_the_tutorials_wheel_build_uses_build_wheel_py_flags():
    (build,) = [argv for argv in commands.install_wheel(trtllm_spec("0.5.0"), PATHS)
                if script_of(argv, RELEASES["0.5.0"]) and script_of(argv, RELEASES["0.5.0"])[0] == BUILD_WHEEL]
    assert build[2:] == ["--trt_root", "/usr/local/tensorrt",
                         "--dist_dir", "/engines/src/tensorrtllm_backend/tensorrt_llm/build"]


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("release", [name for name, row in RELEASES.items() if "llmapi" in row.flows])
def test_the_llmapi_flows_launch_is_accepted_by_the_release_script(release, world_size):
    spec = trtllm_spec(release, world_size, triton_flow="llmapi")
    assert commands.build_engine(spec, PATHS) == []  # no engine in this flow
    assert check_commands(all_commands(spec), release) == []
    (launch,) = commands.launch_server(spec, PATHS)
    # As upstream's llmapi tests: no MPI for one GPU, the LLM API's launcher for more.
    expected = ["--no-mpi"] if world_size == 1 else ["--trtllm_llmapi_launch", "--oversubscribe"]
    assert launch[6:6 + len(expected)] == expected
