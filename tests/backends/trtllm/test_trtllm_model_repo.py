"""Upstream's inflight_batcher_llm templates (a fixture copy per release), filled from a spec."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_deploy.backends.trtllm.model_repo import (
    copy_template_repo,
    fill_repository,
    fill_text,
    fill_values,
    render_upstream_repository,
    template_dir,
)
from llm_deploy.backends.trtllm.releases import RELEASES, TUNING_PARAMS
from llm_deploy.model_config import ModelRepoError, parse_model_config
from llm_deploy.spec import DeploySpec
from tests.backends.trtllm.standins import fixture_templates

TEMPLATES = {release: fixture_templates(release) for release in RELEASES}


def render(release: str, out: Path, **spec_params) -> list[Path]:
    spec = DeploySpec(backend="trtllm", trtllm_release=release, **spec_params)
    return render_upstream_repository(spec, source=TEMPLATES[release], out_dir=out,
                                      engine_dir="/engines/1-gpu/", tokenizer_dir="/Llama-2-7b-hf/")


@pytest.mark.parametrize("release", TEMPLATES)
def test_every_placeholder_is_filled_and_every_config_parses(release, tmp_path):
    configs = render(release, tmp_path / "repo")
    assert {path.parent.name for path in configs} >= {"preprocessing", "tensorrt_llm", "postprocessing", "ensemble"}
    for path in configs:
        assert "${" not in path.read_text(), path
        assert parse_model_config(path).name == path.parent.name


@pytest.mark.parametrize("release", TEMPLATES)
def test_tensorrt_llm_model_is_the_in_flight_batcher_on_our_engine(release, tmp_path):
    render(release, tmp_path / "repo", max_batch_size=16, batch_scheduler_policy="guaranteed_no_evict")
    config = parse_model_config(tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt")
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["gpt_model_type"] == "inflight_fused_batching"
    assert parameters["gpt_model_path"] == "/engines/1-gpu/"
    assert parameters["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert config.model_transaction_policy.decoupled is True
    assert config.backend == "tensorrtllm"
    if release != "0.5.0":  # 0.5.0 hard-codes max_batch_size 128 and has no dynamic batcher block
        assert config.max_batch_size == 16
        assert parameters["encoder_model_path"] == ""  # decoder-only: left unset, as upstream leaves it


@pytest.mark.parametrize("release", TEMPLATES)
def test_tokenizer_dir_reaches_pre_and_postprocessing(release, tmp_path):
    render(release, tmp_path / "repo")
    for model in ("preprocessing", "postprocessing"):
        config = parse_model_config(tmp_path / "repo" / model / "config.pbtxt")
        assert config.parameters["tokenizer_dir"].string_value == "/Llama-2-7b-hf/"


def test_0_5_0_gets_what_the_tutorials_sed_lines_put_there(tmp_path):
    render("0.5.0", tmp_path / "repo")
    pre = parse_model_config(tmp_path / "repo" / "preprocessing" / "config.pbtxt")
    assert pre.parameters["tokenizer_type"].string_value == "auto"
    # The tutorial serves decoupled=false with its sed line; we stream, so decoupled=true.
    render("0.5.0", tmp_path / "other")
    assert "decoupled: true" in (tmp_path / "other" / "tensorrt_llm" / "config.pbtxt").read_text()


def test_an_unfilled_placeholder_names_itself_and_its_file(tmp_path):
    copy_template_repo(TEMPLATES["0.5.0"], tmp_path / "repo")
    values = fill_values(DeploySpec(backend="trtllm"), engine_dir="/e", tokenizer_dir="/t")
    del values["engine_dir"]
    with pytest.raises(ModelRepoError, match=re.escape("tensorrt_llm/config.pbtxt: no value for placeholder(s) ${engine_dir}")):
        fill_repository(tmp_path / "repo", values)


def test_a_placeholder_upstream_adds_later_fails_until_we_give_it_a_value():
    with pytest.raises(ModelRepoError, match=re.escape("${new_knob}")):
        fill_text('key: "${new_knob}" other: "${engine_dir}"', {"engine_dir": "/e"}, where="x/config.pbtxt")


def test_values_are_escaped_for_protobuf_strings_and_other_dollars_stay():
    text = fill_text('string_value: "${tokenizer_dir}" # costs $5', {"tokenizer_dir": 'a "b"\\c'}, where="f")
    assert text == 'string_value: "a \\"b\\"\\\\c" # costs $5'
    with pytest.raises(ModelRepoError, match="control characters"):
        fill_text('"${tokenizer_dir}"', {"tokenizer_dir": "a\nb"}, where="f")


def test_copy_takes_the_clones_all_models_inflight_batcher_llm(tmp_path):
    clone = tmp_path / "tensorrtllm_backend"
    row = RELEASES["0.19.0"]
    copy_template_repo(TEMPLATES["0.19.0"], template_dir(clone, row))
    (template_dir(clone, row) / "tensorrt_llm" / "1").mkdir()
    out = copy_template_repo(template_dir(clone, row), tmp_path / "repo")
    assert (out / "tensorrt_llm" / "1").is_dir() and (out / "tensorrt_llm_bls" / "config.pbtxt").is_file()
    with pytest.raises(ModelRepoError, match="not upstream's inflight_batcher_llm"):
        copy_template_repo(tmp_path / "nothing", tmp_path / "other")


def test_fill_values_cover_every_placeholder_of_every_release():
    names = {name for directory in TEMPLATES.values() for path in directory.glob("*/config.pbtxt")
             for name in re.findall(r"\$\{(\w+)\}", path.read_text())}
    values = fill_values(DeploySpec(backend="trtllm"), engine_dir="/e", tokenizer_dir="/t")
    assert names <= set(values)


@pytest.mark.parametrize("release", TEMPLATES)
def test_the_release_table_knows_which_tutorial_knobs_each_releases_templates_take(release):
    text = (TEMPLATES[release] / "tensorrt_llm" / "config.pbtxt").read_text()
    assert {param for param in TUNING_PARAMS if "${" + param + "}" in text} == RELEASES[release].tuning_params


def test_the_tutorials_own_configuration_is_filled_as_its_fill_template_lines_do(tmp_path):
    render("0.19.0", tmp_path / "repo", decoupled_mode=False, exclude_input_in_output=False,
           benchmark_targets=["http_generate"], kv_cache_free_gpu_mem_fraction=0.5,
           max_tokens_in_paged_kv_cache=2560, enable_kv_cache_reuse=True, enable_chunked_context=True)
    config = parse_model_config(tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt")
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert config.model_transaction_policy.decoupled is False
    assert parameters["exclude_input_in_output"] == "false"
    assert parameters["kv_cache_free_gpu_mem_fraction"] == "0.5"
    assert parameters["max_tokens_in_paged_kv_cache"] == "2560"
    assert parameters["enable_kv_cache_reuse"] == "true" and parameters["enable_chunked_context"] == "true"


def test_kv_cache_sizing_left_unset_is_the_runtimes_choice(tmp_path):
    render("1.2.1", tmp_path / "repo", promote=False)
    parameters = parse_model_config(tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").parameters
    assert parameters["kv_cache_free_gpu_mem_fraction"].string_value == ""
    assert parameters["max_tokens_in_paged_kv_cache"].string_value == ""


def test_a_promoting_run_leaves_the_kv_cache_room_for_a_second_version_on_the_gpu(tmp_path):
    # Each version takes its share of the memory left after its weights: at the runtime's 0.9 the
    # candidate beside the live version could not load its weights.
    render("1.2.1", tmp_path / "repo")
    parameters = parse_model_config(tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").parameters
    assert parameters["kv_cache_free_gpu_mem_fraction"].string_value == "0.4"
    with pytest.raises(ValueError, match=r"kv_cache_free_gpu_mem_fraction=0.9 with promote: .* set it to 0.5 or less"):
        DeploySpec(backend="trtllm", trtllm_release="1.2.1", kv_cache_free_gpu_mem_fraction=0.9)
