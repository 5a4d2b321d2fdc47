"""How fast this machine is while the benchmark runs: a fixed workload timed before and after the sweep.

The regression check compares a run with the previous one of the same load. On a shared machine
two runs of an unchanged server differ by 15-25% when a neighbour takes CPU time, and the server
is not to blame. A fixed workload (float32 matrix products, the same in every run, on the
benchmark process's torch threads) timed a few times before and after the sweep says how fast
the machine was (the best try) and how much that moved during the run (the drift between the
best tries before and after). The report keeps both; ``report.compare`` divides the machine's
change out of the served figures when no better yardstick (the same run's HF baseline) is
there, and widens its threshold by the drift.

On a GPU host this measures the host's CPUs: it sees a loaded host (the client, the pre- and
postprocessing), not a throttled GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SIZE = 384
PRODUCTS = 48
REPEATS = 5


def measure(repeats: int = REPEATS, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """GFLOP/s of the fixed workload, once per repeat."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(SIZE, SIZE, generator=generator)
    b = torch.randn(SIZE, SIZE, generator=generator)
    flop = 2 * SIZE**3 * PRODUCTS
    torch.mm(a, b)  # warm-up: first call allocates and picks kernels
    samples = []
    with torch.inference_mode():
        for _ in range(repeats):
            started = clock()
            for _ in range(PRODUCTS):
                torch.mm(a, b)
            samples.append(flop / (clock() - started) / 1e9)
    return samples


def reference(before: list[float], after: list[float]) -> dict:
    """The report's ``machine`` block from the samples taken before and after the sweep."""
    import torch

    # The best of several tries is what the machine can do: one try can lose a few milliseconds to
    # a context switch that costs a minute-long sweep nothing, while a neighbour that keeps a
    # core busy lowers every try. Drift: how far that moved between the sweep's start and end.
    best = max(before + after)
    drift = abs(max(before) - max(after)) / best * 100
    return {"workload": f"{PRODUCTS} float32 {SIZE}x{SIZE} matrix products on {torch.get_num_threads()} threads",
            "gflops": round(best, 2), "drift_pct": round(drift, 1),
            "before": [round(s, 2) for s in before], "after": [round(s, 2) for s in after]}
