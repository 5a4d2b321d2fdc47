"""build_engine: weights in the serving dtype + engine_config.json, published once per hash."""

import json
from pathlib import Path

import pytest
from llm_deploy import volume
from llm_deploy.backends.torch.build_engine import ENGINE_CONFIG
from llm_deploy.errors import BackendNotAvailable, NonRetryableError
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.build_engine import build_engine
from tests.support.engines import engine_dir_here


def make_spec(root, **params) -> DeploySpec:
    return DeploySpec.from_params({"engines_root": str(root), "max_input_len": 64, "max_output_len": 32,
                                 "benchmark_max_tokens": 16, **params})


def checkpoint_record(path) -> dict:
    return {"checkpoint_dir": str(path), "manifest_sha256": "test"}


def test_builds_an_engine_in_the_serving_dtype(tmp_path, tiny_llama_checkpoint):
    import torch
    from safetensors.torch import load_file

    spec = make_spec(tmp_path, dtype="bfloat16", max_batch_size=4)
    record = build_engine(spec, checkpoint_record(tiny_llama_checkpoint))

    engine = engine_dir_here(spec, "test")
    assert record.engine_dir == str(engine) and not record.reused
    assert volume.is_published(engine)
    weights = load_file(engine / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    config = json.loads((engine / ENGINE_CONFIG).read_text())
    assert config["dtype"] == "bfloat16"
    assert (config["max_batch_size"], config["max_input_len"], config["max_output_len"]) == (4, 64, 32)
    assert config["world_size"] == 1 and config["spec_hash"] == spec.engine_hash
    assert json.loads((engine / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # The twin records its target as production does: torch, no image, the CPU.
    target = config["build_target"]
    assert target["runtime"].startswith("torch ") and (target["image"], target["gpu"]) == ("", "cpu")


def test_same_spec_reuses_the_engine_and_other_limits_build_anew(tmp_path, tiny_llama_checkpoint):
    spec = make_spec(tmp_path)
    first = build_engine(spec, checkpoint_record(tiny_llama_checkpoint))
    again = build_engine(spec, checkpoint_record(tiny_llama_checkpoint))
    assert again.reused and again.engine_dir == first.engine_dir
    other = build_engine(make_spec(tmp_path, max_batch_size=2), checkpoint_record(tiny_llama_checkpoint))
    assert other.engine_dir != first.engine_dir and not other.reused


def test_a_corrupt_engine_is_rebuilt_not_reused(tmp_path, tiny_llama_checkpoint):
    spec = make_spec(tmp_path)
    first = build_engine(spec, checkpoint_record(tiny_llama_checkpoint))
    (engine_dir_here(spec, "test") / "model.safetensors").write_bytes(b"truncated")
    rebuilt = build_engine(spec, checkpoint_record(tiny_llama_checkpoint))
    assert not rebuilt.reused and rebuilt.bytes == first.bytes
    assert volume.check_manifest(engine_dir_here(spec, "test"), deep=True) == []


def test_new_weights_under_the_same_revision_name_build_a_new_engine(tmp_path, tiny_llama_checkpoint):
    spec = make_spec(tmp_path)
    before = build_engine(spec, {"checkpoint_dir": str(tiny_llama_checkpoint), "manifest_sha256": "aaa"})
    after = build_engine(spec, {"checkpoint_dir": str(tiny_llama_checkpoint), "manifest_sha256": "bbb"})
    assert after.engine_dir != before.engine_dir and not after.reused


def test_tensor_parallel_publishes_one_shard_per_rank_on_the_torch_backend(tmp_path, tiny_llama_checkpoint):
    record = build_engine(make_spec(tmp_path, world_size=2), checkpoint_record(tiny_llama_checkpoint)).to_xcom()
    engine_dir = Path(record["engine_dir"])
    assert sorted(p.name for p in engine_dir.glob("rank*")) == ["rank0", "rank1"]
    config = json.loads((engine_dir / "engine_config.json").read_text())
    assert (config["tensor_parallel"], config["pipeline_parallel"]) == (2, 1)
    assert [shard["kv_heads"] for shard in config["shards"]] == [[0, 1], [1, 2]]
    assert not volume.check_manifest(engine_dir), "published whole, manifest last"


def test_more_ranks_than_kv_heads_is_refused_and_leaves_nothing(tmp_path, tiny_llama_checkpoint):
    with pytest.raises(NonRetryableError, match="over 3 ranks: world_size=3 exceeds the model's 2 KV heads"):
        build_engine(make_spec(tmp_path, world_size=3), checkpoint_record(tiny_llama_checkpoint))
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").rglob("*.safetensors"))


def test_trtllm_is_refused_where_tensorrt_llm_is_missing(tmp_path, tiny_llama_checkpoint):
    with pytest.raises(BackendNotAvailable, match="not available on this worker"):
        build_engine(make_spec(tmp_path, backend="trtllm"), checkpoint_record(tiny_llama_checkpoint))
