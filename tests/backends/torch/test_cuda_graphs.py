"""The static-shape decode/prefill path a GPU captures as CUDA graphs, run eagerly on CPU.

On a GPU the varlen attention runs FlashAttention's kernel over the offsets built here; on CPU
the same offsets drive a plain gather, so these tests hold the offsets (slot, KV head, length of
every row) to HF's logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_deploy.backends.torch.cuda_graphs import varlen_attention_reference
from llm_deploy.backends.torch.inflight import InflightBatcher
from llm_deploy.backends.torch.llama import LlamaEngine

PROMPTS = [[5, 6, 7, 8, 9], [1, 2, 3], [100, 200, 30, 40, 50, 60, 70, 80, 90, 10, 11]]
ATOL = 1e-5


def hf_last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1].float()


def graphed_engine(checkpoint, slots: int = 4, max_seq_len: int = 64, **options) -> LlamaEngine:
    engine = LlamaEngine.load(checkpoint, torch.float32, max_batch_size=slots, max_seq_len=max_seq_len)
    engine.enable_graphed_decode(capture=False, **options)
    return engine


def test_varlen_reference_reads_each_sequence_own_keys():
    # Three one-query sequences over one flat key run: starts 0, 10, 4 and lengths 3, 5, 1.
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 8), torch.randn(20, 1, 8), torch.randn(20, 1, 8)
    cu_k = torch.tensor([0, 10, 4, 20], dtype=torch.int32)
    used = torch.tensor([3, 5, 1], dtype=torch.int32)
    out = varlen_attention_reference(q, k, v, cu_k, used, max_k=6, scale=0.5)
    for n, (start, length) in enumerate([(0, 3), (10, 5), (4, 1)]):
        keys, values = k[start:start + length, 0][None], v[start:start + length, 0][None]
        expected = F.scaled_dot_product_attention(q[n][None], keys, values, scale=0.5)[0]
        torch.testing.assert_close(out[n], expected, atol=1e-6, rtol=0)


def test_fused_projections_share_the_layer_weights(tiny_checkpoint):
    engine = graphed_engine(tiny_checkpoint)
    layer, fused = engine._layers[0], engine._graphed.model.fused[0]
    # q/k/v and gate/up are views into the stacked weights: no second copy of the model.
    assert layer.q_proj.data_ptr() == fused.qkv.data_ptr()
    assert layer.v_proj.data_ptr() == fused.qkv[-layer.v_proj.shape[0]:].data_ptr()
    assert layer.up_proj.data_ptr() == fused.gate_up[layer.gate_proj.shape[0]:].data_ptr()


@pytest.mark.parametrize("attention", ["varlen", "masked"])
def test_decode_rows_of_different_lengths_and_slots_match_hf(tiny_checkpoint, tiny_hf_model, attention):
    engine = graphed_engine(tiny_checkpoint, kv_step=8, attention=attention)
    # Slots 0, 1 and 3: slot 2 stays empty, so the bucket of 4 rows has a padded row in the middle.
    sequences = {0: list(PROMPTS[0]), 1: list(PROMPTS[1]), 3: list(PROMPTS[2])}
    for slot, prompt in sequences.items():
        engine.prefill(slot, prompt)
    for step, slots in enumerate([[0, 1, 3], [3, 0], [1, 3, 0], [3]]):
        tokens = [(31 * step + 7 * slot) % 256 for slot in slots]
        logits = engine.decode(slots, tokens)
        for row, (slot, token) in enumerate(zip(slots, tokens)):
            sequences[slot].append(token)
            torch.testing.assert_close(logits[row], hf_last_logits(tiny_hf_model, sequences[slot]),
                                       atol=ATOL, rtol=0)


def test_batched_prefill_matches_hf_then_decodes_on(tiny_checkpoint, tiny_hf_model):
    engine = graphed_engine(tiny_checkpoint)
    engine._graphed.prefill_step = 8  # prompts of 3..11 tokens: buckets of 8 and 16 tokens
    slots = [2, 0, 3]
    logits = engine.prefill_many(slots, PROMPTS)
    assert logits.shape == (3, 256)
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(logits[row], hf_last_logits(tiny_hf_model, prompt), atol=ATOL, rtol=0)
    assert [engine.length(s) for s in slots] == [len(p) for p in PROMPTS]
    # The prompts' K/V landed in their own slots: decoding continues from there.
    tokens = [17, 18, 19]
    logits = engine.decode(slots, tokens)
    for row, (prompt, token) in enumerate(zip(PROMPTS, tokens)):
        torch.testing.assert_close(logits[row], hf_last_logits(tiny_hf_model, prompt + [token]), atol=ATOL, rtol=0)


def test_greedy_steps_feed_themselves_their_own_tokens(tiny_checkpoint, tiny_hf_model, hf_greedy):
    # What an overlapped batcher relies on: a decode step needs no tokens from the host, each
    # slot reads the greedy token its last prefill or step left on the device.
    engine = graphed_engine(tiny_checkpoint)
    engine._graphed.prefill_step = 8
    slots = [2, 0, 3]
    generated = [[token] for token in engine.prefill_greedy(slots, PROMPTS).result()]
    for step in range(5):
        active = slots if step % 2 == 0 else [3, 2]  # slot 0 sits out odd steps: its token waits
        pending = engine.decode_greedy(active)
        for slot, token in zip(active, pending.result()):
            generated[slots.index(slot)].append(token)
    for prompt, tokens in zip(PROMPTS, generated):
        assert tokens == hf_greedy(tiny_hf_model, prompt, len(tokens))
    assert [engine.length(s) for s in slots] == [len(p) + len(t) - 1 for p, t in zip(PROMPTS, generated)]


def test_buckets_built_ahead_of_the_first_request_write_no_request_slot(tiny_checkpoint, tiny_hf_model):
    # A server builds them at load; even over a live request they only ever write the scratch slot.
    engine = graphed_engine(tiny_checkpoint, slots=6)
    engine.prefill(1, PROMPTS[0])
    kept = [cache[:engine.max_batch_size].clone() for cache in engine._k_cache + engine._v_cache]
    engine.capture_ahead()
    graphed = engine._graphed
    assert sorted(graphed._entries) == [(1, 64), (2, 64), (4, 64), (6, 64)]  # every width a step can take
    assert sorted(graphed._prefills) == [(1, 64)]
    # What a GPU runs on each of them before and during its capture, run here eagerly.
    with torch.inference_mode():
        for (_, kv_len), entry in graphed._entries.items():
            graphed._run(entry, kv_len)
        for entry in graphed._prefills.values():
            graphed._prefill_step(entry)
    for before, cache in zip(kept, engine._k_cache + engine._v_cache):
        assert torch.equal(cache[:engine.max_batch_size], before)
    logits = engine.decode([1], [42])
    torch.testing.assert_close(logits[0], hf_last_logits(tiny_hf_model, PROMPTS[0] + [42]), atol=ATOL, rtol=0)


def test_greedy_steps_need_the_graphed_varlen_path(tiny_checkpoint):
    engine = LlamaEngine.load(tiny_checkpoint, torch.float32, max_batch_size=2, max_seq_len=16)
    with pytest.raises(RuntimeError, match="needs graphed varlen decode"):
        engine.decode_greedy([0])
    engine.enable_graphed_decode(capture=False, attention="masked")
    assert not engine.greedy_on_device
    with pytest.raises(RuntimeError, match="needs graphed varlen decode"):
        engine.prefill_greedy([0], [[1, 2]])


def test_prefill_many_refuses_bad_input(tiny_checkpoint):
    engine = graphed_engine(tiny_checkpoint)
    with pytest.raises(ValueError, match="distinct slots"):
        engine.prefill_many([0, 0], [[1], [2]])
    with pytest.raises(ValueError, match="at least one token"):
        engine.prefill_many([0, 1], [[1], []])
    with pytest.raises(ValueError, match="max_seq_len=64"):
        engine.prefill_many([0], [[1] * 65])


def test_unknown_attention_is_refused(tiny_checkpoint):
    engine = LlamaEngine.load(tiny_checkpoint, torch.float32, max_batch_size=2, max_seq_len=16)
    with pytest.raises(ValueError, match="attention='paged' is not one of varlen, masked"):
        engine.enable_graphed_decode(capture=False, attention="paged")


def test_batcher_admits_requests_together_and_matches_hf(tiny_checkpoint, tiny_hf_model, hf_greedy, collect):
    engine = graphed_engine(tiny_checkpoint, max_seq_len=40)
    assert engine.batched_prefill
    batcher = InflightBatcher(engine, max_batch_size=4, max_input_len=16, max_output_len=24)
    runs = [collect(f"r{i}") for i in range(len(PROMPTS))]
    new_tokens = [9, 4, 12]
    # Queued before the loop starts, so its first turn admits all three in one prefill.
    for run, prompt, new in zip(runs, PROMPTS, new_tokens):
        batcher.submit(run.request(prompt, new))
    batcher.start()
    try:
        for run, prompt, new in zip(runs, PROMPTS, new_tokens):
            assert run.wait().error is None
            assert run.tokens == hf_greedy(tiny_hf_model, prompt, new), run.request_id
        stats = batcher.stats
        assert stats["prefills"] == 3 and stats["steps"] == max(new_tokens) - 1
    finally:
        batcher.stop()


def test_failed_batched_prefill_retries_one_by_one(tiny_checkpoint, tiny_hf_model, hf_greedy, collect):
    engine = graphed_engine(tiny_checkpoint, max_seq_len=40)
    prefill_greedy = engine._graphed.prefill_greedy

    def broken_when_batched(slots, prompts):
        if len(slots) > 1:
            raise RuntimeError("simulated batched prefill failure")
        return prefill_greedy(slots, prompts)

    engine._graphed.prefill_greedy = broken_when_batched
    batcher = InflightBatcher(engine, max_batch_size=4, max_input_len=16, max_output_len=24)
    assert batcher.overlap  # graphed varlen: the GPU's way, greedy tokens kept on the device
    runs = [collect("a"), collect("b")]
    for run, prompt in zip(runs, PROMPTS):
        batcher.submit(run.request(prompt, 5))
    batcher.start()
    try:
        for run, prompt in zip(runs, PROMPTS):
            assert run.wait().error is None
            assert run.tokens == hf_greedy(tiny_hf_model, prompt, 5)
    finally:
        batcher.stop()
