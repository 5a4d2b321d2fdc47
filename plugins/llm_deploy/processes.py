"""Processes and process groups, on psutil: the one place that decides "is it still ours and alive".

Three facts shape every function here:

- **A pid names a process only together with its start time.** Pids are reused; a record kept in
  XCom or on the volume (a server, an engine's lease) therefore stores ``ProcessIdentity`` (pid
  and psutil's ``create_time``), and a pid that now has another start time belongs to someone
  else, who is left alone. "Another" means more than ``START_TIME_SLACK_S`` apart: psutil adds the
  kernel's boot time (``btime``, the wall clock minus the uptime) to a start counted from boot,
  and ``btime`` moves by a whole second as the clock is disciplined (seen here within 20 s:
  1796312105, then 1796312106), so one process read twice minutes apart can differ by 1 s. Exact
  equality once took a live server for "long gone" and left it running.
- **A zombie is not alive.** A process that exited stays in the table until its parent reaps it;
  ``os.kill(pid, 0)`` and ``killpg(pgid, 0)`` still succeed on it. Here it counts as gone, and
  ``reap`` collects it when it is our child.
- **A process group id is not reused while any member lives.** So signalling the group of a
  process we started can only reach our own processes, as long as one of them is still there.

Servers run in sessions of their own (``start_new_session``) so that they outlive the Airflow task
that started them and can be ended as a group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

_DEAD = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})
# Two reads of one process's create_time differ by btime's steps; a pid reused within this long
# of its last owner's start would have to cycle through the whole pid space first.
START_TIME_SLACK_S = 1.5
_POLL_S = 0.1


def same_start(one: float, other: float) -> bool:
    """Whether two create_time readings name the same start (see START_TIME_SLACK_S)."""
    return abs(one - other) <= START_TIME_SLACK_S


@dataclass(frozen=True)
class ProcessIdentity:
    """One process for good: its pid and when it started (None: it was gone when looked at)."""

    pid: int
    create_time: float | None

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return cls(pid, None)

    def process(self) -> psutil.Process | None:
        """The live process this identity names, or None (gone, a zombie, or the pid reused)."""
        if self.pid <= 0 or self.create_time is None:
            return None
        try:
            process = psutil.Process(self.pid)
            if not same_start(process.create_time(), self.create_time) or process.status() in _DEAD:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return process

    def alive(self) -> bool:
        return self.process() is not None

    def reused(self) -> bool:
        """The pid now belongs to another process: ours has exited long since, group included."""
        current = ProcessIdentity.of(self.pid).create_time
        return current is not None and self.create_time is not None and not same_start(current, self.create_time)

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ProcessIdentity:
        return cls(int(record.get("pid") or 0), record.get("create_time"))


def is_alive(pid: int) -> bool:
    """Some process (not a zombie) has this pid; for a pid recorded without its start time."""
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() not in _DEAD
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's process: alive, and not ours to judge


def program_name(pid: int) -> str:
    """The basename of argv[0] ('' when the process is gone or has no argv, as a kernel thread).

    Not psutil's ``name()``: the kernel keeps only 15 characters of it, and the python backend's
    ``triton_python_backend_stub`` does not fit.
    """
    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""
    return Path(argv[0]).name if argv else ""


def group_members(pgid: int, only: Collection[str] | None = None) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` and, when its leader started a session
    (as every server here does), of that session; ``only``: with these program names.

    The session counts because mpirun puts each rank it starts in a process group of its own,
    inside mpirun's session: a server launched under mpirun is its whole session.
    """
    if pgid <= 1:
        return []
    members = []
    for process in psutil.process_iter(["status"]):
        if process.info["status"] in _DEAD:
            continue
        try:
            if pgid not in (os.getpgid(process.pid), os.getsid(process.pid)):
                continue
        except ProcessLookupError:
            continue
        if only is None or program_name(process.pid) in only:
            members.append(process.pid)
    return sorted(members)


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def reap(pid: int) -> None:
    """Collect the exit status of our own child ``pid`` if it has exited (no-op for others')."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal the members of ``group_members(pgid)``; False when none is left to signal."""
    if pgid <= 1:  # 0 would be our own group, 1 init's
        return False
    signalled = False
    try:
        os.killpg(pgid, sig)
        signalled = True
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False
    for pid in group_members(pgid):  # the session's other groups (mpirun's ranks)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) != pgid:
                os.kill(pid, sig)
                signalled = True
    return signalled


def stop_group(pgid: int, *, leader: ProcessIdentity | None = None, grace_s: float = 10.0,
               kill_wait_s: float = 10.0) -> None:
    """End process group ``pgid``: SIGTERM, then SIGKILL to whatever is left after ``grace_s``.

    With a live ``leader``, the SIGTERM goes to the leader alone, and the group gets it only if it
    is still there once the leader has gone: a server (tritonserver, our supervisor) ends its own
    children in order on SIGTERM, tritonserver unloading its models so that each python stub runs
    its finalize(); a SIGTERM to the whole group would kill the stubs under it.
    """
    deadline = time.monotonic() + grace_s
    if leader is not None and (process := leader.process()) is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
        while leader.alive() and time.monotonic() < deadline:
            reap(leader.pid)
            time.sleep(_POLL_S)
        reap(leader.pid)
    if group_alive(pgid):
        signal_group(pgid, signal.SIGTERM)
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if not group_alive(pgid):
        return
    log.warning("process group %d still running %.0f s after SIGTERM: SIGKILL", pgid, grace_s)
    signal_group(pgid, signal.SIGKILL)
    kill_deadline = time.monotonic() + kill_wait_s
    while (left := group_members(pgid)) and time.monotonic() < kill_deadline:
        for pid in left:
            reap(pid)
        time.sleep(_POLL_S)
    if left:
        log.error("processes %s of group %d survived SIGKILL", left, pgid)
