"""Bad input is refused before any container starts, naming the param and what is allowed."""

from __future__ import annotations

import json
import re

import pytest

from llm_deploy.backends import trtllm
from llm_deploy.backends.trtllm import commands
from llm_deploy.backends.trtllm.layout import TrtllmPaths
from llm_deploy.backends.trtllm.releases import RELEASES, SUPPORTED
from llm_deploy.backends.trtllm.validation import (
    check_engine_world_size,
    require_backend_clone,
    validate_spec,
)
from llm_deploy.errors import BackendNotAvailable, NonRetryableError
from llm_deploy.spec import SUPPORTED_TRTLLM_RELEASES, DeploySpec, SpecError
from tests.backends.trtllm.flagcheck import DATA

PATHS = TrtllmPaths("/b", "/hf", "/e", "/r", converted_checkpoint_dir="/c")


def test_spec_offers_exactly_the_release_table():
    assert SUPPORTED_TRTLLM_RELEASES == SUPPORTED == tuple(RELEASES) == (
        "0.5.0", "0.19.0", "0.20.0", "0.21.0", "1.0.0", "1.1.0", "1.2.0", "1.2.1")
    with pytest.raises(SpecError, match="trtllm_release.*allowed: 0.5.0, 0.19.0, 0.20.0, .*, 1.2.1"):
        DeploySpec.from_params({"backend": "trtllm", "trtllm_release": "0.6.0"})


@pytest.mark.parametrize("step", sorted(commands.STEPS))
def test_a_release_not_in_the_table_is_refused_by_every_step(step):
    # A spec built elsewhere (or by an older table) can still carry an unknown release.
    spec = DeploySpec(backend="trtllm").model_copy(update={"trtllm_release": "0.6.0"})
    with pytest.raises(NonRetryableError, match=re.escape("trtllm_release='0.6.0' is not in the trtllm release table; allowed: " + ", ".join(SUPPORTED))):
        commands.STEPS[step](spec, PATHS)


def test_a_dtype_the_release_does_not_support_is_refused():
    spec = DeploySpec(backend="trtllm", trtllm_release="0.5.0").model_copy(update={"dtype": "float8"})
    with pytest.raises(NonRetryableError, match=re.escape(
            "dtype='float8' is not supported by trtllm release 0.5.0; allowed: float16, bfloat16, float32")):
        commands.build_engine(spec, PATHS)


def test_ports_the_0_5_0_launcher_cannot_set_are_refused():
    spec = DeploySpec(backend="trtllm", trtllm_release="0.5.0", http_port=8100)
    with pytest.raises(NonRetryableError, match=re.escape("http_port=8100") + ".*allowed: http_port=8000"):
        validate_spec(spec)
    assert validate_spec(DeploySpec(backend="trtllm", trtllm_release="0.19.0", http_port=8100)).name == "0.19.0"


@pytest.mark.parametrize("release", SUPPORTED)
def test_a_non_loopback_server_host_is_refused_since_no_launcher_can_guard_it(release):
    # The refusal rests on the recorded flag sets: no launcher passes tritonserver an address or
    # its restricted-API options. A release whose launcher gains one makes this test fail.
    launcher = json.loads((DATA / release / "launch_triton_server.py.json").read_text())
    names = {name for flag in launcher["flags"] for name in flag["names"]}
    assert not {name for name in names if "address" in name or "restricted" in name}, names

    spec = DeploySpec(backend="trtllm", trtllm_release=release, server_host="192.0.2.7")
    with pytest.raises(NonRetryableError, match=re.escape(
            f"server_host=192.0.2.7: the trtllm backend serves through launch_triton_server.py, which in release {release}")):
        validate_spec(spec)
    assert validate_spec(DeploySpec(backend="trtllm", trtllm_release=release, server_host="127.0.0.1")).name == release


def test_a_pipeline_size_that_does_not_divide_world_size_is_refused():
    spec = DeploySpec(backend="trtllm", world_size=4).model_copy(update={"pipeline_parallel_size": 3})
    with pytest.raises(NonRetryableError, match=re.escape("pipeline_parallel_size=3 does not divide world_size=4")):
        commands.build_engine(spec, PATHS)


@pytest.mark.parametrize("config", [
    {"builder_config": {"tensor_parallel": 2, "pipeline_parallel": 1}},  # legacy build.py engine
    {"pretrained_config": {"mapping": {"world_size": 2, "tp_size": 2, "pp_size": 1}}},  # trtllm-build engine
])
def test_a_world_size_the_engine_was_not_built_for_is_refused(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    check_engine_world_size(DeploySpec(backend="trtllm", world_size=2), tmp_path)
    with pytest.raises(NonRetryableError, match=re.escape(
            f"world_size=4: the engine in {tmp_path} was built for 2 GPUs (tensor parallel 2 x pipeline parallel 1); "
            "allowed: world_size=2")):
        check_engine_world_size(DeploySpec(backend="trtllm", world_size=4), tmp_path)


def test_an_engine_without_config_json_is_refused(tmp_path):
    with pytest.raises(NonRetryableError, match="engine_dir: cannot read the engine's"):
        check_engine_world_size(DeploySpec(backend="trtllm"), tmp_path)


def test_a_missing_backend_clone_names_the_expected_path(tmp_path):
    release = RELEASES["0.5.0"]
    clone = tmp_path / "tensorrtllm_backend-0.5.0"
    with pytest.raises(NonRetryableError, match=re.escape(f"backend_repo_dir: no complete tensorrtllm_backend v0.5.0 clone at {clone}")
                       + ".*" + re.escape(str(clone / "scripts/launch_triton_server.py"))):
        require_backend_clone(clone, release)
    for relative in ["scripts/launch_triton_server.py", "tensorrt_llm/scripts/build_wheel.py",
                     "tensorrt_llm/examples/llama/build.py", "tensorrt_llm/examples/llama/run.py"]:
        (clone / relative).parent.mkdir(parents=True, exist_ok=True)
        (clone / relative).write_text("")
    (clone / "all_models/inflight_batcher_llm").mkdir(parents=True)
    require_backend_clone(clone, release)


def test_a_clone_without_its_submodule_is_refused_unless_only_the_backend_is_needed(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts/launch_triton_server.py").write_text("")
    (tmp_path / "all_models/inflight_batcher_llm").mkdir(parents=True)
    require_backend_clone(tmp_path, RELEASES["0.19.0"], need_trtllm=False)
    with pytest.raises(NonRetryableError, match=re.escape(str(tmp_path / "tensorrt_llm/examples/llama/convert_checkpoint.py"))):
        require_backend_clone(tmp_path, RELEASES["0.19.0"])


def test_the_local_runner_refuses_a_worker_outside_the_ngc_image(monkeypatch, tmp_path):
    monkeypatch.setenv(trtllm.TRITONSERVER_ENV, str(tmp_path / "no-tritonserver"))
    with pytest.raises(BackendNotAvailable, match="build_engine: backend 'trtllm' with runner 'local' needs a worker"):
        trtllm.require_worker("build_engine")
    (tmp_path / "no-tritonserver").write_text("")
    trtllm.require_worker("build_engine")


def test_a_tutorial_knob_the_releases_templates_lack_is_refused_naming_the_releases_that_have_it():
    spec = DeploySpec(backend="trtllm", trtllm_release="0.5.0", enable_chunked_context=True)
    with pytest.raises(NonRetryableError, match=r"enable_chunked_context=True: the templates of trtllm release 0.5.0 "
                                                r"have no enable_chunked_context; .*\(0.19.0, 0.20.0, .*1.2.1\)"):
        validate_spec(spec)
    assert validate_spec(DeploySpec(backend="trtllm", trtllm_release="0.5.0", decoupled_mode=False,
                                    benchmark_targets=["http_generate"])).name == "0.5.0"
