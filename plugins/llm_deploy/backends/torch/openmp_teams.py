"""Keep one OpenMP team in a serving process: load the engine on a thread that then ends.

PyTorch's CPU kernels run their parallel regions through OpenMP (libgomp). Every thread that
opens a parallel region gets a team of worker threads of its own, kept until that thread ends.
Once a process holds more such workers than it has cores, libgomp stops letting idle workers
spin and puts them to sleep between regions instead; a decode step opens about 200 regions, and
waking the workers for each one costs more than the work. In a Triton stub the model is loaded
on the main thread and driven by the in-flight batcher's thread: two teams on a 2-core machine
made every decode step about 1.5x slower than the same step with a single team (104 against
157-174 ms for SmolLM2 at 16 rows; served at concurrency 16 went from 78 to 112 tok/s with this
change alone).

So the loading runs on a thread of its own, joined before the batcher starts; its team goes
with it, and the batcher's thread is the only one that runs parallel regions from then on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_passing_thread(work: Callable[[], T], name: str = "engine-load") -> T:
    """``work()`` on a new thread that ends when it returns; its result, or its exception re-raised."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
