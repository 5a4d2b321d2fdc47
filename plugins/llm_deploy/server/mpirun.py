"""A server's ranks under Open MPI's mpirun, as launch_triton_server.py --world_size starts them.

One mpirun, one application context per rank: rank 0 is tritonserver (its tensorrt_llm model
leads), ranks 1.. are the given follower commands. mpirun is the process the runner starts and
stops: it forwards SIGTERM to every rank, and when one rank dies it ends the others and exits,
so a rank's death is the server's death, with mpirun's line naming the rank in the server log.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_deploy.errors import NonRetryableError

# mpirun's own words when a rank ends early, e.g. "mpirun noticed that process rank 1 with PID
# 4242 on node host exited on signal 9 (Killed)."
RANK_DIED = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on signal \d+[^\n]*|"
                       r"process rank (\d+) with PID \d+ on node \S+ exited[^\n]*")


@dataclass(frozen=True)
class MpiLaunch:
    """Ranks 1..N-1 (their argv) and the environment every rank shares."""

    followers: Sequence[Sequence[str]]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return len(self.followers) + 1

    def argv(self, server_argv: Sequence[str]) -> list[str]:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise NonRetryableError(
                f"world_size={self.world_size} starts its ranks with Open MPI's mpirun, which is not on this "
                "worker's PATH: install it (Debian: apt-get install openmpi-bin) or use world_size=1")
        # --bind-to none: Open MPI pins each rank to one core by default, which would squeeze
        # tritonserver and all its python stubs onto a single core. --noprefix: started by its
        # full path, mpirun puts its own prefix (/usr/bin, /usr/lib) first on the ranks' PATH and
        # LD_LIBRARY_PATH, and the python stubs would then start the system's python3, not ours.
        head = [mpirun, "--noprefix", "--bind-to", "none", "--oversubscribe", "--tag-output"]
        if os.geteuid() == 0:  # containers often run as root; mpirun refuses that unless told
            head.append("--allow-run-as-root")
        argv = [*head, "-n", "1", *server_argv]
        for follower in self.followers:
            argv += [":", "-n", "1", *follower]
        return argv


def ranks_that_died(log_text: str) -> list[str]:
    """mpirun's lines about ranks that ended early, from a server log."""
    return [match.group(0) for match in RANK_DIED.finditer(log_text)]
