"""Which processes a test started, found by process tree, orphans included.

A stack's processes run in sessions of their own (so that a whole component can be signalled
as a group), and some of their children outlive their parents on purpose: tritonserver, started
by the start_server task, keeps running after that task's process exits. Linux reparents such
orphans to the nearest ancestor marked as a "child subreaper" instead of to PID 1, so
``ProcessTree`` marks this process as one: every process the stack ever started stays a
descendant of ours, and what is left after a test is exactly ``ProcessTree.ours()``.

A subreaper must also reap the orphans it adopts, or they stay zombies (and a pid check such as
``os.kill(pid, 0)`` would still see them). A background thread reaps zombie children that lie
outside this process's own session, i.e. those of the stack; children that the caller spawned in
its own session (``subprocess.run`` and the like) are left to their Popen objects.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from dataclasses import dataclass

import psutil

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    status: str  # psutil's: "running", "sleeping", "zombie", ...
    name: str  # basename of argv[0], or the kernel's name for a process without argv
    # argv joined by spaces. A process that set its title (Airflow's "airflow worker -- ...") has
    # one argv string that psutil splits at its spaces: match such titles on cmdline, not name.
    cmdline: str

    @property
    def zombie(self) -> bool:
        return self.status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)

    def __str__(self) -> str:
        return f"pid {self.pid} (ppid {self.ppid}, pgid {self.pgid}, {self.status}) {self.cmdline[:200]}"


def read_proc(pid: int) -> ProcInfo | None:
    try:
        return _info(psutil.Process(pid))
    except _GONE:
        return None


def _info(process: psutil.Process) -> ProcInfo:
    with process.oneshot():
        try:
            argv = process.cmdline()
        except psutil.ZombieProcess:
            argv = []
        name = os.path.basename(argv[0]) if argv else process.name()
        return ProcInfo(process.pid, process.ppid(), os.getpgid(process.pid), os.getsid(process.pid),
                        process.status(), name, " ".join(argv) or f"[{process.name()}]")


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except _GONE:
        return None


def descendants(root: int) -> list[ProcInfo]:
    """Every process below ``root`` (children, grandchildren, ...)."""
    found = []
    try:
        children = psutil.Process(root).children(recursive=True)
    except _GONE:
        return []
    for child in children:
        try:
            found.append(_info(child))
        except (*_GONE, ProcessLookupError):
            continue
    return found


class ProcessTree:
    """This process as the subreaper of everything it starts in other sessions.

    ``ours()`` lists the live processes below this one outside its own session: the stack's
    components, their children and every orphan they left. Processes that were already below
    this one when the tree was made (a session-wide daemon such as the docker tests' dockerd)
    and their children are not the stack's: they are neither listed nor killed. ``close()``
    gives the subreaper role back (call it after the stack is gone).
    """

    def __init__(self, reap_interval_s: float = 0.2):
        self.pid = os.getpid()
        self.sid = os.getsid(0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        self._libc = libc
        self._own: set[int] = set()  # pids that a Popen of ours waits for itself
        # pid -> start time, so that a recycled pid is not mistaken for the process it was.
        self._before = {p.pid: _start_time(p.pid) for p in descendants(self.pid)}
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, args=(reap_interval_s,),
                                        name="process-tree-reaper", daemon=True)
        self._reaper.start()

    def track(self, pid: int) -> None:
        """A direct child that a Popen will wait for: the reaper must leave its exit status alone."""
        self._own.add(pid)

    def ours(self) -> list[ProcInfo]:
        below = descendants(self.pid)
        parent = {p.pid: p.ppid for p in below}
        return [p for p in below if p.sid != self.sid and not p.zombie
                and not self._predates(p.pid, parent)]

    def _predates(self, pid: int, parent: dict[int, int]) -> bool:
        """Whether ``pid`` or one of its ancestors below us was there before this tree."""
        while pid in parent:
            if pid in self._before and self._before[pid] == _start_time(pid):
                return True
            pid = parent[pid]
        return False

    def kill_all(self, timeout_s: float = 10) -> list[ProcInfo]:
        """SIGKILL whatever is still ours; returns what was found (empty when nothing was left)."""
        leftovers = self.ours()
        deadline = time.monotonic() + timeout_s
        while (alive := self.ours()) and time.monotonic() < deadline:
            for proc in alive:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
            self.reap()
        return leftovers

    def reap(self) -> None:
        for proc in descendants(self.pid):
            if (proc.ppid == self.pid and proc.zombie and proc.sid != self.sid
                    and proc.pid not in self._own and proc.pid not in self._before):
                try:
                    os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._reaper.join()
        self.reap()
        self._libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def _reap_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.reap()
