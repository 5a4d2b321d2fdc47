"""The ``local`` runner: a step's command as a subprocess of the worker itself.

For a worker that already runs inside the image the step needs (e.g. a Celery worker inside the
NGC TensorRT-LLM image), and for the embedded CPU run. The argv list is executed directly, never
through a shell; output streams into the task log line by line; the command runs in its own
process group, so a failure, a timeout or a killed task ends the whole group (mpirun and its
ranks included), never only the parent.

Container-only settings have no local meaning and are ignored on purpose: ``image`` (the worker
is the image), ``mounts`` (paths are the worker's own), ``shm_size``/``ulimits``/``network_host``
(the worker's container was started with them). A GPU request with explicit device ids becomes
``CUDA_VISIBLE_DEVICES``; a bare count leaves the worker's devices as they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_deploy.errors import StepError
from llm_deploy.runners.command import (
    CommandFailed,
    CommandResult,
    CommandTimedOut,
    ServiceRecord,
    StepCommand,
    VolumePath,
)

log = logging.getLogger(__name__)

KEPT_LINES = 5000  # enough for any step's outcome line and an error's context, bounded for chatty builds
KILL_GRACE_S = 10.0
# After the command exits, how long to keep reading output that children still write to the pipe.
DRAIN_AFTER_EXIT_S = 2.0


class LocalRunner:
    name = "local"

    def __init__(self, *, python: str | None = None, kill_grace_s: float = KILL_GRACE_S) -> None:
        import sys

        # The interpreter that runs Python steps (llm_deploy.cli): the worker's own.
        self.python = python or sys.executable
        self.kill_grace_s = kill_grace_s

    # --- one-shot commands ----------------------------------------------------------------------

    def run(self, command: StepCommand) -> CommandResult:
        """Run to completion; raise CommandFailed on a non-zero exit, CommandTimedOut past timeout_s."""
        prepare_volume_paths(command.volume_paths)
        log.info("running %s", command.describe())
        started = time.monotonic()
        process = subprocess.Popen(
            list(command.argv),
            cwd=command.workdir,
            env=self.environment(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we can end all of it
            text=True,
            errors="replace",
            bufsize=1,
        )
        lines: deque[str] = deque(maxlen=KEPT_LINES)
        reader = threading.Thread(target=_pump, args=(process.stdout, lines, command.name), daemon=True)
        reader.start()
        try:
            exit_code = process.wait(timeout=command.timeout_s)
        except subprocess.TimeoutExpired:
            self._kill_group(process)
            reader.join(DRAIN_AFTER_EXIT_S)
            raise CommandTimedOut(command, None, list(lines), why=f"ran past its {command.timeout_s}s timeout and was killed") from None
        except BaseException:
            # Task killed (SIGTERM from Airflow), KeyboardInterrupt, ...: leave nothing behind.
            self._kill_group(process)
            raise
        if exit_code != 0:
            self._kill_group(process)
        # A background child may still hold the pipe open; do not wait on it forever.
        reader.join(DRAIN_AFTER_EXIT_S)
        seconds = time.monotonic() - started
        if exit_code != 0:
            raise CommandFailed(command, exit_code, list(lines))
        if _group_alive(process.pid):
            log.warning("%s exited but left processes running in its group; use start() for services",
                        command.name)
        log.info("%s finished in %.1fs", command.name, seconds)
        return CommandResult(exit_code, list(lines), seconds)

    def environment(self, command: StepCommand) -> dict[str, str]:
        env = {**os.environ, **command.env, **command.secret_env}
        if command.gpus.device_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(command.gpus.device_ids)
        return env

    def _kill_group(self, process: subprocess.Popen) -> None:
        kill_process_group(process.pid, grace_s=self.kill_grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.kill_grace_s)

    # --- background services (the server) -------------------------------------------------------

    def start(self, command: StepCommand, log_path: str | Path) -> ServiceRecord:
        """Start in the background, output to ``log_path``; it outlives this task until stop()."""
        prepare_volume_paths(command.volume_paths)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s; output: %s", command.describe(), log_path)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                list(command.argv),
                cwd=command.workdir,
                env=self.environment(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return ServiceRecord(runner=self.name, name=command.name, pid=process.pid, pgid=process.pid,
                             start_ticks=start_ticks(process.pid), log_path=str(log_path))

    def alive(self, record: ServiceRecord | Mapping[str, Any]) -> bool:
        """The service's process, or what it started in its group (a launcher such as
        launch_triton_server.py exits once mpirun is up), is still running."""
        record = _as_record(record)
        ticks = start_ticks(record.pid)
        if ticks is not None and ticks != record.start_ticks:
            return False  # the pid was reused: ours, and so its whole group, is gone
        return (ticks is not None and not _is_zombie(record.pid)) or _group_alive(record.pgid)

    def stop(self, record: ServiceRecord | Mapping[str, Any]) -> bool:
        """End the service's whole process group; True if it was still running."""
        record = _as_record(record)
        was_running = self.alive(record)
        if start_ticks(record.pid) not in (None, record.start_ticks):
            # Our leader is gone and its pid was handed to another process, which means our whole
            # group is gone too (a pid is not reused while its group lives): nothing of ours to stop.
            log.warning("pid %d now belongs to another process; %s is long gone", record.pid, record.name)
            return False
        kill_process_group(record.pgid, grace_s=self.kill_grace_s)
        log.info("%s (pid %d) %s", record.name, record.pid, "stopped" if was_running else "was not running")
        return was_running


def prepare_volume_paths(paths: tuple[VolumePath, ...]) -> None:
    """Writable dirs are created; read-only ones must exist (the same check the docker runner makes)."""
    for entry in paths:
        path = Path(entry.path)
        if entry.writable:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise StepError(f"{path} does not exist on the engines volume (an earlier step's output?)")


def kill_process_group(pgid: int, *, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace_s``.

    A process group id is not reused while any member is alive, so signalling the group of a
    process we started can only reach our own processes.
    """
    if pgid <= 1:
        return
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Any member of the group that is not a zombie (zombies still count for killpg(…, 0))."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _pump(stream, lines: deque[str], name: str) -> None:
    """Copy the command's output into the task log, one line at a time, as it comes."""
    for raw in stream:
        line = raw.rstrip("\n")
        lines.append(line)
        log.info("[%s] %s", name, line)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, names one process for good."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def _as_record(record: ServiceRecord | Mapping[str, Any]) -> ServiceRecord:
    return record if isinstance(record, ServiceRecord) else ServiceRecord.from_xcom(record)
