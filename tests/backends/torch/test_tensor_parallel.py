"""Tensor parallelism in the twin: the split, the shards on disk, and an engine run over real rank
processes (gloo) that gives the tokens the whole model gives."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llm_deploy.backends.torch import ranks, tensor_parallel
from llm_deploy.backends.torch.build_engine import write_shards
from llm_deploy.backends.torch.llama import LlamaArch
from llm_deploy.backends.torch.verify_engine import engine_greedy
from llm_deploy.errors import NonRetryableError

SMOLLM2_135M = LlamaArch(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                         num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=1e5, tie_word_embeddings=True)


def test_uneven_heads_split_by_kv_groups_and_the_mlp_in_halves():
    first, second = tensor_parallel.plan(SMOLLM2_135M, 2)
    assert (first.kv_heads, first.q_heads, first.intermediate) == ((0, 2), (0, 6), (0, 768))
    assert (second.kv_heads, second.q_heads, second.intermediate) == ((2, 3), (6, 9), (768, 1536))
    local = tensor_parallel.local_arch(SMOLLM2_135M, second)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size) == (3, 1, 768)
    assert tensor_parallel.RankShard.from_dict(json.loads(json.dumps(second.to_dict()))) == second


def test_more_ranks_than_kv_heads_is_refused_with_the_limit():
    with pytest.raises(ValueError, match="exceeds the model's 3 KV heads.*world_size <= 3"):
        tensor_parallel.plan(SMOLLM2_135M, 4)


@pytest.fixture(scope="module")
def sharded_engine_dir(tiny_engine_dir, tiny_llama_checkpoint, tmp_path_factory) -> Path:
    engine_dir = tmp_path_factory.mktemp("tiny-engine-tp2")
    for name in ("config.json", "generation_config.json"):
        shutil.copy2(tiny_llama_checkpoint / name, engine_dir / name)
    config = json.loads((tiny_engine_dir / "engine_config.json").read_text())
    shards = write_shards(tiny_llama_checkpoint, engine_dir, config["dtype"], 2)
    (engine_dir / "engine_config.json").write_text(json.dumps({**config, "tensor_parallel": 2, "shards": shards}))
    return engine_dir


def test_each_rank_directory_holds_its_slice_of_the_weights(sharded_engine_dir):
    from safetensors.torch import load_file

    ranks_ = [load_file(sharded_engine_dir / f"rank{r}" / "model.safetensors") for r in (0, 1)]
    for rank in ranks_:  # tiny Llama: 4 query heads over 2 KV heads of 16, MLP 128
        assert tuple(rank["model.layers.0.self_attn.q_proj.weight"].shape) == (32, 64)
        assert tuple(rank["model.layers.0.self_attn.k_proj.weight"].shape) == (16, 64)
        assert tuple(rank["model.layers.0.self_attn.o_proj.weight"].shape) == (64, 32)
        assert tuple(rank["model.layers.0.mlp.down_proj.weight"].shape) == (64, 64)
        assert tuple(rank["model.embed_tokens.weight"].shape) == tuple(ranks_[0]["model.embed_tokens.weight"].shape)


def test_two_ranks_in_two_processes_give_the_whole_models_greedy_tokens(sharded_engine_dir, tiny_engine_dir):
    prompt = [1, 17, 42, 99, 5, 23]
    whole = engine_greedy(tiny_engine_dir, prompt, 24, end_id=None)
    split = engine_greedy(sharded_engine_dir, prompt, 24, end_id=None)
    assert split == whole and len(split) == 24


def test_a_rank_that_dies_fails_the_leaders_next_step_naming_what_is_missing(sharded_engine_dir):
    import psutil
    import torch

    with ranks.lead(sharded_engine_dir, 2, dtype=torch.float32, max_batch_size=1, max_seq_len=32) as engine:
        engine.prefill(0, [1, 2, 3])
        (follower,) = psutil.Process().children()
        follower.kill()
        follower.wait(10)
        gone = r"a tensor-parallel rank is gone: rank 1 \(pid \d+\) .*all 2 ranks must run"
        with pytest.raises(RuntimeError, match=gone):
            for _ in range(3):  # the broadcast may still reach the dead rank's socket once
                engine.decode([0], [4])
    assert psutil.Process().children() == []


def test_a_model_that_cannot_be_split_that_far_is_refused_at_build(tiny_llama_checkpoint, tmp_path):
    with pytest.raises(NonRetryableError, match="cannot split .* over 3 ranks: world_size=3 exceeds the model's 2 KV"):
        write_shards(tiny_llama_checkpoint, tmp_path, "float32", 3)


@pytest.mark.slow
def test_smollm2_over_two_ranks_with_uneven_heads_matches_transformers_greedy(tmp_path):
    from transformers import AutoTokenizer

    from llm_deploy.backends.torch.verify_engine import reference_greedy
    from llm_deploy.spec import TUTORIAL_PROMPT, DeploySpec
    from llm_deploy.steps.download_weights import download_weights

    spec = DeploySpec(engines_root=os.environ.get("LLM_DEPLOY_ENGINES_ROOT") or str(tmp_path / "volume"))
    checkpoint = Path(download_weights(spec, None).to_xcom()["checkpoint_dir"])  # converted once per volume
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    shutil.copy2(checkpoint / "config.json", engine_dir / "config.json")
    shards = write_shards(checkpoint, engine_dir, "float32", 2)
    assert [s["q_heads"] for s in shards] == [[0, 6], [6, 9]], "9 query heads over 3 KV heads: 6 and 3"
    (engine_dir / "engine_config.json").write_text(json.dumps(
        {"dtype": "float32", "max_input_len": 512, "max_output_len": 64, "tensor_parallel": 2}))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompt = tokenizer(TUTORIAL_PROMPT)["input_ids"]

    split = engine_greedy(engine_dir, prompt, 40, tokenizer.eos_token_id)

    assert split == reference_greedy(checkpoint, "float32", prompt, 40, tokenizer.eos_token_id)
