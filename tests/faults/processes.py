"""The process-tree check every failing scenario ends with: nothing of our server may survive.

"Ours" is decided by the tree, not by name alone (other suites run servers on this machine at the
same time): a tritonserver, python-backend stub or MPI process is ours when it descends from this
test process, belongs to a process group we started, or names one of our directories (a server
started by a step's child process is re-parented to init when that child dies, but its
--model-repository and its stubs' model.py paths still point into the test's tmp dir).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from llm_deploy.server.tritonserver import SERVER_PROCESS_NAMES


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    name: str  # basename of argv[0]
    cmdline: str


def all_processes() -> list[Proc]:
    """Live processes with an argv (kernel threads and zombies run nothing)."""
    procs = []
    for process in psutil.process_iter(["cmdline", "ppid", "status"]):
        argv = process.info["cmdline"]
        if not argv or process.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        try:
            pgid = os.getpgid(process.pid)
        except ProcessLookupError:
            continue
        procs.append(Proc(process.pid, process.info["ppid"], pgid, Path(argv[0]).name, " ".join(argv)))
    return procs


def _descendants(procs: list[Proc], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def server_processes(roots: Iterable[Path | str] = (), pgids: Iterable[int] = (),
                     children: bool = True) -> list[Proc]:
    """Our live tritonserver / triton_python_backend_stub / mpirun / orted processes
    (``children=False``: only those of ``roots`` and ``pgids``, not every descendant of ours)."""
    procs = all_processes()
    mine = _descendants(procs, os.getpid()) if children else set()
    roots = [str(root) for root in roots]
    pgids = set(pgids)
    return [
        p for p in procs
        if p.name in SERVER_PROCESS_NAMES
        and (p.pid in mine or p.pgid in pgids or any(root in p.cmdline for root in roots))
    ]


def assert_no_server_processes(roots: Iterable[Path | str] = (), pgids: Iterable[int] = (),
                               settle_s: float = 10) -> None:
    """Fail listing every leftover; ``settle_s`` lets processes that are being killed finish dying."""
    roots, pgids = list(roots), list(pgids)
    deadline = time.monotonic() + settle_s
    while (left := server_processes(roots, pgids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "server processes left running:\n" + "\n".join(
        f"  pid {p.pid} ({p.name}, pgid {p.pgid}): {p.cmdline[:200]}" for p in left)
