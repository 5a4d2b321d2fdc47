"""Load, the CI version of benchmarks/load_test.py: 64 streaming clients for 30 s on the real
SmolLM2 deployment (torch, CPU, 127.0.0.1). Every request must complete: none failed, none lost.
Server RSS is reported (30 s on a shared machine is too short and noisy to gate on; the 5-minute
run in benchmarks/results/load_test.json is where growth is judged).
"""

from __future__ import annotations

import json

import pytest

from benchmarks import load_test
from tests.faults.processes import assert_no_server_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def test_64_streaming_clients_for_30_seconds_lose_nothing(record_property, capsys):
    figures = load_test.run(clients=64, duration_s=30, max_tokens=16)

    with capsys.disabled():
        print("\nload (30 s):", json.dumps({k: figures[k] for k in (
            "sent", "completed", "failed", "lost", "tokens_received", "tokens_per_s", "rss_growth_pct")}),
            "server RSS KiB:", json.dumps({k: v for k, v in figures["server_rss_kib"].items()
                                           if k != "processes_at_end"}))
    for name in ("sent", "completed", "tokens_received", "rss_growth_pct"):
        record_property(name, figures[name])
    assert figures["accounted"], figures
    assert (figures["failed"], figures["lost"]) == (0, 0), figures["errors"]
    assert figures["sent"] >= 64 and figures["completed"] == figures["sent"]
    assert figures["tokens_received"] >= figures["completed"]  # at least one streamed token each
    assert figures["server_rss_kib"]["end"] > 0
    assert_no_server_processes(pgids=[figures["server_pgid"]])
