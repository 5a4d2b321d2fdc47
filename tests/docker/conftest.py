"""A real Docker engine for the docker runner's tests, and the torch backend's local image.

``dockerd`` (session): use the daemon that answers at DOCKER_HOST or the default socket; else
install Debian's docker.io (and debootstrap, for the image) with apt-get when missing, start
dockerd with its log in .cache/dockerd.log, wait for it to answer, and stop it at the end of the
session (only a daemon we started). The tests skip only when dockerd cannot start, and say why.

``torch_image`` (session): docker/build_torch_image.py, which reuses images whose content hash
tag already exists, so only the first run on a machine pays for the Debian + torch layer.

``compose_images`` (session): docker/build_compose_images.py, the same way for the compose
stack's PostgreSQL, Redis and Airflow images.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.apt import apt_install

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
DOCKERD_LOG = REPO / ".cache" / "dockerd.log"
START_TIMEOUT_S = 60
APT_PACKAGES = ("docker.io", "debootstrap")


def daemon_answers(url: str) -> bool:
    import docker

    try:
        return bool(docker.APIClient(base_url=url, timeout=5).ping())
    except Exception:  # noqa: BLE001 - no socket, refused, not a daemon: all mean "no"
        return False


def install_docker() -> None:
    """apt-get install docker.io and debootstrap when a binary is missing (root only)."""
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return
    if os.geteuid() != 0:
        pytest.skip("dockerd cannot start: docker.io is not installed and installing it needs root")
    try:
        apt_install(*APT_PACKAGES)
    except RuntimeError as exc:
        # Root on a Debian machine with the archive reachable: a failure here is a real problem.
        pytest.fail(str(exc))


def log_tail(lines: int = 15) -> str:
    text = DOCKERD_LOG.read_text(errors="replace") if DOCKERD_LOG.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def dockerd() -> str:
    """The daemon's URL; a daemon we had to start is stopped when the session ends."""
    url = os.environ.get("DOCKER_HOST", DEFAULT_SOCKET)
    if daemon_answers(url):
        yield url
        return
    if "DOCKER_HOST" in os.environ:
        pytest.skip(f"dockerd cannot be reached: DOCKER_HOST={url} does not answer (not starting another)")
    install_docker()
    if os.geteuid() != 0:
        pytest.skip("dockerd cannot start: it needs root")
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(DOCKERD_LOG, "ab") as out:
        process = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not daemon_answers(url):
        if process.poll() is not None:
            pytest.skip(f"dockerd cannot start here (exit code {process.returncode}); "
                        f"{DOCKERD_LOG}:\n{log_tail()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.skip(f"dockerd did not answer within {START_TIMEOUT_S}s; {DOCKERD_LOG}:\n{log_tail()}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Module scope: the override is set for these modules only and never outlives them, so tests
# elsewhere in the same session still see the tutorial's settings.
@pytest.fixture(scope="module", autouse=True)
def daemon_ulimits():
    """The tutorial's memlock=-1 where the daemon may grant it; this machine's cap where not.

    A dockerd without CAP_SYS_RESOURCE (a sandboxed or rootless one, like this CI's) cannot lift
    a hard limit, and runc then refuses to start the container at all. The runner's documented
    override asks for the most the daemon may grant instead; every other setting stays as is.
    """
    import resource

    from llm_deploy.runners.docker_runner import ULIMITS_ENV

    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY or ULIMITS_ENV in os.environ:
        yield None
        return
    os.environ[ULIMITS_ENV] = f"memlock={hard}:{hard}"
    try:
        yield hard
    finally:
        os.environ.pop(ULIMITS_ENV, None)


@pytest.fixture(scope="session")
def docker_api(dockerd):
    import docker

    return docker.APIClient(base_url=dockerd)


@pytest.fixture(scope="session")
def torch_image(dockerd) -> str:
    """Name of the local image with Python, the torch backend's packages and this checkout's code."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "docker" / "build_torch_image.py")],
                            env={**os.environ, "DOCKER_HOST": dockerd}, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the torch image failed:\n{result.stderr[-4000:]}")
    image = result.stdout.strip().splitlines()[-1]
    print(f"\ntorch image {image} ready in {time.monotonic() - started:.1f}s:\n{result.stderr.strip()}")
    return image


@pytest.fixture(scope="session")
def compose_images(dockerd) -> dict[str, str]:
    """The compose variables naming the stack's images (LLM_DEPLOY_AIRFLOW_IMAGE, ...)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "docker" / "build_compose_images.py")],
                            env={**os.environ, "DOCKER_HOST": dockerd}, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the compose images failed:\n{result.stderr[-4000:]}")
    images = dict(line.split("=", 1) for line in result.stdout.split())
    print(f"\ncompose images ready in {time.monotonic() - started:.1f}s:\n{result.stderr.strip()}")
    return images


@pytest.fixture
def leftover_containers(docker_api):
    """Containers the runner left behind (auto-remove must leave none), by our label."""
    from llm_deploy.runners.docker_runner import LABEL_STEP

    def find(step: str) -> list[dict]:
        return docker_api.containers(all=True, filters={"label": f"{LABEL_STEP}={step}"})

    return find
