"""A deployment's server as the docker runner runs it, against a real dockerd: one container
whose entry serves the live version named in the record, and which Docker's restart policy brings
back when the server exits, until it is stopped on purpose."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from llm_deploy.deployment import launch as server_launch
from llm_deploy.deployment import record, server
from llm_deploy.deployment.launch import ServerLaunch
from llm_deploy.deployment.record import Deployment, Version

pytestmark = pytest.mark.timeout(600)

# Stands for tritonserver: says how it was started; its first start fails (as a crashed server
# would), the next one serves.
SERVER = """\
import http.server, os, sys
starts = int(open("/tmp/starts").read()) + 1 if os.path.exists("/tmp/starts") else 1
open("/tmp/starts", "w").write(str(starts))
print("start", starts, " ".join(sys.argv[1:]), flush=True)
if starts == 1:
    sys.exit(3)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_container_serves_the_live_version_and_docker_restarts_it_until_stopped(torch_image, tmp_path,
                                                                                    leftover_containers):
    directory = tmp_path / "deployments" / "demo"
    directory.mkdir(parents=True)
    port = free_port()
    deployment = Deployment(name="demo", backend="trtllm", host="127.0.0.1", http_port=port, grpc_port=free_port(),
                            metrics_port=free_port(), live=2, versions=[
                                Version(n, {"tensorrt_llm": f"tensorrt_llm_v{n}"}, "", "", "", "run", 0.0, 4)
                                for n in (1, 2)])
    record.write(directory, deployment)
    launch = ServerLaunch(runner="docker", argv=("python3", "-c", SERVER, str(port)), image=torch_image,
                          engines_root=str(tmp_path))
    server_launch.write(directory, launch, ensemble="ensemble", http_url=deployment.http_url)
    runner, command = server._command(directory, deployment, launch, secret_env={})  # loopback: unguarded
    assert command.restart_policy == "unless-stopped" and command.volume_paths[0].writable is False
    service = runner.start(command, directory / "server.log")
    deployment.supervisor = service.to_xcom()
    try:
        deadline = time.monotonic() + 120
        while not answers(f"http://127.0.0.1:{port}/"):
            assert time.monotonic() < deadline, runner.logs(service)
            time.sleep(0.5)
        assert runner.restart_count(service) == 1 and runner.alive(service)
        starts = [line for line in runner.logs(service) if line.startswith("start ")]
        # Both starts named the version live in the record (2), read when the container started.
        assert [line.split()[1] for line in starts] == ["1", "2"]
        assert all(line.endswith("--load-model=tensorrt_llm_v2 --load-model=ensemble") for line in starts)
        assert server.running(deployment)
    finally:
        assert server.stop(deployment) is True
    time.sleep(2)  # a restart policy that ignored the stop would have started it again by now
    assert not server.running(deployment) and leftover_containers("deployment-demo") == []
