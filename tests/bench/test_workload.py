"""Synthetic prompts: seeded, of the asked lengths, from the model's own tokenizer."""

from __future__ import annotations

import numpy as np

from llm_deploy.bench.workload import build_requests, sample_lengths, tokenizer_dir_of


def settings(**overrides):
    return {"prompt": "How do I count to ten in French?", "input_len_mean": 20, "input_len_spread": 5,
            "max_tokens": 16, "output_len_spread": 4, "max_input_len": 64, "max_output_len": 32,
            "seed": 7, **overrides}


def test_same_seed_same_load_other_seed_other_load(tokenizer):
    first = build_requests(tokenizer, 8, **settings())
    assert first == build_requests(tokenizer, 8, **settings())
    assert first != build_requests(tokenizer, 8, **settings(seed=8))


def test_lengths_follow_mean_and_spread_within_bounds():
    lengths = sample_lengths(np.random.default_rng(0), 4000, 100, 10, upper=120)
    assert abs(np.mean(lengths) - 100) < 1 and abs(np.std(lengths) - 10) < 1
    assert max(lengths) <= 120 and min(lengths) >= 1
    assert sample_lengths(np.random.default_rng(0), 3, 5, 0, upper=4) == [4, 4, 4]


def test_prompts_are_ordinary_tokens_of_the_sampled_length(tokenizer):
    requests = build_requests(tokenizer, 16, **settings())
    for request in requests:
        assert not set(request.input_ids) & set(tokenizer.all_special_ids)
        assert request.prompt == tokenizer.decode(request.input_ids)
        assert 1 <= request.max_tokens <= 32
    assert len({len(r.input_ids) for r in requests}) > 1


def test_zero_mean_sends_the_fixed_prompt(tokenizer):
    requests = build_requests(tokenizer, 3, **settings(input_len_mean=0, output_len_spread=0))
    assert {r.prompt for r in requests} == {"How do I count to ten in French?"}
    assert {r.max_tokens for r in requests} == {16}


def test_tokenizer_dir_is_read_from_the_preprocessing_config(tmp_path):
    (tmp_path / "preprocessing").mkdir()
    (tmp_path / "preprocessing" / "config.pbtxt").write_text(
        'parameters {\n  key: "tokenizer_dir"\n  value: {\n    string_value: "/vol/models/x"\n  }\n}\n')
    assert str(tokenizer_dir_of(tmp_path)) == "/vol/models/x"
