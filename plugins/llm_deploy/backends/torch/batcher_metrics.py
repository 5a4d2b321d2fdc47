"""The in-flight batcher's counters on Triton's metrics endpoint, as the C++ backend exports its own.

tensorrtllm_backend publishes its batch manager's state through Triton's custom metrics
(``nv_trt_llm_request_metrics``, ``nv_trt_llm_inflight_batcher_metrics``,
``nv_trt_llm_general_metrics``, refreshed every ``stats_check_period_ms``); the twin's stub does
the same with the same names and labels, so a dashboard built on one reads the other. It adds
what upstream has no name for and a benchmark needs to say where a step's time goes:

- ``llm_deploy_batcher_seconds_total{phase="prefill"|"decode"|"emit"}``: the batcher thread's
  time in prefills, in decode steps (the model's forward and the greedy pick) and in handing
  tokens to their requests (building and sending the responses);
- ``llm_deploy_batcher_decode_rows_total``: rows over all decode steps (÷ iterations = the mean
  batch of a step);
- ``llm_deploy_batcher_requests_total{outcome="completed"|"failed"|"cancelled"}`` and
  ``llm_deploy_batcher_generated_tokens_total``.

The values are read from ``InflightBatcher.stats`` on a thread of their own every period and sent
when they changed; each update is a message from the stub to the server, so none is sent per step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

PERIOD_S = 1.0
PHASES = {"prefill": "prefill_s", "decode": "decode_s", "emit": "emit_s"}
OUTCOMES = ("completed", "failed", "cancelled")


class BatcherMetrics:
    """Publishes ``stats()`` (an ``InflightBatcher.stats`` dict) through ``pb_utils``' MetricFamily."""

    def __init__(self, pb_utils: Any, stats: Callable[[], dict], *, model: str, version: str,
                 max_batch_size: int, period_s: float = PERIOD_S) -> None:
        family = pb_utils.MetricFamily
        labels = {"model": model, "version": version}

        def gauge(name: str, description: str) -> Any:
            return family(name=name, description=description, kind=family.GAUGE)

        def counter(name: str, description: str) -> Any:
            return family(name=name, description=description, kind=family.COUNTER)

        # Families must outlive their metrics (the stub refuses otherwise): kept on self.
        self._families = [
            gauge("nv_trt_llm_request_metrics", "TRT LLM request metrics"),
            gauge("nv_trt_llm_inflight_batcher_metrics", "TRT LLM inflight_batcher-specific metrics"),
            gauge("nv_trt_llm_general_metrics", "General TRT LLM metrics"),
            counter("llm_deploy_batcher_seconds_total", "Seconds the in-flight batcher thread spent per phase"),
            counter("llm_deploy_batcher_decode_rows_total", "Rows over all decode steps"),
            counter("llm_deploy_batcher_requests_total", "Requests the in-flight batcher finished, by outcome"),
            counter("llm_deploy_batcher_generated_tokens_total", "Tokens the in-flight batcher generated"),
        ]
        requests, batcher, general, seconds, rows, finished, generated = self._families
        self._gauges = {
            "active": requests.Metric(labels={**labels, "request_type": "active"}),
            "max": requests.Metric(labels={**labels, "request_type": "max"}),
            "scheduled": requests.Metric(labels={**labels, "request_type": "scheduled"}),
            "waiting": requests.Metric(labels={**labels, "request_type": "waiting"}),
            "generation_requests": batcher.Metric(
                labels={**labels, "inflight_batcher_specific_metric": "generation_requests"}),
            "iteration_counter": general.Metric(labels={**labels, "general_type": "iteration_counter"}),
            "timestamp": general.Metric(labels={**labels, "general_type": "timestamp"}),
        }
        self._counters = {
            **{key: seconds.Metric(labels={**labels, "phase": phase}) for phase, key in PHASES.items()},
            "decode_rows": rows.Metric(labels=labels),
            **{outcome: finished.Metric(labels={**labels, "outcome": outcome}) for outcome in OUTCOMES},
            "generated_tokens": generated.Metric(labels=labels),
        }
        self._gauges["max"].set(max_batch_size)
        self._stats = stats
        self._sent = {key: 0.0 for key in self._counters}
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tensorrt_llm-metrics", daemon=True)

    def start(self) -> BatcherMetrics:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop updating. Called from the model's finalize(), where no update may be sent: while a
        model unloads, the server answers none of its stub's messages, so one sent now (or a
        metric deleted now) would wait for ever and hold the unload, and with it every later load
        of an explicit-mode server, up (a deployment's version swap). The metrics stay as they
        are; the stub drops them with the model."""
        self._stop.set()
        if self._thread is not threading.current_thread() and self._thread.is_alive():
            self._thread.join(self._period_s * 2)

    def publish(self, stats: dict | None = None) -> None:
        stats = self._stats() if stats is None else stats
        active, queued = stats["active"], stats["queued"]
        for key, value in (("active", active + queued), ("scheduled", active), ("waiting", queued),
                           ("generation_requests", active), ("iteration_counter", stats["steps"]),
                           ("timestamp", int(time.time()))):
            self._gauges[key].set(value)
        totals = {**stats, "failed": stats["failed"] - stats["cancelled"]}  # the batcher counts cancels as failures
        for key, metric in self._counters.items():
            # Counters only go up: add what happened since the last update.
            delta = totals[key] - self._sent[key]
            if delta > 0:
                metric.increment(delta)
                self._sent[key] = totals[key]

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self._period_s):
            try:
                stats = self._stats()
                # Only what changed goes out: an idle server's stub sends nothing, so a stub whose
                # server died (killed) is never caught waiting on an answer and exits at once.
                if stats != last:
                    self.publish(stats)
                    last = stats
            except Exception:  # noqa: BLE001 - metrics must never take the model down
                logger.exception("could not publish the in-flight batcher's metrics")
