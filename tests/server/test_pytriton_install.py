"""The nvidia-pytriton wheel's tritonserver, made runnable: the stub for this Python, its environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from llm_deploy.server import pytriton_install
from llm_deploy.server.errors import StubEnvironmentError


def test_environment_puts_the_venv_first_and_finds_libpython():
    paths = pytriton_install.find_triton()
    env = pytriton_install.server_env(paths, pytriton_install.stub_python(environ={}),
                                  base={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/x"})

    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    import sysconfig

    assert libs[0] == sysconfig.get_config_var("LIBDIR")
    assert Path(libs[0], sysconfig.get_config_var("INSTSONAME")).exists()
    assert libs[1].endswith("nvidia_pytriton.libs") and Path(libs[1]).is_dir()
    assert libs[-1] == "/opt/x"


def test_stub_for_this_python_is_installed_next_to_the_backend():
    paths = pytriton_install.find_triton()
    stub = pytriton_install.ensure_python_stub(paths)

    assert stub == paths.python_backend / pytriton_install.STUB
    assert stub.read_bytes() == paths.stub_source().read_bytes()
    assert os.access(stub, os.X_OK)


def test_an_image_build_puts_the_stub_in_place_with_one_command():
    """docker/airflow.Dockerfile runs this, so a worker never writes into its packages at run time."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "llm_deploy.server.pytriton_install"],
                            capture_output=True, text=True, check=True)
    paths = pytriton_install.find_triton()
    assert result.stdout.strip() == str(paths.python_backend / pytriton_install.STUB)
    assert (paths.python_backend / pytriton_install.STUB).read_bytes() == paths.stub_source().read_bytes()


def test_the_stub_python_is_this_interpreter_described_by_asking_it():
    import numpy

    stub = pytriton_install.stub_python(environ={})

    assert stub.executable == Path(sys.executable)
    assert stub.version == sys.version_info[:2]
    assert stub.numpy == numpy.__version__
    pytriton_install.check_stub_python(stub)  # the pinned numpy<2 passes


@pytest.mark.parametrize(
    ("numpy_version", "says"),
    [("2.1.3", "numpy 2.1.3 in /opt/venv/bin/python3: the python-backend stubs"), (None, "numpy is not installed")],
)
def test_a_stub_python_that_would_corrupt_tensors_is_refused_with_what_to_do(numpy_version, says):
    stub = pytriton_install.StubPython(Path("/opt/venv/bin/python3"), (3, 12), "/usr/lib", "libpython3.12.so.1.0",
                                   numpy_version)

    with pytest.raises(StubEnvironmentError, match="numpy<2") as refused:
        pytriton_install.check_stub_python(stub)
    assert says in str(refused.value)


def test_the_stub_environment_follows_the_stub_python(tmp_path):
    paths = pytriton_install.find_triton()
    stub = pytriton_install.StubPython(tmp_path / "stubenv" / "bin" / "python3", (3, 11), "/opt/py/lib",
                                   "libpython3.11.so.1.0", "1.26.4")

    env = pytriton_install.server_env(paths, stub, base={"PATH": "/usr/bin"})

    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "stubenv" / "bin")
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == "/opt/py/lib"
