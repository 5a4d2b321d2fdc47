"""The regression verdict replayed on four real benchmark runs of one server, recorded on a 2-core
machine by benchmarks/regression_verdict.py (the quick start's load: SmolLM2-135M-Instruct at
concurrency 1, 4 and 16, the HF baseline on, the machine's fixed workload timed around the sweep):

    quiet        the reference run          quiet_again  an identical server, run again
    loaded       the same server while a neighbour spins on one of the two cores
    slowed       a server whose every decode step is delayed 20 ms, on a quiet machine

Every run's figures moved against ``quiet``; only ``slowed`` is a slower server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_deploy.bench.report import compare

PAIRS = Path(__file__).resolve().parents[1] / "data" / "regression_pairs"
THRESHOLD_PCT = 10.0


def recorded(name: str) -> dict:
    return json.loads((PAIRS / f"{name}.json").read_text())


def as_measured(report: dict) -> dict:
    """Without the yardsticks: how the check judged before it measured the machine."""
    return {**report, "baseline": None, "machine": None}


@pytest.mark.parametrize("name", ["quiet_again", "loaded"])
def test_the_same_server_is_not_flagged_though_its_figures_moved(name):
    quiet, again = recorded("quiet"), recorded(name)
    assert compare(as_measured(again), as_measured(quiet), THRESHOLD_PCT)["regressions"], \
        "as measured, some figures moved past the threshold: the check used to cry wolf here"

    verdict = compare(again, quiet, THRESHOLD_PCT)

    assert verdict["regressions"] == []
    assert verdict["verdict"] in ("no regression", "inconclusive")


def test_a_machine_far_slower_than_before_makes_the_verdict_inconclusive_not_a_pass():
    verdict = compare(recorded("loaded"), recorded("quiet"), THRESHOLD_PCT)
    assert verdict["verdict"] == "inconclusive"
    assert verdict["machine"]["factor"] < 0.75 and "rerun both" in verdict["reason"]


def test_a_server_slowed_on_purpose_is_flagged_on_a_quiet_machine():
    verdict = compare(recorded("slowed"), recorded("quiet"), THRESHOLD_PCT)

    assert verdict["verdict"] == "regressed"
    assert abs(verdict["machine"]["factor"] - 1) < 0.1, "the machine was as fast as before"
    flagged = {(r["concurrency"], r["metric"]) for r in verdict["regressions"]}
    # 20 ms more per decode step: one request's inter-token latency grows by far more than the noise.
    assert {(1, "inter_token_latency_ms.p50"), (1, "output_token_throughput_per_s")} <= flagged
