"""Rendering the torch twin's inflight_batcher_llm repository: upstream's interface, parsed as Triton's ModelConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

import llm_deploy
from llm_deploy.backends.torch import model_repo
from llm_deploy.backends.torch.model_repo import render_repository, render_template, template_context
from llm_deploy.model_config import ModelRepoError, parse_model_config
from llm_deploy.spec import DeploySpec

# tensorrtllm_backend v0.5.0 (47b609b6), all_models/inflight_batcher_llm/*/config.pbtxt:
# (name, data type, dims, optional) of every tensor the clients and the ensemble rely on.
UPSTREAM_ENSEMBLE_INPUTS = [
    ("text_input", "TYPE_STRING", [-1], False),
    ("max_tokens", "TYPE_UINT32", [-1], False),
    ("bad_words", "TYPE_STRING", [-1], False),
    ("stop_words", "TYPE_STRING", [-1], False),
    ("end_id", "TYPE_UINT32", [1], True),
    ("pad_id", "TYPE_UINT32", [1], True),
    ("top_k", "TYPE_UINT32", [1], True),
    ("top_p", "TYPE_FP32", [1], True),
    ("temperature", "TYPE_FP32", [1], True),
    ("length_penalty", "TYPE_FP32", [1], True),
    ("repetition_penalty", "TYPE_FP32", [1], True),
    ("min_length", "TYPE_UINT32", [1], True),
    ("presence_penalty", "TYPE_FP32", [1], True),
    ("random_seed", "TYPE_UINT64", [1], True),
    ("beam_width", "TYPE_UINT32", [1], True),
    ("stream", "TYPE_BOOL", [1], True),
]
UPSTREAM_TRTLLM_INPUTS = [
    ("input_ids", "TYPE_INT32", [-1], False),
    ("input_lengths", "TYPE_INT32", [1], False),
    ("request_output_len", "TYPE_UINT32", [1], False),
    ("end_id", "TYPE_UINT32", [1], True),
    ("pad_id", "TYPE_UINT32", [1], True),
    ("beam_width", "TYPE_UINT32", [1], True),
    ("temperature", "TYPE_FP32", [1], True),
    ("runtime_top_k", "TYPE_UINT32", [1], True),
    ("runtime_top_p", "TYPE_FP32", [1], True),
    ("len_penalty", "TYPE_FP32", [1], True),
    ("repetition_penalty", "TYPE_FP32", [1], True),
    ("min_length", "TYPE_UINT32", [1], True),
    ("presence_penalty", "TYPE_FP32", [1], True),
    ("random_seed", "TYPE_UINT64", [1], True),
    ("stop", "TYPE_BOOL", [1], True),
    ("streaming", "TYPE_BOOL", [1], True),
]
UPSTREAM_PREPROCESSING_OUTPUTS = [
    ("INPUT_ID", "TYPE_INT32", [-1]),
    ("REQUEST_INPUT_LEN", "TYPE_INT32", [1]),
    ("BAD_WORDS_IDS", "TYPE_INT32", [2, -1]),
    ("STOP_WORDS_IDS", "TYPE_INT32", [2, -1]),
    ("REQUEST_OUTPUT_LEN", "TYPE_UINT32", [-1]),
]
UPSTREAM_TRTLLM_PARAMETERS = {
    "max_beam_width", "FORCE_CPU_ONLY_INPUT_TENSORS", "gpt_model_type", "gpt_model_path",
    "batch_scheduler_policy", "max_num_sequences", "enable_trt_overlap",
}


def _spec(tmp_path: Path, **overrides) -> DeploySpec:
    values = {"engines_root": str(tmp_path), "max_batch_size": 6, "max_queue_delay_microseconds": 250,
              "batch_scheduler_policy": "guaranteed_no_evict"}
    return DeploySpec(**{**values, **overrides})


def _render(tmp_path: Path, triton_backend: str = "python", **kwargs) -> Path:
    out = tmp_path / f"repo-{triton_backend}"
    render_repository(_spec(tmp_path), triton_backend=triton_backend, engine_dir=Path("/engines/e1"),
                      tokenizer_dir=Path("/models/m1"), out_dir=out, **kwargs)
    return out


def _dtype_name(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(value)


def _tensors(tensors) -> list[tuple]:
    # Outputs have no "optional" field: they read as required.
    return [(t.name, _dtype_name(t.data_type), list(t.dims), getattr(t, "optional", False)) for t in tensors]


def _params(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def test_renders_four_models_with_model_py_for_the_torch_backend(tmp_path):
    out = tmp_path / "repo"
    configs = render_repository(_spec(tmp_path), engine_dir=Path("/e"), tokenizer_dir=Path("/t"), out_dir=out)

    assert [p.relative_to(out).as_posix() for p in configs] == [
        "preprocessing/config.pbtxt", "tensorrt_llm/config.pbtxt",
        "postprocessing/config.pbtxt", "ensemble/config.pbtxt",
    ]
    sources = Path(llm_deploy.__file__).parent / "triton_models"
    for model, source in [("preprocessing", "preprocessing.py"), ("postprocessing", "postprocessing.py"),
                          ("tensorrt_llm", "tensorrt_llm_torch.py")]:
        assert (out / model / "1" / "model.py").read_bytes() == (sources / source).read_bytes()
    # The helper modules each model.py imports lie beside it.
    for model, helper in [("preprocessing", "tokenizer_loading.py"), ("postprocessing", "tokenizer_loading.py"),
                          ("tensorrt_llm", "tensorrt_llm_tensors.py")]:
        assert (out / model / "1" / helper).read_bytes() == (sources / helper).read_bytes()
    assert (out / "ensemble" / "1").is_dir() and not any((out / "ensemble" / "1").iterdir())


def test_torch_backend_tensorrt_llm_config(tmp_path):
    config = parse_model_config(_render(tmp_path) / "tensorrt_llm" / "config.pbtxt")

    assert config.backend == "python"
    assert config.max_batch_size == 6
    assert config.model_transaction_policy.decoupled is True
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert _tensors(config.input) == UPSTREAM_TRTLLM_INPUTS
    assert [(o.name, list(o.dims)) for o in config.output] == [("output_ids", [-1, -1]), ("sequence_length", [-1])]
    params = _params(config)
    assert UPSTREAM_TRTLLM_PARAMETERS <= set(params)
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"] == "/engines/e1"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert params["max_num_sequences"] == "6"
    assert params["exclude_input_in_output"] == "false"
    assert Path(params["llm_deploy_path"], "llm_deploy", "__init__.py").is_file()
    # Unset runtime knobs are left out rather than rendered empty.
    assert "max_tokens_in_paged_kv_cache" not in params


def test_trtllm_backend_keeps_upstream_0_5_0_interface(tmp_path):
    out = _render(tmp_path, triton_backend="tensorrtllm", decoupled=False)
    config = parse_model_config(out / "tensorrt_llm" / "config.pbtxt")

    assert config.backend == "tensorrtllm"
    assert config.model_transaction_policy.decoupled is False
    assert [o.name for o in config.output] == ["output_ids"]  # 0.5.0's C++ backend produces only this
    assert not any(k.startswith("llm_deploy") for k in _params(config))
    assert (out / "tensorrt_llm" / "1").is_dir() and not any((out / "tensorrt_llm" / "1").iterdir())
    # Our pre/postprocessing serve the TensorRT-LLM image too.
    assert (out / "preprocessing" / "1" / "model.py").is_file()


def test_ensemble_matches_upstream(tmp_path):
    config = parse_model_config(_render(tmp_path) / "ensemble" / "config.pbtxt")

    assert config.platform == "ensemble"
    assert _tensors(config.input) == UPSTREAM_ENSEMBLE_INPUTS
    assert _tensors(config.output) == [("text_output", "TYPE_STRING", [-1, -1], False)]
    steps = {step.model_name: step for step in config.ensemble_scheduling.step}
    assert list(steps) == ["preprocessing", "tensorrt_llm", "postprocessing"]
    assert dict(steps["tensorrt_llm"].input_map) == {
        "input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN", "request_output_len": "_REQUEST_OUTPUT_LEN",
        "end_id": "end_id", "pad_id": "pad_id", "runtime_top_k": "top_k", "runtime_top_p": "top_p",
        "temperature": "temperature", "len_penalty": "length_penalty", "repetition_penalty": "repetition_penalty",
        "min_length": "min_length", "presence_penalty": "presence_penalty", "random_seed": "random_seed",
        "beam_width": "beam_width", "streaming": "stream",
    }
    assert dict(steps["tensorrt_llm"].output_map) == {"output_ids": "_TOKENS_BATCH"}
    assert dict(steps["postprocessing"].output_map) == {"OUTPUT": "text_output"}


def test_pre_and_postprocessing_match_upstream(tmp_path):
    out = _render(tmp_path)
    pre = parse_model_config(out / "preprocessing" / "config.pbtxt")
    post = parse_model_config(out / "postprocessing" / "config.pbtxt")

    assert [t[:3] for t in _tensors(pre.input)] == [
        ("QUERY", "TYPE_STRING", [-1]), ("BAD_WORDS_DICT", "TYPE_STRING", [-1]),
        ("STOP_WORDS_DICT", "TYPE_STRING", [-1]), ("REQUEST_OUTPUT_LEN", "TYPE_UINT32", [-1]),
    ]
    assert [t[:3] for t in _tensors(pre.output)] == UPSTREAM_PREPROCESSING_OUTPUTS
    assert _tensors(post.input)[0] == ("TOKENS_BATCH", "TYPE_INT32", [-1, -1], False)
    assert _tensors(post.output) == [("OUTPUT", "TYPE_STRING", [-1, -1], False)]
    for config in (pre, post):
        assert config.backend == "python"
        assert _params(config) == {"tokenizer_dir": "/models/m1", "tokenizer_type": "auto"}


def test_paths_with_quotes_and_backslashes_survive(tmp_path):
    odd = Path('/engines/we"ird\\dir')
    out = tmp_path / "repo"
    render_repository(_spec(tmp_path), engine_dir=odd, tokenizer_dir=odd, out_dir=out)

    assert _params(parse_model_config(out / "tensorrt_llm" / "config.pbtxt"))["gpt_model_path"] == str(odd)
    assert _params(parse_model_config(out / "preprocessing" / "config.pbtxt"))["tokenizer_dir"] == str(odd)


def test_missing_variable_names_the_variable_and_template(tmp_path):
    context = template_context(_spec(tmp_path), engine_dir=Path("/e"), tokenizer_dir=Path("/t"))
    del context["batch_scheduler_policy"]

    with pytest.raises(ModelRepoError) as excinfo:
        render_template("tensorrt_llm", context)

    assert "'batch_scheduler_policy' is undefined" in str(excinfo.value)
    assert "tensorrt_llm/config.pbtxt.j2" in str(excinfo.value)


@pytest.mark.parametrize("name", ["tokenizer_dir", "triton_max_batch_size", "decoupled_mode"])
def test_every_model_refuses_missing_values(tmp_path, name):
    context = template_context(_spec(tmp_path), engine_dir=Path("/e"), tokenizer_dir=Path("/t"))
    del context[name]
    failures = []
    for model in model_repo.MODELS:
        try:
            render_template(model, context)
        except ModelRepoError as exc:
            failures.append(str(exc))
    assert failures and all(f"'{name}' is undefined" in failure for failure in failures)


def test_fingerprint_is_stable_and_covers_templates(tmp_path, monkeypatch):
    first = model_repo.templates_fingerprint()
    assert first == model_repo.templates_fingerprint() and len(first) == 16

    copy = tmp_path / "templates" / model_repo.TEMPLATE_SET
    for template in model_repo.templates_dir().glob("*/config.pbtxt.j2"):
        target = copy / template.parent.name / template.name
        target.parent.mkdir(parents=True)
        target.write_text(template.read_text())
    (copy / "ensemble" / "config.pbtxt.j2").write_text("# changed\n")
    monkeypatch.setenv("LLM_DEPLOY_TEMPLATES_DIR", str(tmp_path / "templates"))

    assert model_repo.templates_fingerprint() != first
