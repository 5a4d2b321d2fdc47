"""Keeps a deployment's tritonserver running: ``python -m llm_deploy.deployment.supervisor <dir>``.

Started detached by ``server.start`` (a session of its own, so it outlives the Airflow task), it
runs tritonserver as its child with the command in ``<dir>/server.json`` (``launch``, after its
setup commands) plus one
``--load-model`` per model of the version that is live *now* (read from the record at each
start, so a restart after a promotion or rollback serves what was promoted, not what was first
started). If the server exits without being asked to (after it was ready once: a first start that fails is
the caller's error, and the supervisor exits with it), the supervisor records it in the
deployment's record (``restarts``, a ``server_exited`` event) and starts it again, waiting a
little longer after each quick failure. On SIGTERM (``server.stop``) it stops the server and exits.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from llm_deploy.deployment import container_entry, record

STOP_GRACE_S = 30.0
# A server that ran this long was healthy: its next failure starts the backoff from the beginning.
HEALTHY_AFTER_S = 60.0
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
READY_TIMEOUT_S = 900.0


def run_setup(setup: list[list[str]], env: dict[str, str]) -> int:
    """The launch's setup commands, in order; the first failing one's exit code, else 0."""
    for command in setup:
        print(f"llm_deploy supervisor: + {' '.join(command)}", flush=True)
        code = subprocess.call(command, env=env, stdin=subprocess.DEVNULL)
        if code:
            return code
    return 0


def _note(directory: Path, action: str, **details) -> None:
    with record.updating(directory) as deployment:
        if deployment is None:
            return
        if action == "server_started":
            deployment.server_pid = details["pid"]
        if action == "server_exited":
            deployment.restarts += 1
            deployment.server_pid = 0
        deployment.event(action, **details)


def _wait_ready(http_url: str, child: subprocess.Popen, stopping: threading.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and child.poll() is None and not stopping.is_set():
        try:
            with urllib.request.urlopen(f"{http_url}/v2/health/ready", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return True
        except OSError:
            pass
        stopping.wait(0.5)
    return False


def supervise(directory: Path) -> int:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    failures = 0
    first = True
    while not stopping.is_set():
        # Read at each start: the live version, and the launch a later promotion may have rewritten.
        spec = container_entry.read_spec(str(directory))
        setup, argv, env = container_entry.command(str(directory), spec)
        code = run_setup(setup, env)
        if code:
            print(f"llm_deploy supervisor: a setup command exited with {code}; giving up", flush=True)
            return 1
        workdir, http_url = spec["launch"].get("workdir") or str(directory), spec["http_url"]
        print(f"llm_deploy supervisor: + {' '.join(argv)}", flush=True)
        started = time.monotonic()
        child = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL)
        _note(directory, "server_started", pid=child.pid, restart=not first)
        if _wait_ready(http_url, child, stopping):
            _note(directory, "server_ready", pid=child.pid)
        elif first and not stopping.is_set():
            # A server that never came up is a bad start, not a crash to recover from: exit, so
            # that whoever is waiting for it fails now with the log, instead of at its timeout.
            child.kill()
            code = child.wait()
            print(f"llm_deploy supervisor: tritonserver exited with {code} before it was ready; giving up", flush=True)
            _note(directory, "server_exited", pid=child.pid, exit_code=code, restart_in_s=None)
            return 1
        first = False
        while child.poll() is None and not stopping.wait(0.5):
            pass
        if stopping.is_set():
            child.terminate()
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            break
        code = child.returncode
        failures = 0 if time.monotonic() - started > HEALTHY_AFTER_S else failures + 1
        delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1] if failures else BACKOFF_S[0]
        print(f"llm_deploy supervisor: tritonserver (pid {child.pid}) exited with {code}; "
              f"restarting in {delay:.0f} s", flush=True)
        _note(directory, "server_exited", pid=child.pid, exit_code=code, restart_in_s=delay)
        stopping.wait(delay)
    print("llm_deploy supervisor: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
