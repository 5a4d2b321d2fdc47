"""Streaming metrics, checked against hand-computed cases."""

from llm_deploy.bench.metrics import RequestTiming, stats, summarize


def test_ttft_itl_and_latency_of_one_request():
    t = RequestTiming(sent=10.0, token_times=[10.5, 10.7, 10.9, 11.1])
    assert t.ttft == 0.5
    assert abs(t.itl - 0.2) < 1e-12  # (11.1 - 10.5) / 3
    assert abs(t.latency - 1.1) < 1e-12


def test_summary_counts_errors_and_throughput():
    ok1 = RequestTiming(sent=0.0, token_times=[1.0, 2.0, 3.0])
    ok2 = RequestTiming(sent=0.0, token_times=[2.0, 2.5])
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
