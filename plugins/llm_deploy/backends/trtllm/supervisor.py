"""The process a runner watches while upstream's launch_triton_server.py serves.

launch_triton_server.py starts ``mpirun ... tritonserver`` in the background and exits at once,
so neither a runner nor a container can watch the launcher. The supervisor runs the commands it
is given in order (the wheel's install steps, then the launcher) and then lives exactly as long as
anything they started: it marks itself a *child subreaper*, so the launcher's orphans (mpirun and
its ranks) become its children and ``os.wait`` sees each of them exit; no process table scan.

On SIGTERM (the local runner's stop, ``docker stop``) it passes SIGTERM to its whole process group,
waits for its children, and SIGKILLs the group if any is left after the grace period.

It runs where TensorRT-LLM runs, often inside the release's NGC container where llm_deploy is not
installed, so this file uses the standard library only and travels as the source of a
``python3 -c`` (``source()``); its arguments are one JSON list of argv lists.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
GRACE_S = 20.0
ALL_EXITED = "llm_deploy: every process the launcher started has exited"


def source() -> str:
    """This module's code, for ``python3 -c`` (``__main__`` below runs it)."""
    with open(__file__, encoding="utf-8") as handle:
        return handle.read()


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        # Without it the launcher's orphans go to init and this supervisor exits early; say so.
        print(f"llm_deploy: prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}", flush=True)


def wait_children(deadline: float | None = None) -> bool:
    """Reap children until none is left (True) or ``deadline`` passes (False)."""
    while True:
        try:
            if deadline is None:
                os.wait()
                continue
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def stop(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    if not wait_children(time.monotonic() + GRACE_S):
        os.killpg(0, signal.SIGKILL)  # ends this supervisor too
    sys.exit(0)


def main(argv: list[str]) -> int:
    become_subreaper()
    signal.signal(signal.SIGTERM, stop)
    for command in json.loads(argv[1]):
        print("+ " + " ".join(command), flush=True)
        code = subprocess.call(command)
        if code:
            return code
    wait_children()
    print(ALL_EXITED, flush=True)
    return 1  # a server that stops by itself has failed


if __name__ == "__main__":
    sys.exit(main(sys.argv))
