"""The in-flight batcher: HF-identical greedy tokens however requests overlap, and its contract."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from llm_deploy.backends.torch.inflight import CANCELLED, STOPPED, InflightBatcher
from llm_deploy.backends.torch.llama import LlamaEngine

PROMPTS = [[5, 6, 7, 8, 9], [1, 2, 3], [100, 200, 30, 40, 50, 60, 70, 80, 90, 10, 11], [42], [7, 7, 7, 7]]
MAX_INPUT, MAX_OUTPUT = 16, 24


@pytest.fixture
def make_batcher(tiny_checkpoint):
    """``make_batcher(slots=4, start=True)``; every batcher made is stopped after the test."""
    made: list[InflightBatcher] = []

    def make(slots: int = 4, start: bool = True, max_seq_len: int = MAX_INPUT + MAX_OUTPUT,
             overlap: bool = False) -> InflightBatcher:
        engine = LlamaEngine.load(tiny_checkpoint, dtype=torch.float32,
                                  max_batch_size=slots, max_seq_len=max_seq_len)
        if overlap:  # the GPU's graphed steps, run eagerly: greedy tokens stay "on the device"
            engine.enable_graphed_decode(capture=False)
        batcher = InflightBatcher(engine, max_batch_size=slots, max_input_len=MAX_INPUT, max_output_len=MAX_OUTPUT,
                                  overlap=overlap)
        if start:
            batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.stop()


def test_requests_submitted_together_match_hf(make_batcher, tiny_hf_model, hf_greedy, collect):
    batcher = make_batcher(slots=4)
    lengths = [20, 3, 12, 24]
    runs = [collect(f"r{i}") for i in range(4)]
    for run, prompt, new in zip(runs, PROMPTS, lengths):
        batcher.submit(run.request(prompt, new))
    for run, prompt, new in zip(runs, PROMPTS, lengths):
        assert run.wait().error is None
        assert run.tokens == hf_greedy(tiny_hf_model, prompt, new), run.request_id
    stats = batcher.stats
    assert stats["completed"] == 4 and stats["failed"] == 0 and stats["active"] == 0
    assert stats["max_active_seen"] == 4
    # Batched: the longest request's 23 decode steps carried the others along.
    assert stats["steps"] == max(lengths) - 1


def test_request_joins_while_others_are_mid_decode(make_batcher, tiny_hf_model, hf_greedy, collect):
    batcher = make_batcher(slots=3)
    events: list[tuple[str, int]] = []
    first, second, third = collect("first"), collect("second"), collect("third")
    second_request = second.request(PROMPTS[2], 6)
    third_request = third.request(PROMPTS[1], 5)

    def on_first_token(token: int) -> None:
        first.tokens.append(token)
        events.append(("first", len(first.tokens)))
        # Submitting from the batcher thread itself pins the join points to exact tokens.
        if len(first.tokens) == 4:
            batcher.submit(second_request)
        if len(first.tokens) == 7:
            batcher.submit(third_request)

    def on_second_token(token: int) -> None:
        second.tokens.append(token)
        events.append(("second", len(second.tokens)))

    first_request = first.request(PROMPTS[0], 20)
    first_request.on_token = on_first_token
    second_request.on_token = on_second_token
    batcher.submit(first_request)

    for run, prompt, new in ((first, PROMPTS[0], 20), (second, PROMPTS[2], 6), (third, PROMPTS[1], 5)):
        assert run.wait().error is None
        assert run.tokens == hf_greedy(tiny_hf_model, prompt, new), run.request_id
    # "second" started at the very next step and ran entirely inside "first": it neither waited
    # for "first" to finish nor held it up.
    assert events.index(("second", 1)) == events.index(("first", 4)) + 1
    assert events.index(("second", 6)) < events.index(("first", 20))
    assert batcher.stats["max_active_seen"] == 3


def test_more_requests_than_slots_all_complete(make_batcher, tiny_hf_model, hf_greedy, collect):
    batcher = make_batcher(slots=2)
    runs = [collect(f"r{i}") for i in range(len(PROMPTS))]
    news = [7, 3, 10, 5, 8]
    for run, prompt, new in zip(runs, PROMPTS, news):
        batcher.submit(run.request(prompt, new))
    for run, prompt, new in zip(runs, PROMPTS, news):
        assert run.wait().error is None
        assert run.tokens == hf_greedy(tiny_hf_model, prompt, new), run.request_id
    stats = batcher.stats
    assert stats["max_active_seen"] <= 2
    assert stats["completed"] == stats["submitted"] == len(PROMPTS)
    assert stats["queued"] == stats["active"] == 0


def test_end_id_is_reported_and_stops(make_batcher, tiny_hf_model, hf_greedy, collect):
    reference = hf_greedy(tiny_hf_model, PROMPTS[0], 12)
    stop_at = next(i for i, token in enumerate(reference) if i >= 2 and token not in reference[:i])
    batcher = make_batcher()
    run = collect("eos")
    batcher.submit(run.request(PROMPTS[0], 12, end_id=reference[stop_at]))
    assert run.wait().error is None
    assert run.tokens == reference[: stop_at + 1]


def test_end_id_as_first_token(make_batcher, tiny_hf_model, hf_greedy, collect):
    first = hf_greedy(tiny_hf_model, PROMPTS[3], 1)[0]
    batcher = make_batcher()
    run = collect("eos-first")
    batcher.submit(run.request(PROMPTS[3], 10, end_id=first))
    assert run.wait().error is None and run.tokens == [first]


@pytest.mark.parametrize("new", [1, 2, MAX_OUTPUT])
def test_max_new_tokens_is_respected(make_batcher, collect, new):
    batcher = make_batcher()
    run = collect("n")
    batcher.submit(run.request(PROMPTS[2], new))
    assert run.wait().error is None and len(run.tokens) == new


@pytest.mark.parametrize(
    ("prompt", "new", "message"),
    [
        ([], 4, "input_ids is empty"),
        (list(range(MAX_INPUT + 1)), 4, f"exceeds max_input_len={MAX_INPUT}"),
        ([1, 2], 0, "max_new_tokens=0 must be between 1"),
        ([1, 2], MAX_OUTPUT + 1, f"max_output_len={MAX_OUTPUT}"),
        ([1, 2, 256], 4, "outside the vocabulary"),
    ],
)
def test_invalid_requests_raise_without_callbacks(make_batcher, collect, prompt, new, message):
    batcher = make_batcher()
    run = collect("bad")
    with pytest.raises(ValueError, match=message):
        batcher.submit(run.request(prompt, new))
    assert run.errors == [] and batcher.stats["submitted"] == 0


def test_request_longer_than_the_engine_cache_is_refused(make_batcher, collect):
    batcher = make_batcher(max_seq_len=20)
    with pytest.raises(ValueError, match="max_seq_len=20"):
        batcher.submit(collect("long").request(list(range(10)), 11))


def test_request_id_is_unique_while_in_flight_only(make_batcher, collect):
    batcher = make_batcher(start=False)
    first = collect("same")
    batcher.submit(first.request([1], 2))
    with pytest.raises(ValueError, match="already in flight"):
        batcher.submit(collect("same").request([2], 2))
    batcher.start()
    first.wait()
    again = collect("same")
    batcher.submit(again.request([2], 2))
    assert again.wait().error is None


def test_cancel_queued_and_active_requests(make_batcher, tiny_hf_model, hf_greedy, collect):
    batcher = make_batcher(slots=1, start=False)
    active, queued, untouched = collect("active"), collect("queued"), collect("untouched")
    request = active.request(PROMPTS[0], 20)
    request.on_token = cancelled_at_token(3, batcher, active)
    batcher.submit(request)
    batcher.submit(queued.request(PROMPTS[1], 5))
    batcher.submit(untouched.request(PROMPTS[1], 5))
    batcher.cancel("queued")
    batcher.cancel("no-such-request")  # harmless
    batcher.start()

    assert queued.wait().error == CANCELLED and queued.tokens == []
    assert active.wait().error == CANCELLED and 3 <= len(active.tokens) < 20
    assert untouched.wait().error is None
    assert untouched.tokens == hf_greedy(tiny_hf_model, PROMPTS[1], 5)
    assert batcher.stats["cancelled"] == 2 and batcher.stats["completed"] == 1


def test_stop_fails_pending_requests(make_batcher, collect):
    batcher = make_batcher(start=False)
    runs = [collect(f"r{i}") for i in range(3)]
    for run in runs:
        batcher.submit(run.request([1, 2], 4))
    batcher.stop()
    assert [run.error for run in runs] == [STOPPED] * 3
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(collect("late").request([1], 1))


def test_stop_fails_active_requests(make_batcher, collect):
    batcher = make_batcher()
    run = collect("long")
    first_token = threading.Event()
    request = run.request(PROMPTS[0], MAX_OUTPUT)

    def slow_first_token(token: int) -> None:
        run.tokens.append(token)
        if len(run.tokens) == 1:
            first_token.set()
            time.sleep(0.3)  # let stop() land while this request is still generating

    request.on_token = slow_first_token
    batcher.submit(request)
    assert first_token.wait(10)
    batcher.stop()
    assert run.error == STOPPED and len(run.tokens) < MAX_OUTPUT
    assert batcher.stats["failed"] == 1


def test_failed_step_fails_its_requests_and_the_loop_survives(make_batcher, tiny_hf_model, hf_greedy, collect):
    batcher = make_batcher(slots=2, start=False)
    real_decode = batcher.engine.decode
    calls = {"n": 0}

    def flaky_decode(slots, tokens):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated kernel failure")
        return real_decode(slots, tokens)

    batcher.engine.decode = flaky_decode
    a, b = collect("a"), collect("b")
    batcher.submit(a.request(PROMPTS[0], 10))
    batcher.submit(b.request(PROMPTS[1], 10))
    batcher.start()
    assert "simulated kernel failure" in a.wait().error
    assert "simulated kernel failure" in b.wait().error
    assert len(a.tokens) == len(b.tokens) == 2  # prefill's token and one good step

    after = collect("after")
    batcher.submit(after.request(PROMPTS[2], 6))
    assert after.wait().error is None
    assert after.tokens == hf_greedy(tiny_hf_model, PROMPTS[2], 6)
    assert batcher.stats["failed"] == 2 and batcher.stats["max_active_seen"] == 2


def test_failed_prefill_fails_only_that_request(make_batcher, collect):
    batcher = make_batcher(slots=2, start=False)
    real_prefill, real_prefill_many = batcher.engine.prefill, batcher.engine.prefill_many

    def picky_prefill(slot, ids):
        if ids == PROMPTS[3]:
            raise RuntimeError("simulated prefill failure")
        return real_prefill(slot, ids)

    def picky_prefill_many(slots, prompts):
        if PROMPTS[3] in prompts:  # the batch fails, then each request is prefilled on its own
            raise RuntimeError("simulated prefill failure")
        return real_prefill_many(slots, prompts)

    batcher.engine.prefill, batcher.engine.prefill_many = picky_prefill, picky_prefill_many
    bad, good = collect("bad"), collect("good")
    batcher.submit(bad.request(PROMPTS[3], 4))
    batcher.submit(good.request(PROMPTS[0], 4))
    batcher.start()
    assert "simulated prefill failure" in bad.wait().error and bad.tokens == []
    assert good.wait().error is None and len(good.tokens) == 4


def test_raising_on_token_fails_only_its_own_request(make_batcher, collect):
    batcher = make_batcher()
    broken, fine = collect("broken"), collect("fine")
    request = broken.request(PROMPTS[0], 5)

    def explode(token: int) -> None:
        raise KeyError("client went away")

    request.on_token = explode
    batcher.submit(request)
    batcher.submit(fine.request(PROMPTS[1], 5))
    assert "client went away" in broken.wait().error
    assert fine.wait().error is None and len(fine.tokens) == 5


def test_idle_batcher_does_no_work(make_batcher, collect):
    batcher = make_batcher()
    run = collect("one")
    batcher.submit(run.request(PROMPTS[0], 3))
    run.wait()
    before = batcher.stats
    time.sleep(0.2)
    assert batcher.stats == before
    assert before["steps"] == 2 and before["prefills"] == 1 and before["generated_tokens"] == 3


def test_batch_size_cannot_exceed_engine_slots(tiny_checkpoint):
    engine = LlamaEngine.load(tiny_checkpoint, torch.float32, max_batch_size=2, max_seq_len=16)
    with pytest.raises(ValueError, match="2 KV-cache slots"):
        InflightBatcher(engine, max_batch_size=3, max_input_len=8, max_output_len=8)


def test_a_new_request_takes_the_lowest_free_slot(make_batcher, collect):
    # Graphed decode runs over slots 0..B-1 (B a power of two above the highest busy slot), so a
    # lone request must not inherit a high slot from whichever request happened to finish last.
    batcher = make_batcher(slots=4)
    decoded_slots: list[list[int]] = []
    decode = batcher.engine.decode
    batcher.engine.decode = lambda slots, tokens: decoded_slots.append(list(slots)) or decode(slots, tokens)
    first = [collect(f"f{i}") for i in range(4)]
    for run, new in zip(first, [2, 9, 7, 5]):  # slot 0 frees first, then 3, 2 and 1 last
        batcher.submit(run.request(PROMPTS[0], new))
    assert all(run.wait().error is None for run in first)

    decoded_slots.clear()
    lone = collect("lone")
    batcher.submit(lone.request(PROMPTS[1], 4))
    assert lone.wait().error is None
    assert decoded_slots and all(slots == [0] for slots in decoded_slots)


# --- overlapped steps: step N+1 launched before step N's tokens are handed out ----------------


def test_overlapped_steps_give_hf_tokens_however_requests_come_and_go(make_batcher, tiny_hf_model, hf_greedy,
                                                                      collect):
    batcher = make_batcher(slots=2, overlap=True)
    news = [7, 3, 10, 5, 8]
    runs = [collect(f"r{i}") for i in range(len(PROMPTS))]
    for run, prompt, new in zip(runs, PROMPTS, news):
        batcher.submit(run.request(prompt, new))
    for run, prompt, new in zip(runs, PROMPTS, news):
        assert run.wait().error is None
        assert run.tokens == hf_greedy(tiny_hf_model, prompt, new), run.request_id
    stats = settled(batcher)
    assert stats["completed"] == 5 and stats["active"] == stats["queued"] == 0
    assert stats["generated_tokens"] == sum(news)


def test_the_next_step_is_launched_before_the_last_ones_tokens_are_handed_out(make_batcher, collect):
    batcher = make_batcher(slots=2, start=False, overlap=True)
    events: list[str] = []
    launch = batcher.engine.decode_greedy
    batcher.engine.decode_greedy = lambda slots: events.append("launch") or launch(slots)
    run = collect("r")
    request = run.request(PROMPTS[0], 5)
    request.on_token = lambda token: events.append("token") or run.on_token(token)
    batcher.submit(request)
    batcher.start()
    assert run.wait().error is None and len(run.tokens) == 5
    # The prefill's token goes out while step 1 runs, step 1's while step 2 runs, and so on; the
    # last step's tokens have nothing left to launch behind them.
    assert events == ["launch", "token"] * 4 + ["token"]


def test_a_request_ending_on_its_end_token_costs_at_most_one_step_more(make_batcher, tiny_hf_model, hf_greedy,
                                                                      collect):
    reference = hf_greedy(tiny_hf_model, PROMPTS[0], 12)
    stop_at = next(i for i, token in enumerate(reference) if i >= 2 and token not in reference[:i])
    batcher = make_batcher(overlap=True)
    run = collect("eos")
    batcher.submit(run.request(PROMPTS[0], 12, end_id=reference[stop_at]))
    assert run.wait().error is None
    assert run.tokens == reference[: stop_at + 1]
    # stop_at steps made its tokens; the step launched before its end token was seen made none,
    # and was collected even though no request was left to wake the loop.
    stats = settled(batcher)
    assert stats["steps"] == stop_at + 1 and stats["generated_tokens"] == stop_at + 1


def test_a_request_filling_the_cache_exactly_is_never_stepped_past_it(make_batcher, tiny_hf_model, hf_greedy,
                                                                     collect):
    # A step launched before the last one's tokens are known must not write past max_seq_len:
    # a row whose budget is spent is never launched again.
    batcher = make_batcher(max_seq_len=len(PROMPTS[2]) + MAX_OUTPUT, overlap=True)
    run = collect("full")
    batcher.submit(run.request(PROMPTS[2], MAX_OUTPUT))
    assert run.wait().error is None
    assert run.tokens == hf_greedy(tiny_hf_model, PROMPTS[2], MAX_OUTPUT)
    assert settled(batcher)["steps"] == MAX_OUTPUT - 1


def test_a_request_cancelled_mid_overlap_frees_its_slot_for_the_next(make_batcher, tiny_hf_model, hf_greedy,
                                                                    collect):
    batcher = make_batcher(slots=1, start=False, overlap=True)
    active, waiting = collect("active"), collect("waiting")
    request = active.request(PROMPTS[0], 20)
    request.on_token = cancelled_at_token(3, batcher, active)
    batcher.submit(request)
    batcher.submit(waiting.request(PROMPTS[1], 6))
    batcher.start()
    assert active.wait().error == CANCELLED and 3 <= len(active.tokens) < 20
    # Its slot went to the next request while a step of the cancelled one may still have been out.
    assert waiting.wait().error is None
    assert waiting.tokens == hf_greedy(tiny_hf_model, PROMPTS[1], 6)


def test_a_step_that_fails_when_collected_fails_its_requests_and_the_loop_goes_on(make_batcher, tiny_hf_model,
                                                                                hf_greedy, collect):
    batcher = make_batcher(slots=2, start=False, overlap=True)
    launch, calls = batcher.engine.decode_greedy, {"n": 0}

    def failing_on_the_device(slots):
        pending = launch(slots)
        calls["n"] += 1
        if calls["n"] == 2:  # the launch went fine; the error shows when the tokens are collected
            pending.result = lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: an illegal memory access"))
        return pending

    batcher.engine.decode_greedy = failing_on_the_device
    a, b = collect("a"), collect("b")
    batcher.submit(a.request(PROMPTS[0], 10))
    batcher.submit(b.request(PROMPTS[1], 10))
    batcher.start()
    assert "decode step failed: CUDA error" in a.wait().error and "illegal memory access" in b.wait().error
    assert len(a.tokens) == len(b.tokens) == 2  # the prefill's token and step 1's

    after = collect("after")
    batcher.submit(after.request(PROMPTS[2], 6))
    assert after.wait().error is None and after.tokens == hf_greedy(tiny_hf_model, PROMPTS[2], 6)


def test_overlap_needs_an_engine_that_keeps_tokens_on_the_device(tiny_checkpoint):
    engine = LlamaEngine.load(tiny_checkpoint, torch.float32, max_batch_size=2, max_seq_len=16)
    assert not engine.greedy_on_device  # CPU's eager default: tokens are handed out step by step
    assert InflightBatcher(engine, max_batch_size=2, max_input_len=8, max_output_len=8).overlap is False
    with pytest.raises(ValueError, match="keeps greedy tokens on the device"):
        InflightBatcher(engine, max_batch_size=2, max_input_len=8, max_output_len=8, overlap=True)


def settled(batcher: InflightBatcher, timeout: float = 10) -> dict:
    """The batcher's stats once its loop has gone idle: a request's last token reaches its caller
    before the loop collects a pass still out behind it."""
    deadline = time.monotonic() + timeout
    before = batcher.stats
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = batcher.stats
        if now == before and not now["active"]:
            return now
        before = now
    raise AssertionError(f"the batcher did not go idle within {timeout}s: {before}")


def cancelled_at_token(count: int, batcher: InflightBatcher, run):
    """An on_token for ``run`` that cancels its own request once it has ``count`` tokens."""
    def on_token(token: int) -> None:
        run.tokens.append(token)
        if len(run.tokens) == count:
            batcher.cancel(run.request_id)

    return on_token
