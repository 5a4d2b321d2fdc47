"""The twin's tritonserver: started on a repository, ready when every model is, stopped as a group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llm_deploy import processes
from llm_deploy.runners.command import Service
from llm_deploy.server import tritonserver
from llm_deploy.server.errors import PortInUseError, ServerStartError, StubEnvironmentError
from llm_deploy.server.pytriton_install import STUB, STUB_PYTHON_ENV
from llm_deploy.server.tritonserver import StartedServer

IDENTITY_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
IDENTITY_MODEL = """
import sys
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        {init}

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests
        ]
"""


def _identity_repo(root: Path, names: list[str], init: str = "self.python = sys.executable") -> Path:
    for name in names:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(IDENTITY_CONFIG.format(name=name))
        (root / name / "1" / "model.py").write_text(IDENTITY_MODEL.format(init=init))
    return root


@pytest.fixture
def started(tmp_path):
    """Servers a test starts; whatever the test does, none survives it."""
    servers: list[StartedServer] = []
    yield servers
    for server in servers:
        tritonserver.stop(server, grace_s=10)
        assert not processes.group_alive(server.pgid)


def _tritonservers(root: Path) -> list[int]:
    """Live tritonservers serving a repository under ``root`` (other suites run their own)."""
    return [p.pid for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] and Path(p.info["cmdline"][0]).name == "tritonserver"
            and p.info["status"] != psutil.STATUS_ZOMBIE and str(root) in " ".join(p.info["cmdline"])]


# --- refused before anything starts ----------------------------------------------------------


def test_a_server_whose_stub_python_lacks_numpy_is_refused_before_it_starts(tmp_path, free_ports, monkeypatch):
    # A real interpreter with no packages at all, named the way a worker would name it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    monkeypatch.setenv(STUB_PYTHON_ENV, str(tmp_path / "bare" / "bin" / "python3"))
    repo = _identity_repo(tmp_path / "repo", ["identity"])

    with pytest.raises(StubEnvironmentError, match="numpy is not installed for .*bare"):
        tritonserver.start(repo, **free_ports, log_path=tmp_path / "server.log", timeout_s=30)
    assert not (tmp_path / "server.log").exists()  # refused before anything was launched


def test_start_refuses_a_taken_port_before_launching(tmp_path, free_ports):
    repo = _identity_repo(tmp_path / "repo", ["identity"])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_ports["http_port"]))
        listener.listen()
        with pytest.raises(PortInUseError, match=f"http port {free_ports['http_port']}"):
            tritonserver.start(repo, log_path=tmp_path / "server.log", timeout_s=30, **free_ports)
    assert not (tmp_path / "server.log").exists()  # nothing was launched


def test_empty_repository_is_refused(tmp_path, free_ports):
    (tmp_path / "repo").mkdir()
    with pytest.raises(ServerStartError, match="holds no model"):
        tritonserver.start(tmp_path / "repo", log_path=tmp_path / "log", **free_ports)


# --- stopping what a record names, and only that --------------------------------------------


def _record_of(process: subprocess.Popen, tmp_path: Path, create_time: float | None = None) -> StartedServer:
    identity = processes.ProcessIdentity.of(process.pid)
    service = Service(runner="local", name="tritonserver", pid=process.pid, pgid=process.pid,
                      create_time=identity.create_time if create_time is None else create_time,
                      log_path=str(tmp_path / "log"))
    return StartedServer(service, "http://127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3/metrics")


def test_stop_leaves_a_reused_pid_alone(tmp_path):
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stale = _record_of(other, tmp_path, create_time=processes.ProcessIdentity.of(other.pid).create_time - 5)
        assert tritonserver.stop(stale, grace_s=1) is False
        assert other.poll() is None  # still running: the record named another process
    finally:
        other.kill()
        other.wait()


def test_stop_of_a_gone_server_is_a_no_op(tmp_path):
    gone = subprocess.Popen(["true"], start_new_session=True)
    record = _record_of(gone, tmp_path)
    gone.wait()

    assert tritonserver.stop(record) is False


# --- a real tritonserver ----------------------------------------------------------------------


@pytest.mark.e2e
def test_start_waits_for_every_model_and_stop_ends_the_group(tmp_path, free_ports, started):
    repo = _identity_repo(tmp_path / "repo", ["alpha", "beta"])
    log_path = tmp_path / "logs" / "server.log"

    server = tritonserver.start(repo, log_path=log_path, timeout_s=120, **free_ports)
    started.append(server)

    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert client.is_server_ready()
    assert all(client.is_model_ready(name) for name in ("alpha", "beta"))
    # Left open on purpose: a client's keep-alive connection must not hold the stop up for long.
    assert processes.program_name(server.pid) == "tritonserver"
    assert os.getpgid(server.pid) == server.pgid == server.pid  # own session: outlives the task
    assert "Started HTTPService" in log_path.read_text()
    assert len(processes.group_members(server.pgid)) >= 3  # the server and one python stub per model
    assert len(tritonserver.stub_pids(server.pgid)) == 2

    stop_started = time.monotonic()
    assert tritonserver.stop(server, grace_s=20) is True
    # The open connection holds Triton's HTTP drain for at most --exit-timeout-secs, then the
    # models are unloaded. (How long the python stubs then take to go varies with the machine's
    # load: at worst the stop's SIGKILL after the grace period ends them, which is what follows.)
    assert "Waiting for in-flight requests to complete." in log_path.read_text()
    assert time.monotonic() - stop_started < 20 + 5
    assert not processes.group_alive(server.pgid)
    assert tritonserver.stop(server) is False  # idempotent


@pytest.mark.e2e
def test_stub_runs_the_venv_python(tmp_path, free_ports, started):
    init = "open(args['model_repository'] + '/python.txt', 'w').write(sys.executable)"  # the model's dir
    repo = _identity_repo(tmp_path / "repo", ["probe"], init=init)

    started.append(tritonserver.start(repo, log_path=tmp_path / "server.log", timeout_s=120, **free_ports))

    assert Path((repo / "probe" / "python.txt").read_text()).parent == Path(sys.executable).parent


@pytest.mark.e2e
def test_failing_model_reports_the_log_tail_and_leaves_nothing(tmp_path, free_ports):
    repo = _identity_repo(tmp_path / "repo", ["ok"])
    _identity_repo(repo, ["broken"], init="raise RuntimeError('weights are corrupt')")

    with pytest.raises(ServerStartError) as excinfo:
        tritonserver.start(repo, log_path=tmp_path / "server.log", timeout_s=120, **free_ports)

    message = str(excinfo.value)
    assert "exited before it was ready" in message and "last " in message
    assert "weights are corrupt" in message
    assert _tritonservers(tmp_path) == []


@pytest.mark.e2e
def test_timeout_kills_the_server(tmp_path, free_ports):
    repo = _identity_repo(tmp_path / "repo", ["slow"], init="import time; time.sleep(60)")
    started_at = time.monotonic()

    with pytest.raises(ServerStartError, match=r"(?s)not ready after 3 s \(waiting for: server\).*loading: slow"):
        tritonserver.start(repo, log_path=tmp_path / "server.log", timeout_s=3, **free_ports)

    assert time.monotonic() - started_at < 30
    assert _tritonservers(tmp_path) == []


@pytest.mark.e2e
def test_stop_after_a_crash_ends_the_stubs_the_server_left(tmp_path, free_ports, started):
    repo = _identity_repo(tmp_path / "repo", ["alpha", "beta"])
    server = tritonserver.start(repo, log_path=tmp_path / "server.log", timeout_s=120, **free_ports)
    started.append(server)
    stubs = [pid for pid in processes.group_members(server.pgid) if pid != server.pid]
    assert {processes.program_name(pid) for pid in stubs} == {STUB}

    # A crash: no unload. (Tritonserver 2.51's stubs notice and exit within a second; stop() must
    # neither fail on the dead server nor leave anything behind either way.)
    os.kill(server.pid, signal.SIGKILL)
    os.waitpid(server.pid, 0)

    tritonserver.stop(server)  # True while a stub is still exiting, False once all are gone
    assert processes.group_members(server.pgid) == []  # nothing of it is left


@pytest.mark.e2e
def test_a_port_taken_after_the_check_is_still_reported_as_taken(tmp_path, free_ports, monkeypatch):
    """The check before launch can lose a race; the server's own bind failure says the same."""
    repo = _identity_repo(tmp_path / "repo", ["alpha"])
    monkeypatch.setattr(tritonserver, "check_ports_free", lambda host, ports: None)  # the race, lost
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_ports["grpc_port"]))
        squatter.listen()
        with pytest.raises(PortInUseError, match="Address already in use"):
            tritonserver.start(repo, log_path=tmp_path / "server.log", timeout_s=120, **free_ports)
    assert _tritonservers(tmp_path) == []
