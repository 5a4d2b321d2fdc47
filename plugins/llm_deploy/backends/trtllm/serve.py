"""trtllm's "launch Triton": upstream's launch_triton_server.py under a small supervisor.

launch_triton_server.py starts ``mpirun ... tritonserver`` and exits at once, so the runner
watches the supervisor, which lives as long as anything the launcher started does. The server is
ready when Triton's /v2/health/ready answers (the server and every model in the repository).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from llm_deploy import volume
from llm_deploy.backends.trtllm import commands, validation
from llm_deploy.backends.trtllm.execution import gpus, paths_for, preflight, runner, wheel_prefix
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.records import ServerRecord
from llm_deploy.runners import service_runner
from llm_deploy.runners.command import Runner, ServiceRecord, StepCommand, VolumePath
from llm_deploy.server import direct_http, tritonserver
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

_READY_POLL_S = 1.0

# launch_triton_server.py starts `mpirun ... tritonserver &` and exits at once. The supervisor
# runs the commands it is given in order (the last one being the launcher), then lives as long
# as anything they started does, so a runner watches one process and a container does not stop
# the moment the launcher returns. SIGTERM (docker stop, or the local runner's) ends its group.
_SUPERVISE = (
    "import json, os, signal, subprocess, sys, time\n"
    "def others():\n"
    "    me, group = os.getpid(), os.getpgid(0)\n"
    "    found = []\n"
    "    for entry in os.listdir('/proc'):\n"
    "        if entry.isdigit() and int(entry) != me:\n"
    "            try:\n"
    "                fields = open(f'/proc/{entry}/stat').read().rsplit(')', 1)[1].split()\n"
    "            except OSError:\n"
    "                continue\n"
    "            if int(fields[2]) == group and fields[0] != 'Z':\n"
    "                found.append(int(entry))\n"
    "    return found\n"
    "def stop(signum, frame):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "    os.killpg(0, signal.SIGTERM)\n"
    "    deadline = time.monotonic() + 20\n"
    "    while others() and time.monotonic() < deadline:\n"
    "        time.sleep(0.2)\n"
    "    if others():\n"
    "        os.killpg(0, signal.SIGKILL)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    print('+ ' + ' '.join(argv), flush=True)\n"
    "    code = subprocess.call(argv)\n"
    "    if code:\n"
    "        sys.exit(code)\n"
    "while others():\n"
    "    time.sleep(1)\n"
    "print('llm_deploy: every process the launcher started has exited', flush=True)\n"
    "sys.exit(1)\n"
)


def launch_command(spec: DeploySpec, model_repo: str) -> StepCommand:
    argvs = wheel_prefix(spec) + commands.launch_server(spec, paths_for(spec, model_repo_dir=model_repo))
    return StepCommand(
        name="start_server",
        argv=(commands.PYTHON, "-c", _SUPERVISE, json.dumps(argvs)),
        env={"PYTHONUNBUFFERED": "1"},
        volume_paths=(VolumePath(str(spec.root), writable=False),),
        gpus=gpus(spec),
        network_host=True,
    )


def start_server(spec: DeploySpec, model_repo: Path, log_path: Path) -> ServerRecord:
    """Launch Triton with upstream's script; return its record once it is ready.

    On any failure what was started is stopped again: no orphan server outlives a failed start.
    """
    log.info("launching tritonserver (world_size %d) with launch_triton_server.py; log: %s",
             spec.world_size, log_path)
    on = runner(spec)
    preflight(spec, on, "start_server")
    settings = (volume.read_manifest(model_repo) or {}).get("settings", {})
    if "engine_dir" in settings:
        validation.check_engine_world_size(spec, settings["engine_dir"])
    ports = {"http": spec.http_port, "grpc": spec.grpc_port, "metrics": spec.metrics_port}
    try:
        tritonserver.check_ports_free(spec.server_host, ports)
    except tritonserver.PortInUseError as exc:
        raise NonRetryableError(str(exc)) from None
    host = tritonserver.client_host(spec.server_host)
    http_url = f"http://{host}:{spec.http_port}"
    service = on.start(launch_command(spec, str(model_repo)), str(log_path))
    try:
        _wait_ready(on, service, http_url, spec.server_start_timeout_s)
    except BaseException:
        on.stop(service)
        raise
    log.info("tritonserver ready: %s (%s runner)", http_url, service.runner)
    return ServerRecord(
        pid=service.pid,
        pgid=service.pgid,
        http_url=http_url,
        grpc_url=f"{host}:{spec.grpc_port}",
        metrics_url=f"http://{host}:{spec.metrics_port}/metrics",
        log_path=str(log_path),
        model_repo=str(model_repo),
        service=service.to_xcom(),
    )


def stop_server(server: dict) -> bool:
    service = server["service"]
    stopped = service_runner(service).stop(service)
    log.info("tritonserver %s; its log: %s", "stopped" if stopped else "was not running", server["log_path"])
    return stopped


def _wait_ready(on: Runner, record: ServiceRecord, http_url: str, timeout_s: float) -> None:
    """Triton's /v2/health/ready: the server and every model in the repository loaded."""
    deadline = time.monotonic() + timeout_s
    next_progress = time.monotonic() + 10
    while True:
        if _ready(http_url):
            return
        if not on.alive(record):
            tail = "\n".join(on.logs(record)[-30:]) if hasattr(on, "logs") else ""
            raise StepError(f"the server exited before it was ready; last output:\n{tail or _file_tail(record.log_path)}")
        if time.monotonic() >= deadline:
            raise StepError(f"the server was not ready within {timeout_s:.0f}s; its log: {record.log_path}")
        if time.monotonic() >= next_progress:
            log.info("waiting for %s/v2/health/ready (%.0fs left)", http_url, deadline - time.monotonic())
            next_progress += 10
        time.sleep(_READY_POLL_S)


def _ready(http_url: str) -> bool:
    return direct_http.answers_ok(f"{http_url}/v2/health/ready", 2)


def _file_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
