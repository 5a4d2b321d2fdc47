"""The tritonserver that the nvidia-pytriton wheel bundles, made runnable outside PyTriton.

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
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llm_deploy.server.errors import StubEnvironmentError, TritonNotInstalled

log = logging.getLogger(__name__)

STUB = "triton_python_backend_stub"
BINARY_NAME = "tritonserver"

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


def main() -> int:
    """``python -m llm_deploy.server.pytriton_install``: put this Python's stub in place now.

    An image runs it at build time (docker/airflow.Dockerfile), so its workers never write into
    their own packages at run time and a read-only or root-owned site-packages serves as well.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_python_stub(find_triton()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
