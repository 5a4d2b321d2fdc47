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
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_deploy import processes
from llm_deploy.errors import StepError
from llm_deploy.processes import ProcessIdentity
from llm_deploy.runners.command import (
    CommandFailed,
    CommandResult,
    CommandTimedOut,
    Service,
    StepCommand,
    VolumePath,
)

log = logging.getLogger(__name__)

KEPT_LINES = 5000  # enough for any step's outcome line and an error's context, bounded for chatty builds
KILL_GRACE_S = 10.0
# A server unloading its models after SIGTERM (tritonserver waits --exit-timeout-secs for clients).
STOP_GRACE_S = 30.0
SERVICE_LOG_TAIL = 2000
# After the command exits, how long to keep reading output that children still write to the pipe.
DRAIN_AFTER_EXIT_S = 2.0


class LocalRunner:
    name = "local"

    def __init__(self, *, python: str | None = None, kill_grace_s: float = KILL_GRACE_S,
                 stop_grace_s: float = STOP_GRACE_S) -> None:
        # The interpreter that runs Python steps (llm_deploy.cli): the worker's own.
        self.python = python or sys.executable
        self.kill_grace_s = kill_grace_s
        self.stop_grace_s = stop_grace_s

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
        if processes.group_alive(process.pid):
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
        # One-shot commands (pip, trtllm-build, mpirun ...) get SIGTERM as a whole group.
        processes.stop_group(process.pid, grace_s=self.kill_grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.kill_grace_s)

    # --- background services (the server) -------------------------------------------------------

    def start(self, command: StepCommand, log_path: str | Path) -> Service:
        """Start in the background, output to ``log_path``; it outlives this task until stop()."""
        prepare_volume_paths(command.volume_paths)
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s; output: %s", command.describe(), log_path)
        with open(log_path, "ab") as out:
            offset = out.tell()
            process = subprocess.Popen(
                list(command.argv),
                cwd=command.workdir,
                env=self.environment(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # leads its own group; outlives this task
            )
        leader = ProcessIdentity.of(process.pid)
        return Service(runner=self.name, name=command.name, pid=process.pid, pgid=process.pid,
                       create_time=leader.create_time, log_path=str(log_path), log_offset=offset)

    def alive(self, record: Service | Mapping[str, Any]) -> bool:
        """The service's process, or what it started in its group (a launcher may exit once its
        server is up), is still running."""
        record = Service.of(record)
        leader = ProcessIdentity(record.pid, record.create_time)
        if leader.reused():
            return False  # ours exited long ago, and a group does not outlive its pid's reuse
        processes.reap(record.pid)
        return leader.alive() or processes.group_alive(record.pgid)

    def logs(self, record: Service | Mapping[str, Any], tail: int = SERVICE_LOG_TAIL) -> list[str]:
        """The last ``tail`` lines this start of the service wrote to its log."""
        record = Service.of(record)
        try:
            with open(record.log_path, "rb") as handle:
                handle.seek(record.log_offset)
                data = handle.read()
        except (OSError, ValueError):
            return []
        return data.decode("utf-8", errors="replace").splitlines()[-tail:]

    def stop(self, record: Service | Mapping[str, Any], *, grace_s: float | None = None) -> bool:
        """End the service: SIGTERM to its leader, then to its group, SIGKILL after the grace
        period (``stop_grace_s``). True if its leader (the process start() started) was still
        running; what a crashed leader left in its group is ended either way."""
        record = Service.of(record)
        leader = ProcessIdentity(record.pid, record.create_time)
        if leader.reused():
            log.warning("pid %d now belongs to another process; %s is long gone", record.pid, record.name)
            return False
        processes.reap(record.pid)
        was_running = leader.alive()
        left_behind = not was_running and processes.group_alive(record.pgid)
        processes.stop_group(record.pgid, leader=leader,
                             grace_s=self.stop_grace_s if grace_s is None else grace_s)
        state = "stopped" if was_running else "had exited; ended what it left in its group" if left_behind else "was not running"
        log.info("%s (pid %d) %s", record.name, record.pid, state)
        return was_running


def prepare_volume_paths(paths: tuple[VolumePath, ...]) -> None:
    """Writable dirs are created; read-only ones must exist (the same check the docker runner makes)."""
    for entry in paths:
        path = Path(entry.path)
        if entry.writable:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise StepError(f"{path} does not exist on the engines volume (an earlier step's output?)")


def _pump(stream, lines: deque[str], name: str) -> None:
    """Copy the command's output into the task log, one line at a time, as it comes."""
    for raw in stream:
        line = raw.rstrip("\n")
        lines.append(line)
        log.info("[%s] %s", name, line)
