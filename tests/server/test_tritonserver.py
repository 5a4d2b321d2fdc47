"""The tritonserver launcher: environment, ports, readiness, failure reports and a safe stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_deploy.server import tritonserver
from llm_deploy.server.tritonserver import PortInUseError, ServerHandle, ServerStartError

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


def _group_alive(pgid: int) -> list[int]:
    return tritonserver._group_members(pgid)


@pytest.fixture
def started(tmp_path):
    """Servers a test starts; whatever the test does, none survives it."""
    handles: list[ServerHandle] = []
    yield handles
    for handle in handles:
        tritonserver.stop(handle, timeout=10)
        assert not _group_alive(handle.pgid)


# --- no server needed ------------------------------------------------------------------------


def test_environment_puts_the_venv_first_and_finds_libpython():
    paths = tritonserver.find_triton()
    env = tritonserver.server_env(paths, tritonserver.stub_python(environ={}),
                                  base={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/x"})

    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    import sysconfig

    assert libs[0] == sysconfig.get_config_var("LIBDIR")
    assert Path(libs[0], sysconfig.get_config_var("INSTSONAME")).exists()
    assert libs[1].endswith("nvidia_pytriton.libs") and Path(libs[1]).is_dir()
    assert libs[-1] == "/opt/x"


def test_stub_for_this_python_is_installed_next_to_the_backend():
    paths = tritonserver.find_triton()
    stub = tritonserver.ensure_python_stub(paths)

    assert stub == paths.python_backend / tritonserver.STUB
    assert stub.read_bytes() == paths.stub_source().read_bytes()
    assert os.access(stub, os.X_OK)


def test_the_stub_python_is_this_interpreter_described_by_asking_it():
    import numpy

    stub = tritonserver.stub_python(environ={})

    assert stub.executable == Path(sys.executable)
    assert stub.version == sys.version_info[:2]
    assert stub.numpy == numpy.__version__
    tritonserver.check_stub_python(stub)  # the pinned numpy<2 passes


@pytest.mark.parametrize(
    ("numpy_version", "says"),
    [("2.1.3", "numpy 2.1.3 in /opt/venv/bin/python3: the python-backend stubs"), (None, "numpy is not installed")],
)
def test_a_stub_python_that_would_corrupt_tensors_is_refused_with_what_to_do(numpy_version, says):
    stub = tritonserver.StubPython(Path("/opt/venv/bin/python3"), (3, 12), "/usr/lib", "libpython3.12.so.1.0",
                                   numpy_version)

    with pytest.raises(tritonserver.StubEnvironmentError, match="numpy<2") as refused:
        tritonserver.check_stub_python(stub)
    assert says in str(refused.value)


def test_a_server_whose_stub_python_lacks_numpy_is_refused_before_it_starts(tmp_path, free_ports, monkeypatch):
    # A real interpreter with no packages at all, named the way a worker would name it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    monkeypatch.setenv(tritonserver.STUB_PYTHON_ENV, str(tmp_path / "bare" / "bin" / "python3"))
    repo = _identity_repo(tmp_path / "repo", ["identity"])

    with pytest.raises(tritonserver.StubEnvironmentError, match="numpy is not installed for .*bare"):
        tritonserver.start(repo, **free_ports, log_path=tmp_path / "server.log", timeout_s=30)
    assert not (tmp_path / "server.log").exists()  # refused before anything was launched


def test_the_stub_environment_follows_the_stub_python(tmp_path):
    paths = tritonserver.find_triton()
    stub = tritonserver.StubPython(tmp_path / "stubenv" / "bin" / "python3", (3, 11), "/opt/py/lib",
                                   "libpython3.11.so.1.0", "1.26.4")

    env = tritonserver.server_env(paths, stub, base={"PATH": "/usr/bin"})

    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "stubenv" / "bin")
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == "/opt/py/lib"


def test_port_in_use_is_named(free_ports):
    port = free_ports["grpc_port"]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(PortInUseError, match=f"grpc port {port} on 127.0.0.1 is already in use"):
            tritonserver.check_ports_free("127.0.0.1", {"http": free_ports["http_port"], "grpc": port})


def test_start_refuses_a_taken_port_before_launching(tmp_path, free_ports):
    repo = _identity_repo(tmp_path / "repo", ["identity"])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_ports["http_port"]))
        listener.listen()
        with pytest.raises(PortInUseError, match=f"http port {free_ports['http_port']}"):
            tritonserver.start(repo, log_path=tmp_path / "server.log", timeout_s=30, **free_ports)
    assert not (tmp_path / "server.log").exists()  # nothing was launched


def test_stop_leaves_a_reused_pid_alone(tmp_path):
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        handle = ServerHandle(pid=other.pid, pgid=other.pid, http_url="http://127.0.0.1:1",
                              grpc_url="127.0.0.1:2", metrics_url="http://127.0.0.1:3/metrics",
                              log_path=str(tmp_path / "log"))
        assert tritonserver.stop(handle, timeout=1) is False
        assert other.poll() is None  # still running: it is not a tritonserver
    finally:
        other.kill()
        other.wait()


def test_stop_of_a_gone_pid_is_a_no_op(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    handle = ServerHandle(gone.pid, gone.pid, "http://x", "x", "http://x/metrics", str(tmp_path / "log"))

    assert tritonserver.stop(handle) is False


def test_handle_round_trips_through_a_record_with_extra_keys():
    handle = ServerHandle(10, 10, "http://127.0.0.1:8000", "127.0.0.1:8001", "http://127.0.0.1:8002/metrics", "/l")

    assert ServerHandle.from_record({**handle.to_record(), "model_repo": "/repo"}) == handle


def test_empty_repository_is_refused(tmp_path, free_ports):
    (tmp_path / "repo").mkdir()
    with pytest.raises(ServerStartError, match="holds no model"):
        tritonserver.start(tmp_path / "repo", log_path=tmp_path / "log", **free_ports)


# --- a real tritonserver ----------------------------------------------------------------------


@pytest.mark.e2e
def test_start_waits_for_every_model_and_stop_ends_the_group(tmp_path, free_ports, started):
    repo = _identity_repo(tmp_path / "repo", ["alpha", "beta"])
    log_path = tmp_path / "logs" / "server.log"

    handle = tritonserver.start(repo, log_path=log_path, timeout_s=120, **free_ports)
    started.append(handle)

    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(handle.http_url.removeprefix("http://"))
    assert client.is_server_ready()
    assert all(client.is_model_ready(name) for name in ("alpha", "beta"))
    # Left open on purpose: a client's keep-alive connection must not hold the stop up for long.
    assert tritonserver.is_tritonserver(handle.pid)
    assert os.getpgid(handle.pid) == handle.pgid == handle.pid  # own session: outlives the task
    assert "Started HTTPService" in log_path.read_text()
    members = _group_alive(handle.pgid)
    assert len(members) >= 3  # the server and one python stub per model
    assert len(tritonserver.stub_pids(handle.pgid)) == 2

    stop_started = time.monotonic()
    assert tritonserver.stop(handle, timeout=20) is True
    assert time.monotonic() - stop_started < tritonserver.EXIT_TIMEOUT_S + 5  # graceful, no SIGKILL
    assert not _group_alive(handle.pgid)
    assert tritonserver.stop(handle) is False  # idempotent


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
    assert "exited with code" in message and "last " in message
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


def _tritonservers(root: Path) -> list[int]:
    """Live tritonservers serving a repository under ``root`` (other suites run their own)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and tritonserver.is_tritonserver(int(p.name)) and str(root) in " ".join(tritonserver._cmdline(int(p.name)))]


def test_stop_sends_sigterm_to_the_server_before_any_sigkill(tmp_path, monkeypatch):
    """Graceful first: SIGTERM to the server alone lets it unload its models (stubs' finalize())."""
    sent: list[tuple[str, int, int]] = []
    monkeypatch.setattr(tritonserver, "is_tritonserver", lambda pid: not sent)
    monkeypatch.setattr(tritonserver, "_pgid", lambda pid: 4242)
    monkeypatch.setattr(tritonserver, "_group_members", lambda pgid: [])
    monkeypatch.setattr(tritonserver.os, "kill", lambda pid, sig: sent.append(("pid", pid, sig)))
    monkeypatch.setattr(tritonserver.os, "killpg", lambda pgid, sig: sent.append(("group", pgid, sig)))
    handle = ServerHandle(4242, 4242, "http://x", "x", "http://x/metrics", str(tmp_path / "log"))

    assert tritonserver.stop(handle, timeout=1) is True
    assert sent == [("pid", 4242, signal.SIGTERM)]


def test_stop_kills_the_group_when_sigterm_is_ignored(tmp_path, monkeypatch):
    sent: list[tuple[str, int, int]] = []
    monkeypatch.setattr(tritonserver, "is_tritonserver", lambda pid: not any(kind == "group" for kind, *_ in sent))
    monkeypatch.setattr(tritonserver, "_pgid", lambda pid: 4242)
    monkeypatch.setattr(tritonserver, "_group_members", lambda pgid: [])
    monkeypatch.setattr(tritonserver.os, "kill", lambda pid, sig: sent.append(("pid", pid, sig)))
    monkeypatch.setattr(tritonserver.os, "killpg", lambda pgid, sig: sent.append(("group", pgid, sig)))
    handle = ServerHandle(4242, 4242, "http://x", "x", "http://x/metrics", str(tmp_path / "log"))

    assert tritonserver.stop(handle, timeout=0.5) is True
    assert sent == [("pid", 4242, signal.SIGTERM), ("group", 4242, signal.SIGKILL)]


@pytest.mark.e2e
def test_stop_after_a_crash_ends_the_stubs_the_server_left(tmp_path, free_ports, started):
    repo = _identity_repo(tmp_path / "repo", ["alpha", "beta"])
    handle = tritonserver.start(repo, log_path=tmp_path / "server.log", timeout_s=120, **free_ports)
    started.append(handle)
    stubs = [pid for pid in _group_alive(handle.pgid) if pid != handle.pid]
    assert {tritonserver.program_name(pid) for pid in stubs} == {tritonserver.STUB}

    # A crash: no unload. (Tritonserver 2.51's stubs notice and exit within a second; stop() must
    # neither fail on the dead server nor leave anything behind either way.)
    os.kill(handle.pid, signal.SIGKILL)
    os.waitpid(handle.pid, 0)

    assert tritonserver.stop(handle) is False  # no server to stop...
    assert _group_alive(handle.pgid) == []  # ...yet nothing of it is left


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
