"""Upstream's llmapi repository (a fixture copy per 1.x release), set from a spec, and the LLM()
arguments it carries held against each release's recorded argument set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm_deploy.backends.trtllm.llm_args import llm_args
from llm_deploy.backends.trtllm.llmapi_repo import render_llmapi_repository, with_transaction_policy
from llm_deploy.backends.trtllm.releases import RELEASES
from llm_deploy.model_config import ModelRepoError, parse_model_config
from llm_deploy.spec import DeploySpec
from tests.backends.trtllm.standins import FLAG_SETS, fixture_templates

LLMAPI_RELEASES = [name for name, row in RELEASES.items() if "llmapi" in row.flows]
CHECKPOINT = "/engines/models/meta-llama--Llama-2-7b-hf/main"


def llmapi_spec(release: str, **params) -> DeploySpec:
    return DeploySpec(backend="trtllm", trtllm_release=release, triton_flow="llmapi", dtype="bfloat16", **params)


def render(release: str, out: Path, **params) -> Path:
    return render_llmapi_repository(llmapi_spec(release, **params), source=fixture_templates(release).with_name("llmapi"),
                                    out_dir=out, checkpoint_dir=CHECKPOINT)


def recorded_arguments(release: str) -> dict:
    return json.loads((FLAG_SETS / release / "LLM.json").read_text())


@pytest.mark.parametrize("release", LLMAPI_RELEASES)
def test_model_yaml_serves_the_local_checkpoint_and_config_pbtxt_is_decoupled_as_asked(release, tmp_path):
    config_path = render(release, tmp_path / "repo")
    model_yaml = yaml.safe_load((tmp_path / "repo/tensorrt_llm/1/model.yaml").read_text())
    assert model_yaml["model"] == CHECKPOINT  # never a Hub id: the worker may be offline
    assert (model_yaml["backend"], model_yaml["dtype"]) == ("pytorch", "bfloat16")
    assert (model_yaml["tensor_parallel_size"], model_yaml["pipeline_parallel_size"]) == (1, 1)
    assert model_yaml["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    config = parse_model_config(config_path)
    # launch_triton_server.py disables auto-complete: model.yaml alone would not make it decoupled.
    assert config.backend == "python" and config.model_transaction_policy.decoupled is True


@pytest.mark.parametrize("release", LLMAPI_RELEASES)
def test_the_tutorials_non_decoupled_mode_reaches_both_files(release, tmp_path):
    config_path = render(release, tmp_path / "repo", decoupled_mode=False, benchmark_targets=["http_generate"])
    assert parse_model_config(config_path).model_transaction_policy.decoupled is False
    assert yaml.safe_load((tmp_path / "repo/tensorrt_llm/1/model.yaml").read_text())["triton_config"]["decoupled"] is False


@pytest.mark.parametrize("release", LLMAPI_RELEASES)
@pytest.mark.parametrize("params", [
    {},
    {"world_size": 4},
    {"kv_cache_free_gpu_mem_fraction": 0.8, "max_tokens_in_paged_kv_cache": 4096, "enable_kv_cache_reuse": True,
     "enable_chunked_context": True, "batch_scheduler_policy": "guaranteed_no_evict", "promote": False},
])
def test_every_llm_argument_we_write_is_one_the_release_takes(release, params):
    record = recorded_arguments(release)
    args = llm_args(llmapi_spec(release, **params), CHECKPOINT)
    assert set(args) <= set(record["arguments"]), set(args) - set(record["arguments"])
    for name, keys in record["nested"].items():
        assert set(args.get(name) or {}) <= set(keys), name
    assert args["dtype"] in record["choices"]["dtype"]
    assert args["scheduler_config"]["capacity_scheduler_policy"] in record["choices"]["scheduler_config.capacity_scheduler_policy"]
    assert args["tensor_parallel_size"] * args["pipeline_parallel_size"] == llmapi_spec(release, **params).world_size


def test_the_tutorial_knobs_map_onto_the_llm_apis_names():
    args = llm_args(llmapi_spec("1.2.1", kv_cache_free_gpu_mem_fraction=0.5, max_tokens_in_paged_kv_cache=2048,
                                enable_chunked_context=True), CHECKPOINT)
    assert args["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5, "max_tokens": 2048, "enable_block_reuse": False}
    assert args["enable_chunked_prefill"] is True
    assert args["max_seq_len"] == args["max_input_len"] + llmapi_spec("1.2.1").max_output_len
    # Left at 0: the runtime's own defaults, as the engine flow leaves them, unless the run
    # promotes: then the live version and the candidate share the GPUs.
    assert llm_args(llmapi_spec("1.2.1", promote=False), CHECKPOINT)["kv_cache_config"] == {"enable_block_reuse": False}
    assert llm_args(llmapi_spec("1.2.1"), CHECKPOINT)["kv_cache_config"]["free_gpu_memory_fraction"] == 0.4


def test_a_template_without_triton_config_is_not_upstreams_model_yaml(tmp_path):
    source = tmp_path / "llmapi"
    (source / "tensorrt_llm/1").mkdir(parents=True)
    (source / "tensorrt_llm/config.pbtxt").write_text('name: "tensorrt_llm"\nbackend: "python"\n')
    (source / "tensorrt_llm/1/model.yaml").write_text("model: x\n")
    with pytest.raises(ModelRepoError, match="has no triton_config"):
        render_llmapi_repository(llmapi_spec("1.2.1"), source=source, out_dir=tmp_path / "out", checkpoint_dir=CHECKPOINT)


def test_a_transaction_policy_already_in_the_template_is_replaced_not_doubled():
    text = 'name: "tensorrt_llm"\nmodel_transaction_policy {\n  decoupled: false\n}\nbackend: "python"\n'
    rewritten = with_transaction_policy(text, decoupled=True)
    assert rewritten.count("model_transaction_policy") == 1 and "decoupled: true" in rewritten
