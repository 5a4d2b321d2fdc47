"""docker/build_compose_images.py and its stand-in entrypoints, without a Docker engine.

What names each image (so a rebuild happens exactly when an input changed), and the part of the
official images' contract that the entrypoints keep, run here with stand-ins for the programs
they call. The images themselves are built and brought up in tests/docker/test_compose_stack.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "docker" / "standin"


def load_recipe():
    spec = importlib.util.spec_from_file_location("build_compose_images", REPO / "docker" / "build_compose_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_tag_follows_what_its_image_is_made_of(monkeypatch, tmp_path):
    recipe = load_recipe()
    os_image = recipe.os_tag()
    packages = recipe.airflow_packages_tag(os_image)
    base = recipe.airflow_base_tag(packages)
    tags = (os_image, recipe.postgres_tag(os_image), recipe.redis_tag(os_image), packages, base,
            recipe.airflow_tag(base))
    assert [tag.partition(":")[0] for tag in tags] == [
        "llm-deploy-debian", "llm-deploy-postgres", "llm-deploy-redis", "llm-deploy-airflow-packages",
        "llm-deploy-airflow-base", "llm-deploy-airflow"]
    assert recipe.airflow_base_tag(recipe.airflow_packages_tag(os_image)) == base  # same inputs: a lookup
    assert tags[5].startswith(f"llm-deploy-airflow:{base.partition(':')[2]}-")  # its base, by name

    # A new Debian package list renames every image built on it.
    monkeypatch.setattr(recipe, "DEBIAN_PACKAGES", (*recipe.DEBIAN_PACKAGES, "procps"))
    assert recipe.os_tag() != os_image
    assert recipe.postgres_tag(recipe.os_tag()) != tags[1]
    # A pin renames the packages and what is built on them ...
    pins = tmp_path / "airflow-image-requirements.txt"
    pins.write_text(recipe.AIRFLOW_PIP_REQUIREMENTS[1].read_text() + "tqdm==4.70.1\n")
    monkeypatch.setattr(recipe, "AIRFLOW_PIP_REQUIREMENTS", (recipe.AIRFLOW_PIP_REQUIREMENTS[0], pins))
    repinned = recipe.airflow_packages_tag(os_image)
    assert repinned != packages
    # ... an entrypoint edit only the layers above the packages ...
    monkeypatch.setattr(recipe, "_standin", lambda name: "edited")
    assert recipe.airflow_base_tag(packages) != base and recipe.airflow_packages_tag(os_image) == repinned
    # ... and a code change only the last image.
    monkeypatch.setattr(recipe, "DOCKERFILE_TREES", ("include",))
    assert recipe.airflow_tag(base) != tags[5]


def test_the_dockerfile_builds_on_whichever_base_it_is_given():
    dockerfile = (REPO / "docker" / "airflow.Dockerfile").read_text()
    assert "ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11\nFROM ${AIRFLOW_BASE_IMAGE}" in dockerfile
    # Build isolation would fetch setuptools from an index the stand-in's build cannot reach.
    assert "--no-build-isolation -e /opt/llm-deploy" in dockerfile
    copied = {line.split()[2 if "--chown" in line else 1]
              for line in dockerfile.splitlines() if line.startswith("COPY")}
    recipe = load_recipe()
    assert {"plugins", "include", "docker/init_connections.py"} <= copied
    assert set(recipe.DOCKERFILE_INPUTS) - {"requirements.txt", "requirements-model.txt", "pyproject.toml"} <= copied
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:ignore.index("*") + 4] == ["!requirements.txt", "!requirements-model.txt",
                                                                  "!pyproject.toml"]


def fake_program(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.fixture
def airflow_calls(tmp_path):
    """A stand-in ``airflow`` on PATH that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake_program(bin_dir, "airflow", f'echo "$*" >> {calls}')

    def entrypoint(*args: str, **env: str) -> list[str]:
        calls.unlink(missing_ok=True)
        subprocess.run([str(STANDIN / "airflow-entrypoint.sh"), *args], check=True, capture_output=True,
                       env={"PATH": f"{bin_dir}:{os.environ['PATH']}", **env})
        return calls.read_text().splitlines() if calls.exists() else []

    return entrypoint


def test_the_airflow_entrypoint_migrates_and_creates_the_admin_before_the_command(airflow_calls):
    init = {"_AIRFLOW_DB_MIGRATE": "true", "_AIRFLOW_WWW_USER_CREATE": "true",
            "_AIRFLOW_WWW_USER_USERNAME": "airflow", "_AIRFLOW_WWW_USER_PASSWORD": "secret"}
    calls = airflow_calls("airflow", "version", **init)
    assert calls[0] == "db migrate"
    assert calls[1].startswith("users create --role Admin --username airflow --password secret")
    assert calls[2:] == ["version"]
    assert airflow_calls("version") == ["version"]  # neither without the variables


def test_the_airflow_entrypoint_passes_subcommands_to_airflow_and_runs_shells_as_given(airflow_calls, tmp_path):
    assert airflow_calls("scheduler") == ["scheduler"]
    assert airflow_calls("celery", "worker", "--queues", "default") == ["celery worker --queues default"]
    assert airflow_calls("bash", "-c", "airflow dags list") == ["dags list"]


def test_the_postgres_entrypoint_initializes_an_empty_data_directory_once(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake_program(bin_dir, "initdb", f'echo "initdb $*" >> {calls}; mkdir -p "$PGDATA"; echo 15 > "$PGDATA/PG_VERSION"')
    fake_program(bin_dir, "postgres", f'echo "postgres $*" >> {calls}; cat >> {calls}')
    fake_program(bin_dir, "id", "echo 999")  # not root: no chown, no change of user
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PGDATA": str(tmp_path / "data"),
           "POSTGRES_USER": "airflow", "POSTGRES_PASSWORD": "airflow", "POSTGRES_DB": "airflow"}

    def start() -> list[str]:
        calls.unlink(missing_ok=True)
        subprocess.run([str(STANDIN / "postgres-entrypoint.sh"), "postgres"], env=env, check=True,
                       capture_output=True, stdin=subprocess.DEVNULL)
        return calls.read_text().splitlines()

    first = start()
    assert first[0].startswith(f"initdb --pgdata={tmp_path / 'data'} --username=airflow --pwfile=")
    assert "--auth-host=scram-sha-256" in first[0]
    assert first[1].startswith("postgres --single") and first[2] == 'CREATE DATABASE "airflow" OWNER "airflow";'
    assert first[-1].startswith(f"postgres -D {tmp_path / 'data'} -c listen_addresses=*")
    assert "host all all all scram-sha-256" in (tmp_path / "data" / "pg_hba.conf").read_text()
    # Restarted on the same volume: no second initdb.
    assert [line.split()[0] for line in start()] == ["postgres"]
