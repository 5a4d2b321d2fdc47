"""DeploySpec is the edge: every bad param is refused here, by name, before any work."""

import pytest

from llm_deploy.spec import BUILTIN_MODEL_ID, DeploySpec, SpecError


def spec(**params) -> DeploySpec:
    return DeploySpec.from_params({"engines_root": "/vol", **params})


def test_defaults_describe_the_embedded_cpu_run():
    s = spec()
    assert (s.model_source, s.model_id, s.backend, s.dtype, s.world_size) == (
        "builtin", BUILTIN_MODEL_ID, "torch", "float32", 1)
    assert s.server_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("params", "named", "allowed"),
    [
        ({"dtype": "fp8"}, "dtype", "float32, float16, bfloat16"),
        ({"world_size": 0}, "world_size", "integers 1..64"),
        ({"max_input_len": 0}, "max_input_len", "integers 1.."),
        ({"max_output_len": -5}, "max_output_len", "integers 1.."),
        ({"backend": "vllm"}, "backend", "torch, trtllm"),
        ({"trtllm_release": "0.0.1"}, "trtllm_release", "0.5.0"),
        ({"model_source": "huggingface", "model_id": "meta-llama/x; rm -rf /"}, "model_id", "pattern"),
        ({"model_source": "huggingface", "model_id": "$(reboot)/x"}, "model_id", "pattern"),
        ({"model_revision": "main\nrm"}, "model_revision", "pattern"),
        ({"model_revision": "v1/../../etc"}, "model_revision", "'..'"),
        ({"engines_root": "relative/dir"}, "engines_root", "absolute"),
        ({"engines_root": "/vol/../etc"}, "engines_root", "'..'"),
        ({"server_host": "0.0.0.0;id"}, "server_host", "pattern"),
        ({"hf_allow_patterns": ["../*"]}, "hf_allow_patterns", "plain file glob"),
        ({"benchmark_requests": 0}, "benchmark_requests", "integers 1..100000"),
        ({"benchmark_concurrency_levels": [4, 0]}, "benchmark_concurrency_levels.1", "greater than or equal to 1"),
        ({"no_such_param": 1}, "no_such_param", "one of model_source"),
    ],
)
def test_bad_params_are_rejected_naming_the_param(params, named, allowed):
    with pytest.raises(SpecError) as err:
        spec(**params)
    assert f"- {named}:" in str(err.value)
    assert allowed in str(err.value)


@pytest.mark.parametrize("path", ["/etc", "/vol/../etc", "../outside", "/volume-sibling/model"])
def test_local_model_dir_must_lie_on_the_engines_volume(path):
    with pytest.raises(SpecError, match="outside the engines volume /vol"):
        spec(model_source="local", model_local_dir=path)


def test_local_model_dir_relative_to_the_volume():
    s = spec(model_source="local", model_local_dir="models/Llama-2-7b-hf")
    assert str(s.local_model_path()) == "/vol/models/Llama-2-7b-hf"


def test_cross_field_rules():
    with pytest.raises(SpecError, match="three different ports"):
        spec(http_port=9000, grpc_port=9000)
    with pytest.raises(SpecError, match="only provides"):
        spec(model_id="meta-llama/Llama-2-7b-hf")
    with pytest.raises(SpecError, match="benchmark_max_tokens must not exceed max_output_len"):
        spec(max_output_len=16, benchmark_max_tokens=32)
    with pytest.raises(SpecError, match="model_local_dir is required"):
        spec(model_source="local")


def test_engine_hash_covers_what_the_engine_depends_on_and_nothing_else():
    base = spec()
    assert spec(dtype="bfloat16").engine_hash != base.engine_hash
    assert spec(max_batch_size=16).engine_hash != base.engine_hash
    # Serving and benchmark settings do not change the engine's bytes.
    assert spec(http_port=8100, grpc_port=8101, metrics_port=8102).engine_hash == base.engine_hash
    assert spec(benchmark_requests=99).engine_hash == base.engine_hash
    assert len(base.engine_hash) == 16


def test_spec_is_immutable():
    with pytest.raises(Exception):
        spec().dtype = "float16"


def test_runner_params():
    assert spec().runner == "local"
    with pytest.raises(SpecError, match="gpu_device_ids lists 2 GPUs but world_size is 1"):
        spec(gpu_device_ids="0,1")
    assert spec(gpu_device_ids="2,3", world_size=2, backend="trtllm").gpu_device_ids == "2,3"
    with pytest.raises(SpecError, match="- gpu_device_ids:"):
        spec(gpu_device_ids="0;1")
    with pytest.raises(SpecError, match="- docker_image:"):
        spec(docker_image="nvcr.io/x:1 --privileged")
    with pytest.raises(SpecError, match="outside the engines volume"):
        spec(backend_repo_dir="/opt/tensorrtllm_backend")
    with pytest.raises(SpecError, match="- runner: .*'local', 'docker' or 'kubernetes'"):
        spec(runner="slurm")


def test_the_kubernetes_runner_leaves_picking_gpus_to_the_device_plugin():
    assert spec(runner="kubernetes", backend="trtllm", world_size=2).runner == "kubernetes"
    with pytest.raises(SpecError, match="with runner 'kubernetes' the device plugin picks world_size GPUs"):
        spec(runner="kubernetes", backend="trtllm", world_size=2, gpu_device_ids="0,1")


def test_the_tutorials_decoupled_mode_false_is_benchmarked_without_streaming():
    assert spec(decoupled_mode=False, benchmark_targets=["http_generate"]).decoupled_mode is False
    with pytest.raises(SpecError, match=r"benchmark_targets \['grpc_ensemble'\] stream tokens, which needs "
                                        r"decoupled_mode=true; .*\['http_generate'\]"):
        spec(decoupled_mode=False)


def test_the_llmapi_flow_is_trtllms_and_takes_text_targets_only():
    llmapi = spec(backend="trtllm", trtllm_release="1.2.1", triton_flow="llmapi")
    assert llmapi.benchmark_targets == ["grpc_ensemble"]  # the default target streams text to it
    with pytest.raises(SpecError, match="only backend 'trtllm' has; use triton_flow 'engine' with backend 'torch'"):
        spec(triton_flow="llmapi")
    with pytest.raises(SpecError, match="'grpc_tensorrt_llm' sends token ids .* the llmapi model takes text"):
        spec(backend="trtllm", triton_flow="llmapi", benchmark_targets=["grpc_tensorrt_llm"])
    # A different flow serves from a different place: its runs do not mix with the engine flow's.
    assert llmapi.engine_hash != spec(backend="trtllm", trtllm_release="1.2.1").engine_hash
    assert "triton_flow" not in spec(backend="trtllm").engine_inputs()  # engine-flow hashes unchanged


def test_the_deployments_ports_must_not_collide_with_the_qualification_servers():
    with pytest.raises(SpecError, match="deployment's ports .* must differ"):
        spec(deployment_http_port=8000)
    assert spec(deployment_http_port=8000, promote=False).deployment_http_port == 8000  # nothing to collide with


def test_a_deployment_name_that_is_not_a_directory_name_is_refused():
    with pytest.raises(SpecError, match="deployment_name"):
        spec(deployment_name="../../etc")
