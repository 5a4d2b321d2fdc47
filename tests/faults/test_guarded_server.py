"""A server other hosts can reach: its admin APIs refuse a caller without the key, inference
does not, and the key shows up in no log, no XCom record and no file on the engines volume.

The tiny model is built by the pipeline's own steps, the admin key comes from a real Airflow
connection (an ``AIRFLOW_CONN_*`` environment connection, read by the task wrapper's own
function), and start_server starts the real tritonserver through the torch backend on the host
end of a veth pair; the calls come from the other end, a network namespace standing in for
another host. One qualification server serves the assertions about it; the deployment's
long-running server (promoted, switched to a second version, killed and restarted by its
supervisor) is the other.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from llm_deploy import processes
from llm_deploy.airflow.tasks import triton_admin_key
from llm_deploy.bench.text_models import ENSEMBLE_MODEL
from llm_deploy.deployment import record
from llm_deploy.deployment.launch import SERVER_SPEC
from llm_deploy.runners.command import Service
from llm_deploy.server import direct_http
from llm_deploy.steps.promote import deployment_dir
from llm_deploy.server.admin_guard import KEY_ENV, RESTRICTED_APIS, AdminKey
from llm_deploy.steps.execute import execute
from tests.faults.conftest import deploy
from tests.faults.processes import server_processes
from tests.support.netns import create_peer_host

KEY = "guardedServerCanaryKey7f3a9c"
HEADER = "x-llm-admin"
RUN_ID = "guarded-run"

# Runs on the other host: each call's HTTP status (or gRPC outcome), as one JSON line.
PROBE = r"""
import json, sys, urllib.error, urllib.request
http, grpc_url, header, grpc_header, key, body = sys.argv[1:7]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def status(path, data=None, headers=None):
    request = urllib.request.Request(http + path, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with opener.open(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code

keyed, wrong, grpc_keyed = {header: key}, {header: key + "x"}, {grpc_header: key}
out = {
    "health": status("/v2/health/ready"),
    "metadata": status("/v2/models/ensemble"),
    "generate": status("/v2/models/ensemble/generate", body.encode(), {"Content-Type": "application/json"}),
    "index": status("/v2/repository/index", b"{}"),
    "index_wrong_key": status("/v2/repository/index", b"{}", wrong),
    "index_key": status("/v2/repository/index", b"{}", keyed),
    "unload": status("/v2/repository/models/ensemble/unload", b"{}"),
    "config": status("/v2/models/ensemble/config"),
    "config_key": status("/v2/models/ensemble/config", headers=keyed),
    "stats": status("/v2/models/stats"),
    "logging": status("/v2/logging", b'{"log_verbose_level": 1}'),
}
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
client = grpcclient.InferenceServerClient(grpc_url)
out["grpc_ready"] = client.is_server_ready()
try:
    client.get_model_repository_index()
    out["grpc_index"] = "served"
except InferenceServerException as exc:
    out["grpc_index"] = "refused: " + str(exc.message())
out["grpc_index_key"] = len(client.get_model_repository_index(headers=grpc_keyed).models)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def peer():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    host = create_peer_host()
    yield host
    host.close()


@pytest.fixture(scope="module")
def built(peer, tiny_llama_checkpoint, tmp_path_factory, free_ports_factory):
    """The tiny model's repository, built for a server on the veth address, and the connection
    holding the admin key."""
    root = tmp_path_factory.mktemp("guarded") / "engines"
    os.environ["AIRFLOW_CONN_TRITON_ADMIN_GUARDED"] = json.dumps(
        {"conn_type": "generic", "login": HEADER, "password": KEY})
    yield deploy(tiny_llama_checkpoint, root, free_ports_factory(), server_host=peer.host_address,
                 triton_admin_conn_id="triton_admin_guarded")
    os.environ.pop("AIRFLOW_CONN_TRITON_ADMIN_GUARDED", None)


@pytest.fixture(scope="module")
def guarded(built):
    """The qualification server started by start_server, guarded by the connection's key; its
    XCom record, and the task's log records and stdout while it started."""
    spec = built.spec

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    output = io.StringIO()  # where Airflow's structlog prints once airflow is imported
    try:
        with contextlib.redirect_stdout(output):
            server = execute("start_server", spec, built.repo, run_id=RUN_ID, admin_key_for=triton_admin_key)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
    yield spec, server, [record.getMessage() for record in records] + output.getvalue().splitlines()
    execute("stop_server", spec, server)
    assert server_processes([spec.root]) == []


def probe(peer, server: dict) -> dict:
    body = json.dumps({k: v for k, v in ENSEMBLE_MODEL.inputs("Hello", 4, stream=False).items()
                       if k != ENSEMBLE_MODEL.stream_input})
    done = peer.run([sys.executable, "-c", PROBE, server["http_url"], server["grpc_url"], HEADER,
                     AdminKey(HEADER, KEY).grpc_headers.popitem()[0], KEY, body])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.e2e
def test_another_host_is_served_inference_and_refused_the_admin_apis_without_the_key(peer, guarded):
    spec, server, _ = guarded
    assert server["http_url"] == f"http://{peer.host_address}:{spec.http_port}"

    calls = probe(peer, server)

    assert {calls[name] for name in ("health", "metadata", "generate")} == {200}
    assert {calls[name] for name in ("index", "index_wrong_key", "unload", "config", "stats", "logging")} == {403}
    assert (calls["index_key"], calls["config_key"]) == (200, 200)
    assert calls["grpc_ready"] is True
    assert calls["grpc_index"].startswith("refused: This protocol is restricted"), calls["grpc_index"]
    assert calls["grpc_index_key"] >= 4  # preprocessing, tensorrt_llm, postprocessing, ensemble


@pytest.mark.e2e
def test_the_key_is_in_no_log_no_xcom_and_no_file_only_in_the_servers_own_argv(guarded):
    spec, server, messages = guarded
    task_log = "\n".join(messages)

    started = [m for m in messages if "starting tritonserver: /bin/sh" in m]
    assert len(started) == 1, task_log  # the command as the task log shows it: the key by name only
    assert f"--http-restricted-api={','.join(RESTRICTED_APIS)}:{HEADER}=${{{KEY_ENV}:?" in started[0]
    assert f"(secret env: {KEY_ENV})" in started[0]
    assert KEY not in task_log
    assert KEY not in json.dumps(server)
    leaked = [str(p) for p in spec.root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == []  # the server's log among them
    assert Path(server["log_path"]).read_text()
    # What tritonserver cannot avoid: the key is in its own command line, readable on its host.
    cmdline = Path(f"/proc/{server['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"tritonserver")
    assert f"--http-restricted-api={','.join(RESTRICTED_APIS)}:{HEADER}={KEY}".encode() in cmdline


def test_without_the_connection_a_non_loopback_server_is_refused_before_it_starts(tmp_path):
    from llm_deploy.errors import NonRetryableError
    from llm_deploy.spec import DeploySpec

    spec = DeploySpec(engines_root=str(tmp_path), server_host="192.0.2.7", triton_admin_conn_id="nowhere_admin")

    with pytest.raises(NonRetryableError, match="airflow connections add nowhere_admin --conn-type generic"):
        execute("start_server", spec, {"model_repo": str(tmp_path / "repo")}, run_id=RUN_ID,
                admin_key_for=triton_admin_key)
    with pytest.raises(NonRetryableError, match="reachable from other hosts.*LLM_DEPLOY_TRITON_ADMIN_KEY"):
        execute("start_server", spec, {"model_repo": str(tmp_path / "repo")}, run_id=RUN_ID)


def files_holding_the_key(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]


@pytest.mark.e2e
@pytest.mark.timeout(400)  # a switch loads four models one by one: about a minute on a busy CPU
def test_a_guarded_deployment_switches_and_restarts_with_a_key_kept_in_no_file(peer, built, free_ports_factory):
    ports = free_ports_factory()
    spec = built.spec.model_copy(update={"deployment_name": "guarded", **{
        f"deployment_{name}": port for name, port in ports.items()}})
    directory = deployment_dir(spec)
    first = execute("promote", spec, built.repo, {"verdict": "first", "reason": "", "live_version": 0},
                    run_id="run-d1", admin_key_for=triton_admin_key)
    supervisor = Service.from_xcom(record.read(directory).supervisor)
    try:
        assert (first["action"], first["http_url"]) == ("started", f"http://{peer.host_address}:{ports['http_port']}")
        # A second version goes live through the repository API: loads and unloads that need the key.
        second = execute("promote", spec, built.repo, {"verdict": "promote", "reason": "", "live_version": 1},
                         run_id="run-d2", admin_key_for=triton_admin_key)
        assert (second["action"], second["live_version"]) == ("promoted", 2)

        # The supervisor restarts a dead tritonserver without Airflow: the key comes from its environment.
        os.kill(record.read(directory).server_pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not (record.read(directory).restarts == 1 and record.read(directory).history[-1]["action"] == "server_ready"):
            assert time.monotonic() < deadline, record.read(directory).history[-3:]
            time.sleep(0.5)
        calls = probe(peer, second)
        assert (calls["generate"], calls["index"], calls["index_key"]) == (200, 403, 200)

        assert record.read(directory).admin_conn_id == "triton_admin_guarded"
        stored = " ".join(json.loads((directory / SERVER_SPEC).read_text())["launch"]["argv"])
        assert f"{HEADER}=${{{KEY_ENV}:?" in stored
        assert files_holding_the_key(spec.root) == []  # server.json, deployment.json, server.log among them
    finally:
        execute("stop_deployment", spec, run_id="run-d3")
    assert processes.group_members(supervisor.pgid) == []
    assert not direct_http.answers_ok(f"{second['http_url']}/v2/health/live", 2)
