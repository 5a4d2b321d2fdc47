"""Run the real ``tritonserver`` without Docker or a GPU, from the nvidia-pytriton wheel.

The wheel ships tritonserver (with the python backend) for PyTriton's own use; we launch that
binary directly on our model repository. Three things make it work outside PyTriton:

- the python backend needs a ``triton_python_backend_stub`` built for this Python next to
  ``libtriton_python.so``; the wheel keeps one per Python version under python_backend_stubs/;
- the binary and the stub link libpython and the wheel's vendored libraries, found through
  LD_LIBRARY_PATH (the base interpreter's LIBDIR, then ``nvidia_pytriton.libs``);
- the stub's embedded interpreter ignores PYTHONPATH and finds its site-packages through the
  ``python3`` on PATH, so the venv's bin dir goes first on PATH and models can import torch,
  transformers and llm_deploy. ``$LLM_DEPLOY_STUB_PYTHON`` names another interpreter for the
  stubs, for a worker whose own packages cannot be the stub's (see the next point);
- the wheel's stubs are built against numpy 1.x. Under numpy 2 they corrupt every tensor that
  crosses them (Triton answers "output tensor shape does not match size of output", or the stub
  segfaults in ``send`` and the server never notices): the stub's numpy is checked before start.

The server runs in its own session (process group) so that it outlives the Airflow task that
started it; stop() ends the whole group, and only after checking that the pid still belongs
to a tritonserver, so a record from an old run never kills an unrelated process.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_deploy.server import direct_http

log = logging.getLogger(__name__)

STUB = "triton_python_backend_stub"
BINARY_NAME = "tritonserver"
LOG_TAIL_LINES = 40
_POLL_S = 0.5
_PROGRESS_EVERY_S = 10.0
EXIT_TIMEOUT_S = 10
# What a server leaves running: the server, its python-backend stubs, and for multi-GPU trtllm
# servers mpirun and its ranks' daemon.
SERVER_PROCESS_NAMES = frozenset({BINARY_NAME, STUB, "mpirun", "orted"})


class ServerStartError(RuntimeError):
    """tritonserver did not become ready; the message ends with the tail of its log."""


class PortInUseError(ServerStartError):
    """A port the server needs is taken; retrying will not help until it is freed."""


class TritonNotInstalled(ServerStartError):
    """The tritonserver binary (nvidia-pytriton wheel) is missing or incomplete."""


class StubEnvironmentError(TritonNotInstalled):
    """The python the model stubs would import from cannot host them; retrying will not help."""


STUB_PYTHON_ENV = "LLM_DEPLOY_STUB_PYTHON"
# Asked of the stub's interpreter with -E, as its embedded interpreter ignores PYTHON* variables.
_STUB_PYTHON_PROBE = """
import json, sys, sysconfig
try:
    import numpy
    numpy_version = numpy.__version__
except ImportError:
    numpy_version = None
print(json.dumps({"version": list(sys.version_info[:2]), "libdir": sysconfig.get_config_var("LIBDIR") or "",
                  "libpython": sysconfig.get_config_var("INSTSONAME") or "", "numpy": numpy_version}))
"""


@dataclass(frozen=True)
class StubPython:
    """The interpreter whose site-packages the python-backend stubs import from, as they see it."""

    executable: Path
    version: tuple[int, int]
    libdir: str
    libpython: str
    numpy: str | None


def stub_python(environ: dict[str, str] | None = None) -> StubPython:
    """$LLM_DEPLOY_STUB_PYTHON, else this interpreter, described by asking it."""
    executable = Path((os.environ if environ is None else environ).get(STUB_PYTHON_ENV) or sys.executable)
    try:
        probe = subprocess.run([str(executable), "-E", "-c", _STUB_PYTHON_PROBE],  # noqa: S603 - fixed argv
                               capture_output=True, text=True, timeout=120, check=True)
        facts = json.loads(probe.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise StubEnvironmentError(f"cannot run the python for the model stubs ({executable}, from "
                                   f"${STUB_PYTHON_ENV} or this interpreter): {exc}") from exc
    return StubPython(executable=executable, version=tuple(facts["version"]), libdir=facts["libdir"],
                      libpython=facts["libpython"], numpy=facts["numpy"])


def check_stub_python(stub: StubPython) -> None:
    """Refuse a stub environment that would corrupt tensors or fail to start, saying what to do."""
    if stub.numpy is None:
        raise StubEnvironmentError(f"numpy is not installed for {stub.executable}: the python-backend stubs "
                                   f"import it; pip install 'numpy<2' there")
    if int(stub.numpy.split(".")[0]) >= 2:
        raise StubEnvironmentError(
            f"numpy {stub.numpy} in {stub.executable}: the python-backend stubs of nvidia-pytriton are built "
            f"against numpy 1.x and corrupt every tensor under numpy 2 (or crash in send). Install 'numpy<2' "
            f"there, or point ${STUB_PYTHON_ENV} at a python (e.g. a venv with --system-site-packages or a "
            f".pth to this one's packages) that has numpy<2 first on its path"
        )


@dataclass(frozen=True)
class TritonPaths:
    """Where the wheel keeps the server, its backends and the per-Python stubs."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / BINARY_NAME

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def python_backend(self) -> Path:
        return self.backends / "python"

    @property
    def vendored_libs(self) -> Path:
        # nvidia_pytriton.libs sits beside the pytriton package in site-packages.
        return self.root.parent.parent / "nvidia_pytriton.libs"

    def stub_source(self, version: tuple[int, int] = sys.version_info[:2]) -> Path:
        return self.root / "python_backend_stubs" / f"{version[0]}.{version[1]}" / STUB


@dataclass(frozen=True)
class ServerHandle:
    """What it takes to reach and to stop a started server; serialisable for XCom."""

    pid: int
    pgid: int
    http_url: str
    grpc_url: str
    metrics_url: str
    log_path: str

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ServerHandle:
        """Rebuild from a record that may carry more keys (e.g. serve.ServerRecord's)."""
        return cls(**{name: record[name] for name in cls.__dataclass_fields__})


# --- locating and preparing the installation -------------------------------------------------


def find_triton() -> TritonPaths:
    """The tritonserver tree of the installed nvidia-pytriton wheel, checked for completeness."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled("nvidia-pytriton is not installed: pip install nvidia-pytriton (it bundles tritonserver)")
    paths = TritonPaths(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")
    for required in (paths.binary, paths.python_backend / "libtriton_python.so"):
        if not required.exists():
            raise TritonNotInstalled(f"{required} is missing: the nvidia-pytriton install is incomplete")
    return paths


def ensure_python_stub(paths: TritonPaths, version: tuple[int, int] = sys.version_info[:2]) -> Path:
    """Put the stub for Python ``version`` next to libtriton_python.so (once; replaced if it differs)."""
    source = paths.stub_source(version)
    target = paths.python_backend / STUB
    if not source.exists():
        raise TritonNotInstalled(
            f"nvidia-pytriton has no python-backend stub for Python {version[0]}.{version[1]} ({source} is missing)"
        )
    if target.exists() and _same_file_content(source, target):
        return target
    scratch = target.with_name(f".{STUB}.{os.getpid()}")
    try:
        shutil.copy2(source, scratch)
        os.replace(scratch, target)  # atomic: a concurrently starting server never sees half a stub
    except OSError as exc:
        with contextlib.suppress(OSError):
            scratch.unlink()
        raise TritonNotInstalled(f"cannot install the python-backend stub into {target}: {exc}") from exc
    log.info("installed the Python %d.%d python-backend stub: %s", *version, target)
    return target


def _same_file_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def server_env(paths: TritonPaths, stub: StubPython, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its python stubs need (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    if stub.libdir and stub.libpython and not (Path(stub.libdir) / stub.libpython).exists():
        log.warning("%s not found in %s: the python backend may fail to start", stub.libpython, stub.libdir)
    env["LD_LIBRARY_PATH"] = _join_path(stub.libdir, str(paths.vendored_libs), env.get("LD_LIBRARY_PATH", ""))
    # The venv's bin, not sys.base_prefix's: the stub resolves site-packages from this python3.
    venv_bin = str(stub.executable.parent)
    env["PATH"] = _join_path(venv_bin, env.get("PATH", ""))
    if not (Path(venv_bin) / "python3").exists():
        log.warning("%s has no python3: the python-backend stub will not see this venv's packages", venv_bin)
    return env


def _join_path(*parts: str) -> str:
    seen: list[str] = []
    for part in parts:
        for item in part.split(os.pathsep):
            if item and item not in seen:
                seen.append(item)
    return os.pathsep.join(seen)


# --- ports ---------------------------------------------------------------------------------


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Bind each port once, as the server will; PortInUseError names the one that is taken."""
    for name, port in ports.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR as servers use it: TIME_WAIT leftovers do not count as "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise PortInUseError(
                        f"{name} port {port} on {host} is already in use ({exc.strerror}); stop whatever "
                        f"listens there (e.g. a server from an earlier run) or choose another {name}_port"
                    ) from None
                raise ServerStartError(f"cannot bind {name} port {port} on {host}: {exc}") from None


# --- start -----------------------------------------------------------------------------------


def server_command(paths: TritonPaths, repo: Path, *, host: str, http_port: int, grpc_port: int,
                   metrics_port: int, exit_timeout_s: int = EXIT_TIMEOUT_S) -> list[str]:
    return [
        str(paths.binary),
        f"--model-repository={repo}",
        f"--backend-directory={paths.backends}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        # No GPU here: skip NVML/DCGM probing (it only warns, but it clutters the log).
        "--allow-gpu-metrics=false",
        # A model that fails to load must fail the start, not leave a half-ready server.
        "--exit-on-error=true",
        "--strict-readiness=true",
        # On SIGTERM Triton waits this long for open client connections (a benchmark's keep-alive
        # ones count) before unloading; keep it well inside stop()'s grace period.
        f"--exit-timeout-secs={exit_timeout_s}",
        "--log-verbose=0",
    ]


def start(repo: Path, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, log_path: Path, timeout_s: float = 600) -> ServerHandle:
    """Start tritonserver on ``repo`` and return once the server and every model in it are ready.

    On any failure the server's process group is killed and ServerStartError (PortInUseError for
    a taken port) is raised with the tail of the server log.
    """
    repo = Path(repo).resolve()
    models = repository_models(repo)
    if not models:
        raise ServerStartError(f"{repo} holds no model (no */config.pbtxt)")
    check_ports_free(host, {"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
    paths = find_triton()
    stub = stub_python()
    check_stub_python(stub)
    ensure_python_stub(paths, stub.version)
    command = server_command(paths, repo, host=host, http_port=http_port, grpc_port=grpc_port,
                             metrics_port=metrics_port)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    log.info("launching %s", " ".join(command))
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=server_env(paths, stub), cwd=str(repo), start_new_session=True,
        )
    host_for_clients = client_host(host)
    handle = ServerHandle(
        pid=process.pid,
        pgid=process.pid,  # start_new_session: the server leads its own group
        http_url=f"http://{host_for_clients}:{http_port}",
        grpc_url=f"{host_for_clients}:{grpc_port}",
        metrics_url=f"http://{host_for_clients}:{metrics_port}/metrics",
        log_path=str(log_path),
    )
    try:
        wait_ready(handle, models, process=process, timeout_s=timeout_s, log_offset=offset)
    except BaseException:
        _kill_group(handle.pgid, process)
        raise
    return handle


def is_live(http_url: str, timeout_s: float = 5) -> bool:
    """Whether a server answers its liveness endpoint (for error messages after failed requests)."""
    return direct_http.answers_ok(f"{http_url}/v2/health/live", timeout_s)


def repository_models(repo: Path) -> list[str]:
    return sorted(p.parent.name for p in Path(repo).glob("*/config.pbtxt"))


def client_host(host: str) -> str:
    # A server bound to every interface is reached on loopback.
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def wait_ready(handle: ServerHandle, models: Iterable[str], *, process: subprocess.Popen | None = None,
               timeout_s: float = 600, log_offset: int = 0) -> None:
    """Poll until the server is live and ready and every model reports ready.

    Plain HTTP on the KServe v2 health endpoints, so a launcher needs no Triton client library
    (tritonclient.http would pull in gevent for three GETs).
    """
    models = list(models)
    started = time.monotonic()
    deadline = started + timeout_s
    next_progress = started + _PROGRESS_EVERY_S
    while True:
        if process is not None and process.poll() is not None:
            # The port check before launch can lose a race with another program binding the
            # port; the server then exits saying so, and that is not worth a retry either.
            error = (PortInUseError if _log_says_port_taken(handle.log_path, log_offset)
                     else ServerStartError)
            raise error(
                f"tritonserver exited with code {process.returncode} before it was ready"
                + _tail_message(handle.log_path, log_offset)
            )
        pending = _not_ready(handle.http_url, models)
        if not pending:
            log.info("tritonserver ready after %.1f s: %s", time.monotonic() - started, ", ".join(models))
            return
        now = time.monotonic()
        if now >= deadline:
            raise ServerStartError(
                f"tritonserver not ready after {timeout_s:.0f} s (waiting for: {', '.join(pending)})"
                + _tail_message(handle.log_path, log_offset)
            )
        if now >= next_progress:
            log.info("waiting for tritonserver (%.0f s): not ready yet: %s", now - started, ", ".join(pending))
            next_progress = now + _PROGRESS_EVERY_S
        time.sleep(_POLL_S)


def _not_ready(http_url: str, models: list[str]) -> list[str]:
    """Names of what is not ready yet: 'server' until it answers, then each model still loading."""
    def model_ready(name: str) -> bool:
        return direct_http.answers_ok(f"{http_url}/v2/models/{urllib.parse.quote(name, safe='')}/ready", 10.0)

    if not direct_http.answers_ok(f"{http_url}/v2/health/live", 5.0):
        return ["server"]  # not answering yet (Triton opens its HTTP port once models are loaded)
    if not direct_http.answers_ok(f"{http_url}/v2/health/ready", 5.0):
        # strict readiness: the server is not ready until every model is; say which.
        return ["server"] + [m for m in models if not model_ready(m)]
    return [m for m in models if not model_ready(m)]


def read_log_tail(log_path: str | Path, lines: int = LOG_TAIL_LINES, offset: int = 0) -> list[str]:
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(offset, 0))
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def _log_says_port_taken(log_path: str | Path, offset: int) -> bool:
    return any("Address already in use" in line for line in read_log_tail(log_path, LOG_TAIL_LINES, offset))


def _tail_message(log_path: str | Path, offset: int) -> str:
    tail = read_log_tail(log_path, LOG_TAIL_LINES, offset)
    if not tail:
        return f"; the server log {log_path} is empty"
    return f"; last {len(tail)} lines of {log_path}:\n" + "\n".join(tail)


# --- stop ------------------------------------------------------------------------------------


def stop(handle: ServerHandle, timeout: float = 30) -> bool:
    """Stop the server: SIGTERM to it, SIGKILL to its whole group after ``timeout`` s.

    The SIGTERM goes to the server alone so that it can unload its models (each python stub
    runs its finalize()) before exiting; whatever is left of its process group afterwards is
    killed. Idempotent: True when a live tritonserver was stopped, False when there was none
    (already gone, or the pid now belongs to another program, which is then left alone).
    """
    if not is_tritonserver(handle.pid):
        log.info("pid %d is not a running tritonserver: nothing to stop", handle.pid)
        _reap(handle.pid)
        # A server that crashed (or was killed) leaves its python stubs behind in its group
        # until they notice; end them now, but only processes that are ours by name.
        _kill_stragglers(handle.pgid, only=SERVER_PROCESS_NAMES)
        return False
    own_group = _pgid(handle.pid) == handle.pgid
    if not own_group:
        log.warning("tritonserver pid %d is no longer in process group %d: signalling the pid only",
                    handle.pid, handle.pgid)
    log.info("stopping tritonserver pid %d (SIGTERM)", handle.pid)
    _signal_pid(handle.pid, signal.SIGTERM)
    if not _wait_gone(handle, timeout):
        log.warning("tritonserver pid %d still running after %.0f s: SIGKILL", handle.pid, timeout)
        _signal(handle, signal.SIGKILL, whole_group=own_group)
        _wait_gone(handle, 10)
    if own_group:
        _kill_stragglers(handle.pgid)
    return True


def _kill_stragglers(pgid: int, timeout: float = 10, only: frozenset[str] | None = None) -> None:
    """Python stubs live in the server's group; none may outlive it (e.g. after an exit timeout).

    ``only`` limits the kill to those program names: once the server itself is gone its pgid may
    in principle be reused by an unrelated group, which must be left alone.
    """
    deadline = time.monotonic() + timeout
    while members := [pid for pid in _group_members(pgid) if only is None or program_name(pid) in only]:
        if time.monotonic() >= deadline:
            log.error("processes %s of group %d survived SIGKILL", members, pgid)
            return
        for pid in members:
            log.warning("killing leftover pid %d of tritonserver group %d", pid, pgid)
            _signal_pid(pid, signal.SIGKILL)
            _reap(pid)
        time.sleep(0.1)


def stub_pids(pgid: int) -> list[int]:
    """The python-backend stubs alive in a server's process group (one per model instance)."""
    return sorted(pid for pid in _group_members(pgid) if program_name(pid) == STUB)


def program_name(pid: int) -> str:
    """The basename of argv[0] ('' when the process is gone)."""
    argv = _cmdline(pid)
    return Path(argv[0]).name if argv else ""


def is_tritonserver(pid: int) -> bool:
    """True when ``pid`` is alive (not a zombie) and runs a tritonserver binary."""
    argv = _cmdline(pid)
    return bool(argv) and Path(argv[0]).name == BINARY_NAME and not _is_zombie(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _stat_fields(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name may hold spaces and parentheses; the fields after the last ')' do not.
    return text[text.rfind(")") + 2:].split()


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return not fields or fields[0] in ("Z", "X")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # stat fields after the name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _signal(handle: ServerHandle, sig: signal.Signals, *, whole_group: bool) -> None:
    if whole_group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.pgid, sig)
    else:
        _signal_pid(handle.pid, sig)


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(handle: ServerHandle, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(handle.pid)
        if not is_tritonserver(handle.pid):
            return True
        time.sleep(0.2)
    return False


def _reap(pid: int) -> None:
    # When this process started the server (tests, the embedded run), collect its exit status so
    # no zombie is left; for a server started by another task process this is a no-op.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _kill_group(pgid: int, process: subprocess.Popen) -> None:
    """Failed start: no grace period, nothing of ours may survive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    _kill_stragglers(pgid)
