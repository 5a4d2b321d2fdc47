"""The supervisor that stands in for launch_triton_server.py while its background server runs.

Run for real, as the runner runs it (``python -c <source> <json argvs>``), on a launcher that
starts a background "server" and exits at once, as upstream's script does with mpirun.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from llm_deploy import processes
from llm_deploy.backends.trtllm import supervisor
from llm_deploy.processes import ProcessIdentity

# Like launch_triton_server.py: start the server in the background (its own child, not ours), exit.
LAUNCHER = "import subprocess, sys; subprocess.Popen(sys.argv[1:]); print('launched', flush=True)"


def supervise(*argvs: list[str], tmp_path) -> subprocess.Popen:
    log = open(tmp_path / "supervisor.log", "ab")  # noqa: SIM115 - the child holds it
    return subprocess.Popen([sys.executable, "-c", supervisor.source(), json.dumps(list(argvs))],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_it_outlives_the_launcher_as_long_as_the_server_it_left_runs(tmp_path):
    run = supervise([sys.executable, "-c", LAUNCHER, "sleep", "1.5"], tmp_path=tmp_path)

    assert wait_for(lambda: "launched" in (tmp_path / "supervisor.log").read_text())
    time.sleep(0.5)
    assert run.poll() is None  # the launcher is gone, its server is not: still supervising
    assert run.wait(timeout=10) == 1  # a server that stops by itself is a failure
    assert supervisor.ALL_EXITED in (tmp_path / "supervisor.log").read_text()


def test_sigterm_ends_the_orphaned_server_too(tmp_path):
    run = supervise([sys.executable, "-c", LAUNCHER, "sleep", "60"], tmp_path=tmp_path)
    assert wait_for(lambda: len(processes.group_members(run.pid, only={"sleep"})) == 1)

    started = time.monotonic()
    processes.stop_group(run.pid, leader=ProcessIdentity.of(run.pid), grace_s=10)

    assert not processes.group_alive(run.pid)
    assert time.monotonic() - started < 5  # the supervisor ended its group itself, no SIGKILL needed
    run.wait(timeout=10)


def test_it_runs_the_commands_in_order_and_stops_at_the_first_failure(tmp_path):
    run = supervise(["true"], ["false"], ["echo", "never"], tmp_path=tmp_path)

    assert run.wait(timeout=10) == 1
    output = (tmp_path / "supervisor.log").read_text()
    assert "+ true" in output and "+ false" in output and "never" not in output


def test_it_uses_the_standard_library_only():
    import ast

    tree = ast.parse(supervisor.source())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
