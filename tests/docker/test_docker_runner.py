"""The docker runner against a real dockerd: each tutorial `docker run` flag, seen from inside."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request

import pytest

from llm_deploy.runners import CommandFailed, CommandTimedOut, DockerRunner, StepCommand, VolumePath

pytestmark = pytest.mark.timeout(900)

PY = "python3"


@pytest.fixture
def runner(torch_image, tmp_path) -> DockerRunner:
    return DockerRunner(torch_image, engines_root=str(tmp_path))


def python(name: str, code: str, *args: str, **settings) -> StepCommand:
    return StepCommand(name=name, argv=(PY, "-c", code, *args), **settings)


def last_json(lines: list[str]) -> dict | list:
    return json.loads(next(line for line in reversed(lines) if line.startswith(("{", "["))))


def test_argv_reaches_the_program_verbatim_never_through_a_shell(runner, leftover_containers):
    tricky = ["$(id)", "a b", "; rm -rf /", "'quoted'", "*"]
    result = runner.run(python("argv", "import json, sys; print(json.dumps(sys.argv[1:]))", *tricky))
    assert json.loads(result.lines[-1]) == tricky
    assert leftover_containers("argv") == [], "auto_remove: the container is gone"


def test_the_tutorial_container_settings_apply_inside(runner, daemon_ulimits):
    code = (
        "import json, os, resource\n"
        "shm = os.statvfs('/dev/shm')\n"
        "print(json.dumps({'shm': shm.f_blocks * shm.f_frsize,\n"
        "  'memlock': resource.getrlimit(resource.RLIMIT_MEMLOCK),\n"
        "  'stack': resource.getrlimit(resource.RLIMIT_STACK), 'uid': os.getuid(), 'home': os.environ['HOME']}))"
    )
    inside = last_json(runner.run(python("settings", code)).lines)
    assert inside["shm"] == 2 * 1024**3
    assert inside["stack"] == [67108864, 67108864]
    expected_memlock = -1 if daemon_ulimits is None else daemon_ulimits
    assert inside["memlock"] == [expected_memlock, expected_memlock]
    assert inside["uid"] == os.getuid() and inside["home"] == "/tmp"


def test_secrets_reach_the_environment_but_neither_argv_nor_the_log(runner, caplog, docker_api):
    token = "hf_canary_" + "7" * 24
    command = python("secret", "import os; print('token ok' if os.environ['HF_TOKEN'].startswith('hf_canary_') else 'no')",
                     secret_env={"HF_TOKEN": token})
    operator = runner.operator(command)
    assert token not in json.dumps(operator.command) and token not in json.dumps(operator.environment)
    assert operator._private_environment == {"HF_TOKEN": token}  # hidden from the UI, not templated
    result = runner.run(command)
    assert result.lines[-1] == "token ok"
    assert token not in caplog.text and "HF_TOKEN" in command.describe()


def test_the_volume_is_read_only_except_the_directory_a_step_publishes_into(runner, tmp_path):
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "config.json").write_text("{}")
    out = tmp_path / "engines" / "torch"
    code = (
        "import json, sys\n"
        "def attempt(path):\n"
        "    try:\n"
        "        open(path, 'w').write('x'); return 'written'\n"
        "    except OSError as exc:\n"
        "        return exc.strerror\n"
        "print(json.dumps([attempt(sys.argv[1]), attempt(sys.argv[2]), open(sys.argv[3]).read()]))"
    )
    command = python("volume", code, str(tmp_path / "models" / "m" / "new"), str(out / "engine.bin"),
                     str(tmp_path / "models" / "m" / "config.json"),
                     volume_paths=(VolumePath(str(tmp_path)), VolumePath(str(out), writable=True)))
    assert last_json(runner.run(command).lines) == ["Read-only file system", "written", "{}"]
    assert (out / "engine.bin").stat().st_uid == os.getuid()


def test_a_failing_command_reports_its_exit_code_and_last_lines(runner, leftover_containers):
    with pytest.raises(CommandFailed) as failed:
        runner.run(python("fails", "import sys; print('about to fail'); sys.exit(7)"))
    assert failed.value.exit_code == 7 and "about to fail" in str(failed.value)
    assert leftover_containers("fails") == []


def test_a_command_past_its_timeout_is_stopped_and_removed(runner, leftover_containers):
    started = time.monotonic()
    with pytest.raises(CommandTimedOut, match="timeout"):
        runner.run(python("slow", "import time; print('sleeping', flush=True); time.sleep(120)", timeout_s=3))
    assert time.monotonic() - started < 40
    assert leftover_containers("slow") == []


def test_host_network_reaches_a_server_on_the_workers_loopback(runner):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
        code = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5); print('connected')"
        assert runner.run(python("net", code, str(port), network_host=True)).lines[-1] == "connected"
        with pytest.raises(CommandFailed, match="refused"):
            runner.run(python("no-net", code, str(port)))


def test_a_service_runs_detached_until_stopped_and_leaves_its_log(runner, tmp_path, leftover_containers):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = StepCommand(name="server", argv=(PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"),
                          network_host=True)
    record = runner.start(command, log_path=tmp_path / "server.log")
    try:
        assert _get(f"http://127.0.0.1:{port}/", timeout_s=30) == 200
        assert runner.alive(record.to_xcom())
    finally:
        assert runner.stop(record.to_xcom()) is True
    assert not runner.alive(record) and leftover_containers("server") == []
    assert "GET / HTTP" in (tmp_path / "server.log").read_text()
    assert runner.stop(record) is False, "stopping twice is harmless"


def _get(url: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
