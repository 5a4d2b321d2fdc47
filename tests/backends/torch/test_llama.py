"""Our Llama forward against transformers' LlamaForCausalLM, logit for logit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm_deploy.backends.torch.llama import LlamaArch, LlamaEngine, linear

PROMPTS = [[5, 6, 7, 8, 9], [1, 2, 3], [100, 200, 30, 40, 50, 60, 70, 80, 90, 10, 11]]
ATOL = 1e-5


def hf_last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1].float()


def load(directory: Path, dtype: torch.dtype = torch.float32, slots: int = 4, max_seq_len: int = 64) -> LlamaEngine:
    return LlamaEngine.load(directory, dtype, max_batch_size=slots, max_seq_len=max_seq_len)


def test_prefill_matches_hf(tiny_checkpoint, tiny_hf_model):
    engine = load(tiny_checkpoint)
    for slot, prompt in enumerate(PROMPTS):
        logits = engine.prefill(slot, prompt)
        assert logits.shape == (256,) and logits.dtype == torch.float32
        torch.testing.assert_close(logits, hf_last_logits(tiny_hf_model, prompt), atol=ATOL, rtol=0)
        assert engine.length(slot) == len(prompt)


def test_prompts_of_different_lengths_prefilled_in_one_pass_match_hf(tiny_checkpoint, tiny_hf_model):
    engine = load(tiny_checkpoint)
    assert engine.batched_prefill
    # Slots out of order; the short prompts are padded to 11 tokens inside the one pass.
    slots = [2, 0, 1]
    logits = engine.prefill_many(slots, PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(logits[row], hf_last_logits(tiny_hf_model, prompt), atol=ATOL, rtol=0)
    assert [engine.length(slot) for slot in slots] == [len(prompt) for prompt in PROMPTS]
    # The padding's K/V, left past each short prompt, is never attended to: decode goes on exactly.
    logits = engine.decode(slots, [7, 8, 9])
    for row, (prompt, token) in enumerate(zip(PROMPTS, [7, 8, 9])):
        torch.testing.assert_close(logits[row], hf_last_logits(tiny_hf_model, prompt + [token]), atol=ATOL, rtol=0)


def test_linear_on_cpu_is_f_linear(tiny_checkpoint):
    weight = torch.randn(300, 64)
    for rows in (1, 4, 16, 40):
        x = torch.randn(rows, 1, 64)
        out = linear(x, weight)
        assert out.shape == (rows, 1, 300) and out.is_contiguous()
        torch.testing.assert_close(out, torch.nn.functional.linear(x, weight), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "static-buckets"])
def test_batched_decode_of_different_lengths_matches_hf(tiny_checkpoint, tiny_hf_model, graphed):
    engine = load(tiny_checkpoint)
    if graphed:
        # The CUDA-graph decode path (padded row/kv buckets, device-side slot gather), run
        # eagerly on CPU: on a GPU the same function is what gets captured and replayed.
        engine.enable_graphed_decode(capture=False, kv_step=8)
    sequences = {slot: list(prompt) for slot, prompt in enumerate(PROMPTS)}
    for slot, prompt in sequences.items():
        engine.prefill(slot, prompt)
    # Several steps with the rows in a scrambled slot order and one row sitting a step out,
    # so each row's position, mask and cache row must really be its own.
    schedule = [[0, 1, 2], [2, 0], [1, 2, 0], [0, 2, 1]]
    for step, slots in enumerate(schedule):
        tokens = [(17 * step + 3 * slot) % 256 for slot in slots]
        logits = engine.decode(slots, tokens)
        assert logits.shape == (len(slots), 256)
        for row, (slot, token) in enumerate(zip(slots, tokens)):
            sequences[slot].append(token)
            expected = hf_last_logits(tiny_hf_model, sequences[slot])
            torch.testing.assert_close(logits[row], expected, atol=ATOL, rtol=0)
    assert [engine.length(s) for s in range(3)] == [len(sequences[s]) for s in range(3)]


def test_released_slot_reused_by_shorter_prompt_ignores_stale_cache(tiny_checkpoint, tiny_hf_model):
    engine = load(tiny_checkpoint, slots=2)
    engine.prefill(0, PROMPTS[2])
    engine.decode([0], [42])
    engine.release(0)
    assert engine.length(0) == 0
    engine.prefill(0, PROMPTS[1])
    logits = engine.decode([0], [9])
    torch.testing.assert_close(logits[0], hf_last_logits(tiny_hf_model, PROMPTS[1] + [9]), atol=ATOL, rtol=0)


def test_tied_embeddings(make_checkpoint):
    directory, model = make_checkpoint(seed=1, tie_word_embeddings=True)
    engine = load(directory)
    torch.testing.assert_close(engine.prefill(0, PROMPTS[0]), hf_last_logits(model, PROMPTS[0]), atol=ATOL, rtol=0)


def test_hub_style_rope_theta_and_head_dim(make_checkpoint):
    """Llama-2 style config.json (top-level rope_theta, rope_scaling null) and an explicit head_dim."""
    directory, model = make_checkpoint(
        seed=2, head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 500.0}
    )
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    del config["rope_parameters"]
    config.update(rope_theta=500.0, rope_scaling=None)
    config_path.write_text(json.dumps(config))

    engine = load(directory)
    assert engine.arch.rope_theta == 500.0 and engine.arch.head_dim == 32
    prompt = PROMPTS[2]
    engine.prefill(0, prompt)
    logits = engine.decode([0], [7])
    torch.testing.assert_close(logits[0], hf_last_logits(model, prompt + [7]), atol=ATOL, rtol=0)


def test_bfloat16_follows_hf_closely(tiny_checkpoint, hf_greedy):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16).eval()
    engine = load(tiny_checkpoint, dtype=torch.bfloat16)
    prompt = PROMPTS[0]
    tokens = [int(engine.prefill(0, prompt).argmax())]
    while len(tokens) < 8:
        tokens.append(int(engine.decode([0], [tokens[-1]])[0].argmax()))
    assert tokens == hf_greedy(model, prompt, 8)


def test_kv_cache_shape_and_size(tiny_checkpoint):
    engine = load(tiny_checkpoint, slots=3, max_seq_len=40)
    # 2 layers x (K and V) x [3 slots + 1 scratch slot, 2 kv heads, 40 positions, 16 head dim] x 4 bytes
    assert engine.kv_cache_bytes == 2 * 2 * 4 * 2 * 40 * 16 * 4


def test_decode_refuses_to_run_past_max_seq_len(tiny_checkpoint):
    engine = load(tiny_checkpoint, max_seq_len=6)
    engine.prefill(0, PROMPTS[0])  # 5 tokens
    engine.decode([0], [1])  # 6th position: the last one
    with pytest.raises(ValueError, match="max_seq_len=6"):
        engine.decode([0], [1])
    with pytest.raises(ValueError, match="max_seq_len=6"):
        engine.prefill(1, list(range(7)))


@pytest.mark.parametrize(
    ("slots", "tokens", "message"),
    [
        ([1], [3], "slot 1 is empty"),
        ([0, 0], [3, 4], "same slot twice"),
        ([9], [3], "out of range"),
        ([0], [3, 4], "one token per slot"),
        ([], [], "at least one slot"),
    ],
)
def test_decode_rejects_bad_slots(tiny_checkpoint, slots, tokens, message):
    engine = load(tiny_checkpoint)
    engine.prefill(0, PROMPTS[0])
    with pytest.raises(ValueError, match=message):
        engine.decode(slots, tokens)


def test_prefill_rejects_empty_prompt(tiny_checkpoint):
    with pytest.raises(ValueError, match="at least one token"):
        load(tiny_checkpoint).prefill(0, [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "rope_parameters"),
        ({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM is not supported"),
        ({"architectures": None, "model_type": "gpt2"}, "model_type='gpt2'"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"num_key_value_heads": 3}, "not a multiple"),
    ],
)
def test_unsupported_configs_are_refused(tiny_checkpoint, change, message):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config.update(change)
    with pytest.raises(ValueError, match=message):
        LlamaArch.from_config(config)


def test_config_that_does_not_fit_the_weights_is_refused(make_checkpoint):
    directory, _ = make_checkpoint()
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] = 96
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="gate_proj has shape"):
        load(directory)


def test_missing_tensor_is_refused(make_checkpoint):
    from safetensors.torch import load_file, save_file

    directory, _ = make_checkpoint()
    weights_path = directory / "model.safetensors"
    weights = load_file(weights_path)
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, weights_path)
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight"):
        load(directory)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path)
