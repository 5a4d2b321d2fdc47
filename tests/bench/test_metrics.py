"""Streaming metrics, checked against hand-computed cases."""

from llm_deploy.bench.metrics import RequestTiming, count_output_tokens, stats, summarize


def test_ttft_itl_and_latency_of_one_request():
    t = RequestTiming(sent=10.0, response_times=[10.5, 10.7, 10.9, 11.1])
    assert t.ttft == 0.5
    assert abs(t.itl - 0.2) < 1e-12  # (11.1 - 10.5) / 3
    assert abs(t.latency - 1.1) < 1e-12


def test_itl_divides_the_decode_window_by_the_counted_tokens_not_the_responses():
    # genai-perf: (request_latency - TTFT) / (output_sequence_length - 1). Four responses whose
    # text re-tokenizes to 7 tokens: 0.6 s of decode window over 6 tokens.
    t = RequestTiming(sent=10.0, response_times=[10.5, 10.7, 10.9, 11.1], output_tokens=7)
    assert abs(t.itl - 0.1) < 1e-12 and t.tokens == 7


def test_itl_percentiles_are_across_requests_and_gaps_are_a_separate_distribution():
    # Request a: gaps 0.1, 0.1, 0.1, 0.7 -> ITL 0.25. Request b: gaps 0.2, 0.2 -> ITL 0.2.
    a = RequestTiming(sent=0.0, response_times=[1.0, 1.1, 1.2, 1.3, 2.0])
    b = RequestTiming(sent=0.0, response_times=[1.0, 1.2, 1.4])
    s = summarize([a, b], wall_s=2.0)
    assert s["inter_token_latency_ms"]["p50"] == 225.0  # mean of the two per-request ITLs
    assert s["inter_token_latency_ms"]["min"] == 200.0 and s["inter_token_latency_ms"]["max"] == 250.0
    # Pooled gaps [100, 100, 100, 700, 200, 200]: their median is 150, not an ITL.
    assert s["inter_chunk_latency_ms"]["p50"] == 150.0 and s["inter_chunk_latency_ms"]["max"] == 700.0
    assert s["responses"] == 8 and s["output_tokens"] == 8


def test_output_tokens_are_counted_as_genai_perf_counts_them(tokenizer):
    text = "Un, deux, trois, quatre, cinq"
    expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert count_output_tokens(tokenizer, text) == expected
    # /generate echoes the prompt: its tokens are not output.
    prompt_ids = tokenizer("Count in French:", add_special_tokens=False)["input_ids"]
    assert count_output_tokens(tokenizer, "Count in French:" + text, len(prompt_ids)) == expected


def test_summary_counts_errors_and_throughput():
    ok1 = RequestTiming(sent=0.0, response_times=[1.0, 2.0, 3.0])
    ok2 = RequestTiming(sent=0.0, response_times=[2.0, 2.5])
    bad = RequestTiming(sent=0.0, error="boom")
    s = summarize([ok1, ok2, bad], wall_s=4.0)
    assert (s["requests"], s["completed"], s["errors"]) == (3, 2, 1)
    assert s["error_messages"] == ["boom"]
    assert s["output_tokens"] == 5
    assert s["output_token_throughput_per_s"] == 1.25
    assert s["request_throughput_per_s"] == 0.5
    assert s["time_to_first_token_ms"]["p50"] == 1500.0
    assert s["inter_token_latency_ms"]["min"] == 500.0 and s["inter_token_latency_ms"]["max"] == 1000.0


def test_stats_percentiles():
    block = stats([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert block["p50"] == 5.5 and block["avg"] == 5.5 and block["min"] == 1 and block["max"] == 10
    assert block["p90"] == 9.1
    assert stats([]) is None


class FakeClock:
    """A clock that only moves when a fake request says so: timings become exact numbers."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_run_level_keeps_concurrency_in_flight_and_counts_every_request():
    import asyncio

    from llm_deploy.bench.stream_client import run_level

    in_flight, peak = 0, 0

    async def send(index: int) -> RequestTiming:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001 * (index % 3))
        in_flight -= 1
        return RequestTiming(sent=0.0, response_times=[1.0], error="boom" if index == 5 else None)

    timings, _ = asyncio.run(run_level(send, requests=10, concurrency=4))
    assert len(timings) == 10 and peak == 4
    assert summarize(timings, wall_s=1.0)["errors"] == 1


def test_run_level_stops_starting_requests_after_the_duration():
    import asyncio

    from llm_deploy.bench.stream_client import run_level

    clock = FakeClock()

    async def send(index: int) -> RequestTiming:
        # each request: sent now, one token per second for 3 tokens
        sent = clock.now
        clock.now += 3.0
        return RequestTiming(sent=sent, response_times=[sent + 1, sent + 2, sent + 3])

    timings, wall_s = asyncio.run(run_level(send, requests=100, concurrency=1, duration_s=7.0, clock=clock))
    # requests start at t=0, 3, 6; the one that would start at t=9 is past the 7 s bound
    assert len(timings) == 3 and wall_s == 9.0
    s = summarize(timings, wall_s)
    assert s["output_token_throughput_per_s"] == 1.0  # 9 tokens / 9 s
    assert s["request_throughput_per_s"] == round(3 / 9, 3)
    assert s["time_to_first_token_ms"]["p50"] == 1000.0
    assert s["inter_token_latency_ms"]["avg"] == 1000.0
    assert s["request_latency_ms"]["max"] == 3000.0
    assert s["output_sequence_length"]["p99"] == 3


def test_non_streamed_answers_count_tokens_from_the_tokenizer_and_have_no_itl():
    t = RequestTiming(sent=0.0, response_times=[2.0], output_tokens=10)
    s = summarize([t], wall_s=2.0)
    assert s["output_tokens"] == 10 and s["output_token_throughput_per_s"] == 5.0
    assert s["inter_token_latency_ms"] is None and s["time_to_first_token_ms"]["p50"] == 2000.0


def test_percentiles_use_numpy_linear_interpolation():
    # p99 of 1..100: rank 0.99 * 99 = 98.01 -> 99 + 0.01 * (100 - 99)
    block = stats(list(range(1, 101)))
    assert block["p99"] == 99.01 and block["p90"] == 90.1 and block["p50"] == 50.5
