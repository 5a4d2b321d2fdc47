"""The deploy_llm params of the suite's and the benchmarks' runs on a real deployment.

Small enough for a 2-core machine; every name is a DeploySpec field. Tests add their ports
(the ``free_ports`` fixture) and whatever the test is about.
"""

from __future__ import annotations

SMALL_RUN = {
    "benchmark_concurrency_levels": [1],
    "benchmark_duration_s": 5,
    "benchmark_requests": 4,
    "benchmark_warmup_requests": 1,
    "benchmark_max_tokens": 16,
    "benchmark_hf_baseline": False,
    # These runs test the pipeline; a deployment's lifecycle has tests of its own, and its
    # server would outlive the run.
    "promote": False,
}
# Long enough for a kill to land mid-benchmark; the retry runs the same sweep again.
KILL_RUN = {**SMALL_RUN, "benchmark_duration_s": 10, "benchmark_requests": 100}
