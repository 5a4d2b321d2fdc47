"""The batcher's counters as Triton custom metrics: upstream's names, counters that only go up."""

from __future__ import annotations

import time
import types

from llm_deploy.backends.torch.batcher_metrics import BatcherMetrics


class FakeMetric:
    def __init__(self, labels: dict) -> None:
        self.labels, self.value = labels, 0.0

    def set(self, value: float) -> None:
        self.value = value

    def increment(self, value: float) -> None:
        assert value > 0, "a counter only goes up"
        self.value += value


class FakeFamily:
    GAUGE, COUNTER = "gauge", "counter"
    made: list[FakeFamily] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind, self.metrics = name, kind, []
        FakeFamily.made.append(self)

    def Metric(self, labels: dict) -> FakeMetric:  # noqa: N802 - the stub's spelling
        metric = FakeMetric(labels)
        self.metrics.append(metric)
        return metric


def value(name: str, **labels) -> float:
    family = next(f for f in FakeFamily.made if f.name == name)
    return next(m.value for m in family.metrics if labels.items() <= m.labels.items())


def stats(**changes) -> dict:
    base = dict(submitted=0, completed=0, failed=0, cancelled=0, steps=0, prefills=0, generated_tokens=0,
                max_active_seen=0, prefill_s=0.0, decode_s=0.0, emit_s=0.0, decode_rows=0, active=0, queued=0)
    return {**base, **changes}


def test_published_values_follow_the_batcher():
    FakeFamily.made = []
    now = {"stats": stats()}
    metrics = BatcherMetrics(types.SimpleNamespace(MetricFamily=FakeFamily), lambda: now["stats"],
                             model="tensorrt_llm", version="1", max_batch_size=16)
    now["stats"] = stats(steps=10, decode_rows=120, decode_s=0.9, prefill_s=0.2, emit_s=0.05, active=12, queued=3,
                         completed=4, failed=2, cancelled=1, generated_tokens=130)
    metrics.publish()
    now["stats"] = stats(steps=11, decode_rows=132, decode_s=1.0, prefill_s=0.2, emit_s=0.06, active=12, queued=0,
                         completed=4, failed=2, cancelled=1, generated_tokens=142)
    metrics.publish()

    assert value("nv_trt_llm_request_metrics", request_type="max") == 16
    assert value("nv_trt_llm_request_metrics", request_type="active") == 12
    assert value("nv_trt_llm_request_metrics", request_type="waiting") == 0
    assert value("nv_trt_llm_general_metrics", general_type="iteration_counter") == 11
    assert value("llm_deploy_batcher_seconds_total", phase="decode") == 1.0
    assert value("llm_deploy_batcher_seconds_total", phase="prefill") == 0.2
    assert value("llm_deploy_batcher_decode_rows_total") == 132
    assert value("llm_deploy_batcher_requests_total", outcome="failed") == 1  # cancels counted on their own
    assert value("llm_deploy_batcher_requests_total", outcome="cancelled") == 1
    assert value("llm_deploy_batcher_generated_tokens_total") == 142
    assert all(m.labels["model"] == "tensorrt_llm" and m.labels["version"] == "1"
               for f in FakeFamily.made for m in f.metrics)


def test_close_stops_the_updates_without_sending_one():
    """finalize() calls close(): no update may go to the server then (it answers none while unloading)."""
    FakeFamily.made = []
    reads = []

    def read_stats() -> dict:
        reads.append(time.monotonic())
        return stats()

    metrics = BatcherMetrics(types.SimpleNamespace(MetricFamily=FakeFamily), read_stats, model="m", version="1",
                             max_batch_size=2, period_s=0.02).start()
    time.sleep(0.1)
    metrics.close()
    closed = len(reads)
    time.sleep(0.1)
    assert closed >= 1 and len(reads) == closed
